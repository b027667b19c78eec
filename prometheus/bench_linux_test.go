package safedialprom_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	safedialprom "github.com/safedial/safedial/prometheus"
)

// inBenchNamespace runs b in a fresh network namespace configured by c: in
// the parent it re-executes the test binary for b alone, with the
// benchmark flags given, streams the child's results and skips b; in the
// child it sets the namespace up and returns true. Where a namespace cannot
// be made, b is skipped, or fails when CI=true.
func inBenchNamespace(b *testing.B, c netns.Config) bool {
	b.Helper()
	if netns.Inside() {
		if err := netns.Setup(); err != nil {
			b.Fatal(err)
		}
		return true
	}
	args := []string{"-test.run=^$", "-test.bench=^" + b.Name() + "$", "-test.benchmem"}
	for _, name := range []string{"test.benchtime", "test.count", "test.cpu", "test.timeout"} {
		if f := flag.Lookup(name); f != nil {
			args = append(args, "-"+name+"="+f.Value.String())
		}
	}
	cmd, err := netns.Command(c, os.Args[0], args...)
	if err == nil {
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err = cmd.Run()
	}
	switch {
	case err != nil && os.Getenv("CI") == "true":
		b.Fatalf("benchmark in a namespace (CI=true, so this fails instead of skipping): %v", err)
	case err != nil:
		b.Skipf("cannot run in a private network namespace, skipping: %v", err)
	}
	b.Skip("measured in a namespace child: its results are above")
	return false
}

// hostLoad makes a host of n sockets over pairs (source, destination)
// pairs, in TIME_WAIT but for two held connections per pair: pair i has
// 10 + i%21 sockets (20 on average), from 127.0.0.1 to one of 50 addresses
// x 20 ports.
func hostLoad(tb testing.TB, pairs int) (sockets int) {
	tb.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, ControlContext: (&safedial.Dialer{}).ControlContext}
	for i := range pairs {
		addr, closed := netnstest.EOFServer(tb, fmt.Sprintf("127.0.1.%d:%d", 1+i/20, 8000+i%20))
		n := 10 + i%21
		for j := range n {
			c, err := d.Dial("tcp", addr)
			if err != nil {
				tb.Fatalf("pair %d, dial %d: %v", i, j, err)
			}
			if j < 2 {
				tb.Cleanup(func() { c.Close() })
				continue
			}
			c.Close()
			<-closed
		}
		sockets += n
	}
	return sockets
}

// scraper returns a function that serves one scrape of a registry with a
// HeadroomCollector (probing on every scrape) as Prometheus asks for it,
// to a ResponseWriter that discards it (with a header of its own, as
// net/http gives each request).
func scraper(opts safedialprom.HeadroomOpts) func() {
	reg := prometheus.NewRegistry()
	opts.MinInterval = -1
	reg.MustRegister(safedialprom.NewHeadroomCollector(opts))
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "text/plain;version=0.0.4;q=1,*/*;q=0.1")
	return func() { h.ServeHTTP(&discard{h: http.Header{}}, req) }
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(p []byte) (int, error) { return len(p), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkScrape measures one scrape of the exporter's collector (probes
// of TCP and UDP, the top 100 pairs of each, the text exposition) on a host
// of 20,000 sockets over 1,000 pairs, against one ProbeAllHeadroom of TCP,
// in a namespace of its own (range 30000-60999). scrape/probe pairs them in
// each iteration and reports the median ratio (from 20 iterations on):
//
//	go test -run '^$' -bench BenchmarkScrape -benchtime 200x ./prometheus
func BenchmarkScrape(b *testing.B) {
	if !inBenchNamespace(b, netns.Config{PortLo: 30000, PortHi: 60999}) {
		return
	}
	n := hostLoad(b, 1000)
	all, err := safedial.ProbeAllHeadroom(context.Background(), "tcp")
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d sockets, %d pairs", n, len(all))
	scrape := scraper(safedialprom.HeadroomOpts{})
	probe := func() {
		if _, err := safedial.ProbeAllHeadroom(context.Background(), "tcp"); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("ProbeAllHeadroom", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			probe()
		}
	})
	b.Run("scrape", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			scrape()
		}
	})
	b.Run("scrape-vs-probe", func(b *testing.B) {
		var ratios []float64
		i := 0
		for b.Loop() {
			var tp, ts time.Duration
			if i%2 == 0 {
				tp, ts = timed(probe), timed(scrape)
			} else {
				ts, tp = timed(scrape), timed(probe)
			}
			ratios = append(ratios, float64(ts)/float64(tp))
			i++
		}
		if len(ratios) >= 20 {
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], "scrape/probe")
		}
	})
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// TestScrapeMemory scrapes the collector 1,000 times (probing each time) on
// a host of 30 pairs and checks that the live heap after the 1,000th scrape
// is within 10% of the live heap after the 100th: nothing is kept per
// scrape. It logs the process's RSS at both points too.
func TestScrapeMemory(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 30000, PortHi: 60999}, func(t *testing.T) {
		const pairs = 30
		n := hostLoad(t, pairs)
		scrape := scraper(safedialprom.HeadroomOpts{})
		var heap100, rss100 uint64
		for i := 1; i <= 1000; i++ {
			scrape()
			if i == 100 || i == 1000 {
				// Twice (the first moves sync.Pools to their victim
				// caches), the second returning free memory to the
				// system, so that RSS shows what is live.
				runtime.GC()
				debug.FreeOSMemory()
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				rss := rssBytes(t)
				t.Logf("%d sockets, %d pairs: after scrape %d: live heap %d KiB, RSS %d KiB", n, pairs, i, m.HeapAlloc>>10, rss>>10)
				if i == 100 {
					heap100, rss100 = m.HeapAlloc, rss
					continue
				}
				if m.HeapAlloc > heap100+heap100/10 {
					t.Errorf("live heap grew from %d KiB after 100 scrapes to %d KiB after 1,000", heap100>>10, m.HeapAlloc>>10)
				}
				t.Logf("RSS after 1,000 scrapes: %+.1f%% of RSS after 100", 100*(float64(rss)/float64(rss100)-1))
			}
		}
	})
}

// rssBytes reads VmRSS from /proc/self/status.
func rssBytes(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
