package safedialprom_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	safedialprom "github.com/safedial/safedial/prometheus"
)

// TestDialerCollector exhausts a pool of two sources in a 10-port range and
// checks that every counter the collector exports is the Dialer's Stats
// field it names, and that the headroom rows are Dialer.Headroom's.
func TestDialerCollector(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40009}, func(t *testing.T) {
		dst, _ := netnstest.EOFServer(t, "127.0.0.2:8080")
		d := &safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.3")}}
		var exhausted int
		for range 25 {
			c, err := d.Dial("tcp", dst)
			if errors.Is(err, safedial.ErrEphemeralExhausted) {
				exhausted++
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		if exhausted != 5 {
			t.Fatalf("%d of 25 dials exhausted, want 5 (2 sources x 10 ports)", exhausted)
		}

		var probeErrs []string
		c := safedialprom.NewDialerCollector(d, safedialprom.DialerOpts{
			ConstLabels: prometheus.Labels{"dialer": "db"},
			Headroom:    []safedialprom.Target{{Network: "tcp", Address: dst}, {Network: "tcp4", Address: dst}, {Network: "tcp", Address: "no-port"}},
			OnError:     func(tg safedialprom.Target, err error) { probeErrs = append(probeErrs, tg.Address) },
		})
		got := exposition(t, c)
		s := d.Stats()
		var want strings.Builder
		counters := []struct {
			name string
			v    uint64
		}{
			{"safedial_dials_exhausted_total", s.Exhausted},
			{"safedial_dials_failed_total", s.Dials - s.Succeeded},
			{"safedial_dials_option_refused_total", s.Refused},
			{"safedial_dials_succeeded_total", s.Succeeded},
			{"safedial_dials_total", s.Dials},
			{"safedial_failovers_total", s.Failovers},
		}
		for _, m := range counters {
			fmt.Fprintf(&want, "%s{dialer=\"db\"} %d\n", m.name, m.v)
		}
		hs, err := d.Headroom(context.Background(), "tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		states := []string{"bound", "free", "in_use", "reserved", "time_wait"}
		for _, h := range hs {
			v := map[string]int{"in_use": h.InUse, "time_wait": h.TimeWait, "reserved": h.Reserved, "bound": h.Bound, "free": h.Free}
			for _, st := range states {
				fmt.Fprintf(&want, "safedial_headroom_ports{destination=%q,dialer=\"db\",protocol=\"tcp\",source=%q,state=%q} %d\n", h.Dest, h.Source, st, v[st])
			}
		}
		fmt.Fprintf(&want, "safedial_headroom_probe_age_seconds{dialer=\"db\",protocol=\"tcp\"} 0\n")
		fmt.Fprintf(&want, "safedial_headroom_probe_errors_total{dialer=\"db\",protocol=\"tcp\"} 1\n")
		fmt.Fprintf(&want, "safedial_headroom_probe_errors_total{dialer=\"db\",protocol=\"udp\"} 0\n")
		for _, h := range hs {
			fmt.Fprintf(&want, "safedial_headroom_used_ratio{destination=%q,dialer=\"db\",protocol=\"tcp\",source=%q} %g\n", h.Dest, h.Source, float64(10-h.Free)/10)
		}
		for _, m := range []struct {
			name string
			v    func(safedial.SourceStats) uint64
		}{
			{"safedial_source_attempts_exhausted_total", func(s safedial.SourceStats) uint64 { return s.Exhausted }},
			{"safedial_source_attempts_not_local_total", func(s safedial.SourceStats) uint64 { return s.NotLocal }},
			{"safedial_source_attempts_skipped_total", func(s safedial.SourceStats) uint64 { return s.Skipped }},
			{"safedial_source_attempts_succeeded_total", func(s safedial.SourceStats) uint64 { return s.Succeeded }},
			{"safedial_source_attempts_total", func(s safedial.SourceStats) uint64 { return s.Attempts }},
		} {
			for _, src := range s.Sources {
				fmt.Fprintf(&want, "%s{dialer=\"db\",source=%q} %d\n", m.name, src.Addr, m.v(src))
			}
		}
		if diff := cmp.Diff(want.String(), got); diff != "" {
			t.Errorf("exposition (-Stats and Headroom +collector):\n%s", diff)
		}
		t.Logf("Stats: %+v\nexposition:\n%s", s, got)
		if s.Dials != 25 || s.Succeeded != 20 || s.Exhausted != 5 || len(hs) != 2 || hs[0].Free != 0 {
			t.Errorf("the test did not build what it meant to: Stats %+v, Headroom %+v", s, hs)
		}
		if diff := cmp.Diff([]string{"no-port"}, probeErrs); diff != "" {
			t.Errorf("OnError (-want +got):\n%s", diff)
		}

		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}

		// Two Dialers in one registry, told apart by a label.
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c, safedialprom.NewDialerCollector(&safedial.Dialer{}, safedialprom.DialerOpts{ConstLabels: prometheus.Labels{"dialer": "cache"}}))
		if _, err := reg.Gather(); err != nil {
			t.Error(err)
		}
	})
}

// TestDialerCollectorSourceTwice: a pool may name an address twice, and
// Stats then has two entries for it; the collector exports one series per
// address, their sum, instead of two series with the same labels (which
// fail the whole scrape).
func TestDialerCollectorSourceTwice(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40009}, func(t *testing.T) {
		dst, _ := netnstest.EOFServer(t, "127.0.0.2:8080")
		lo := netip.MustParseAddr("127.0.0.1")
		d := &safedial.Dialer{Sources: []netip.Addr{lo, netip.MustParseAddr("127.0.0.3"), lo}}
		for range 12 {
			c, err := d.Dial("tcp", dst)
			if err != nil && !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatal(err)
			}
			if err == nil {
				t.Cleanup(func() { c.Close() })
			}
		}
		s := d.Stats()
		if len(s.Sources) != 3 || s.Sources[0].Addr != s.Sources[2].Addr {
			t.Fatalf("the test did not build what it meant to: Stats %+v", s)
		}
		var want strings.Builder
		for _, src := range s.Sources[:2] {
			v := src.Attempts
			if src.Addr == lo {
				v += s.Sources[2].Attempts
			}
			fmt.Fprintf(&want, "safedial_source_attempts_total{source=%q} %d\n", src.Addr, v)
		}
		got := exposition(t, safedialprom.NewDialerCollector(d, safedialprom.DialerOpts{}), "safedial_source_attempts_total")
		if diff := cmp.Diff(want.String(), got); diff != "" {
			t.Errorf("Stats %+v\nexposition (-want +got):\n%s", s, diff)
		}
	})
}
