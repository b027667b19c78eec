package safedialprom_test

import (
	"fmt"
	"log"
	"net/http"
	"net/netip"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/safedial/safedial"
	safedialprom "github.com/safedial/safedial/prometheus"
)

// Serve the host's headroom on /metrics, as safedial exporter does: the 100
// pairs closest to exhaustion, and always the pairs from 10.0.0.5.
func ExampleNewHeadroomCollector() {
	reg := prometheus.NewRegistry()
	reg.MustRegister(safedialprom.NewHeadroomCollector(safedialprom.HeadroomOpts{
		Sources: []netip.Addr{netip.MustParseAddr("10.0.0.5")},
		OnError: func(network string, err error) { log.Printf("%s headroom: %v", network, err) },
	}))
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	log.Fatal(http.ListenAndServe("127.0.0.1:9477", nil))
}

// Export a Dialer's statistics, and its headroom toward its database,
// beside a service's other metrics.
func ExampleNewDialerCollector() {
	d := &safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	reg := prometheus.NewRegistry()
	reg.MustRegister(safedialprom.NewDialerCollector(d, safedialprom.DialerOpts{
		ConstLabels: prometheus.Labels{"dialer": "db"},
		Headroom:    []safedialprom.Target{{Network: "tcp", Address: "127.0.0.1:5432"}},
	}))
	// http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	text, err := testutil.GatherAndFormat(reg, expfmt.TypeTextPlain, "safedial_dials_total", "safedial_dials_exhausted_total")
	if err != nil {
		fmt.Println(err)
		return
	}
	os.Stdout.Write(text)
	// Output:
	// # HELP safedial_dials_exhausted_total Dials that failed because no ephemeral port was left, after every failover step (Stats.Exhausted).
	// # TYPE safedial_dials_exhausted_total counter
	// safedial_dials_exhausted_total{dialer="db"} 0
	// # HELP safedial_dials_total Calls to the Dialer's Dial, DialContext and DialTCP that have returned (Stats.Dials).
	// # TYPE safedial_dials_total counter
	// safedial_dials_total{dialer="db"} 0
}

// The README's snippet: a service's Dialer on its /metrics.
func ExampleDialerOpts() {
	d := &safedial.Dialer{}
	reg := prometheus.NewRegistry()
	reg.MustRegister(safedialprom.NewDialerCollector(d, safedialprom.DialerOpts{
		ConstLabels: prometheus.Labels{"dialer": "db"}, // tells several Dialers apart
		// Optional: the Dialer's own headroom toward its database.
		Headroom: []safedialprom.Target{{Network: "tcp", Address: "db.internal:5432"}},
	}))
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}
