package safedialprom_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/safedial/safedial"
	safedialprom "github.com/safedial/safedial/prometheus"
)

var rng100 = safedial.PortRange{Lo: 40000, Hi: 40099}

// pair is a Headroom in the documented semantics: the five counts sum to
// the range's 100 ports.
func pair(src, dst string, inUse, tw, reserved, bound int) safedial.Headroom {
	h := safedial.Headroom{Source: netip.MustParseAddr(src), Range: rng100, InUse: inUse, TimeWait: tw, Reserved: reserved, Bound: bound}
	if dst != "*" {
		h.Dest = netip.MustParseAddrPort(dst)
	}
	h.Free = 100 - inUse - tw - reserved - bound
	return h
}

// fake answers probes from fixed tables and counts them.
type fake struct {
	tcp, udp   []safedial.Headroom
	udpErr     error
	calls, one atomic.Int64
	// oneUsed is the used count of a named pair's own probe; oneErr, when
	// set, is its error.
	oneUsed int
	oneErr  error
}

func (f *fake) all(_ context.Context, network string) ([]safedial.Headroom, error) {
	f.calls.Add(1)
	if network == "udp" {
		if f.udpErr != nil {
			return nil, f.udpErr
		}
		return append([]safedial.Headroom(nil), f.udp...), nil
	}
	return append([]safedial.Headroom(nil), f.tcp...), nil
}

func (f *fake) probe(_ context.Context, network string, src netip.Addr, dst netip.AddrPort) (safedial.Headroom, error) {
	f.one.Add(1)
	if src == netip.MustParseAddr("192.0.2.99") {
		return safedial.Headroom{}, errors.New("bad pair")
	}
	if f.oneErr != nil {
		return safedial.Headroom{}, f.oneErr
	}
	h := pair(src.String(), dst.String(), f.oneUsed, 0, 0, 0)
	return h, nil
}

func collector(f *fake, opts safedialprom.HeadroomOpts) *safedialprom.HeadroomCollector {
	c := safedialprom.NewHeadroomCollector(opts)
	safedialprom.SetProbes(c, f.all, f.probe)
	return c
}

// exposition is the text exposition of the named metrics of c.
func exposition(t *testing.T, c prometheus.Collector, names ...string) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if len(names) > 0 && !contains(names, mf.GetName()) {
				continue
			}
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			fmt.Fprintf(&b, "%s{%s} %g\n", mf.GetName(), strings.Join(ls, ","), v)
		}
	}
	return b.String()
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// TestHeadroomCollectorExposition checks the whole exposition of a small
// host, help texts included, and that it passes the linter promtool uses.
func TestHeadroomCollectorExposition(t *testing.T) {
	f := &fake{
		tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:5432", 60, 20, 0, 0), pair("::1", "[::1]:443", 3, 1, 10, 2)},
		udp: []safedial.Headroom{pair("127.0.0.1", "*", 5, 0, 0, 0)},
	}
	c := collector(f, safedialprom.HeadroomOpts{})
	got := exposition(t, c, "safedial_headroom_ports", "safedial_headroom_used_ratio", "safedial_headroom_pairs", "safedial_headroom_pairs_exported", "safedial_headroom_probe_errors_total")
	want := `safedial_headroom_pairs{protocol="tcp"} 2
safedial_headroom_pairs{protocol="udp"} 1
safedial_headroom_pairs_exported{protocol="tcp"} 2
safedial_headroom_pairs_exported{protocol="udp"} 1
safedial_headroom_ports{destination="*",protocol="udp",source="127.0.0.1",state="bound"} 0
safedial_headroom_ports{destination="*",protocol="udp",source="127.0.0.1",state="free"} 95
safedial_headroom_ports{destination="*",protocol="udp",source="127.0.0.1",state="in_use"} 5
safedial_headroom_ports{destination="*",protocol="udp",source="127.0.0.1",state="reserved"} 0
safedial_headroom_ports{destination="*",protocol="udp",source="127.0.0.1",state="time_wait"} 0
safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1",state="bound"} 0
safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1",state="free"} 20
safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1",state="in_use"} 60
safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1",state="reserved"} 0
safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1",state="time_wait"} 20
safedial_headroom_ports{destination="[::1]:443",protocol="tcp",source="::1",state="bound"} 2
safedial_headroom_ports{destination="[::1]:443",protocol="tcp",source="::1",state="free"} 84
safedial_headroom_ports{destination="[::1]:443",protocol="tcp",source="::1",state="in_use"} 3
safedial_headroom_ports{destination="[::1]:443",protocol="tcp",source="::1",state="reserved"} 10
safedial_headroom_ports{destination="[::1]:443",protocol="tcp",source="::1",state="time_wait"} 1
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 0
safedial_headroom_used_ratio{destination="*",protocol="udp",source="127.0.0.1"} 0.05
safedial_headroom_used_ratio{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1"} 0.8
safedial_headroom_used_ratio{destination="[::1]:443",protocol="tcp",source="::1"} 0.16
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("exposition (-want +got):\n%s", diff)
	}

	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// TestHeadroomCollectorTop: with 250 TCP pairs, only the Top with the
// highest used ratio are exported, plus the named ones, and
// safedial_headroom_pairs_exported says how many.
func TestHeadroomCollectorTop(t *testing.T) {
	f := &fake{}
	for i := range 250 {
		// Used ratio (i%97)/100, in no particular order.
		f.tcp = append(f.tcp, pair(fmt.Sprintf("10.0.%d.%d", i/200, i%200+1), "10.9.0.1:443", (i*31)%97, 0, 0, 0))
	}
	f.udp = []safedial.Headroom{pair("10.0.0.1", "*", 1, 0, 0, 0), pair("10.0.0.2", "*", 2, 0, 0, 0), pair("10.0.0.3", "*", 3, 0, 0, 0)}

	for _, tc := range []struct {
		name       string
		opts       safedialprom.HeadroomOpts
		tcp, udp   int  // exported
		tcpSeen    int  // safedial_headroom_pairs
		wantSource bool // TCP 10.0.0.1 -> 10.9.0.1:443 (used ratio 0) exported
		wantMin    float64
	}{
		{"default top", safedialprom.HeadroomOpts{}, 100, 3, 250, false, 0},
		{"top 5", safedialprom.HeadroomOpts{Top: 5}, 5, 3, 250, false, 0.92},
		{"top 5 and a source", safedialprom.HeadroomOpts{Top: 5, Sources: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}, 6, 3, 250, true, 0},
		{"named only", safedialprom.HeadroomOpts{Top: -1, Sources: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}, 1, 1, 250, true, 0},
		// A destination named alone has 250 pairs: capped at DefaultTop,
		// or at Top, the most used first.
		{"a destination", safedialprom.HeadroomOpts{Top: -1, Dests: []netip.AddrPort{netip.MustParseAddrPort("10.9.0.1:443")}}, 100, 0, 250, false, 0},
		{"a destination, top 5", safedialprom.HeadroomOpts{Top: 5, Dests: []netip.AddrPort{netip.MustParseAddrPort("10.9.0.1:443")}}, 5, 3, 250, false, 0.92},
		{"sources capped by top", safedialprom.HeadroomOpts{Top: 2, Sources: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}}, 4, 2, 250, false, 0},
		{"a pair without sockets", safedialprom.HeadroomOpts{Top: -1, Sources: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("192.0.2.1")}, Dests: []netip.AddrPort{netip.MustParseAddrPort("10.9.0.1:443"), netip.MustParseAddrPort("[2001:db8::1]:443")}}, 2, 1, 251, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(collector(f, tc.opts))
			mfs, err := reg.Gather()
			if err != nil {
				t.Fatal(err)
			}
			exported := map[string]float64{}
			pairs := map[string]float64{}
			ratios := map[string][]float64{}
			var sawSource bool
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					l := labels(m.GetLabel())
					switch mf.GetName() {
					case "safedial_headroom_pairs_exported":
						exported[l["protocol"]] = m.GetGauge().GetValue()
					case "safedial_headroom_pairs":
						pairs[l["protocol"]] = m.GetGauge().GetValue()
					case "safedial_headroom_used_ratio":
						ratios[l["protocol"]] = append(ratios[l["protocol"]], m.GetGauge().GetValue())
						sawSource = sawSource || l["source"] == "10.0.0.1" && l["protocol"] == "tcp"
					}
				}
			}
			if exported["tcp"] != float64(tc.tcp) || exported["udp"] != float64(tc.udp) || pairs["tcp"] != float64(tc.tcpSeen) || pairs["udp"] != 3 {
				t.Errorf("exported %v of %v pairs; want tcp %d, udp %d of tcp %d, udp 3", exported, pairs, tc.tcp, tc.udp, tc.tcpSeen)
			}
			if len(ratios["tcp"]) != tc.tcp || len(ratios["udp"]) != tc.udp {
				t.Errorf("%d tcp and %d udp pairs in safedial_headroom_used_ratio; want %d and %d", len(ratios["tcp"]), len(ratios["udp"]), tc.tcp, tc.udp)
			}
			if sawSource != tc.wantSource {
				t.Errorf("10.0.0.1 exported: %v, want %v", sawSource, tc.wantSource)
			}
			if tc.opts.Top > 0 && !tc.wantSource {
				for _, r := range ratios["tcp"] {
					if r < tc.wantMin {
						t.Errorf("a pair with used ratio %v among the top %d (the top are all >= %v)", r, tc.opts.Top, tc.wantMin)
					}
				}
			}
		})
	}
}

func labels(ls []*dto.LabelPair) map[string]string {
	m := map[string]string{}
	for _, l := range ls {
		m[l.GetName()] = l.GetValue()
	}
	return m
}

// TestHeadroomCollectorMinInterval: scrapes within 3/4 MinInterval of a
// probe, and concurrent scrapes, share one probe; a scrape that comes a
// little early (scrape jitter) gets a fresh answer.
func TestHeadroomCollectorMinInterval(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0)}}
	c := collector(f, safedialprom.HeadroomOpts{MinInterval: 10 * time.Second})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	safedialprom.SetClock(c, func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)

	gather := func() {
		if _, err := reg.Gather(); err != nil {
			t.Error(err)
		}
	}
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(gather)
	}
	wg.Wait()
	if n := f.calls.Load(); n != 2 { // one probe: tcp and udp
		t.Errorf("50 concurrent scrapes: %d probe calls, want 2 (one probe of tcp and udp)", n)
	}
	advance(7 * time.Second)
	gather()
	if n := f.calls.Load(); n != 2 {
		t.Errorf("a scrape 7 s later: %d probe calls in all, want 2", n)
	}
	advance(time.Second + 200*time.Millisecond) // 8.2 s: a 10 s scrape interval with 18% jitter
	gather()
	if n := f.calls.Load(); n != 4 {
		t.Errorf("a scrape 8.2 s after the probe: %d probe calls in all, want 4", n)
	}
	advance(7400 * time.Millisecond) // 7.4 s: under 7.5
	gather()
	if n := f.calls.Load(); n != 4 {
		t.Errorf("a scrape 7.4 s after the probe: %d probe calls in all, want 4", n)
	}
	advance(100 * time.Millisecond) // 7.5 s
	gather()
	if n := f.calls.Load(); n != 6 {
		t.Errorf("a scrape 7.5 s after the probe: %d probe calls in all, want 6", n)
	}

	// A negative MinInterval probes on every scrape.
	f.calls.Store(0)
	c = collector(f, safedialprom.HeadroomOpts{MinInterval: -1})
	for range 3 {
		testutil.CollectAndCount(c)
	}
	if n := f.calls.Load(); n != 6 {
		t.Errorf("MinInterval -1, 3 scrapes: %d probe calls, want 6", n)
	}
}

// TestHeadroomCollectorProbeError: a failing probe is counted, its pairs
// are left out, and the other protocol and the scrape go on.
func TestHeadroomCollectorProbeError(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0)}, udp: []safedial.Headroom{pair("127.0.0.1", "*", 1, 0, 0, 0)}, udpErr: errors.New("boom")}
	var reported []string
	c := collector(f, safedialprom.HeadroomOpts{MinInterval: -1, OnError: func(network string, err error) {
		reported = append(reported, network+": "+err.Error())
	}})
	testutil.CollectAndCount(c)
	got := exposition(t, c, "safedial_headroom_probe_errors_total", "safedial_headroom_pairs", "safedial_headroom_used_ratio")
	want := `safedial_headroom_pairs{protocol="tcp"} 1
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 2
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.01
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("after two scrapes with the UDP probe failing (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"udp: boom", "udp: boom"}, reported); diff != "" {
		t.Errorf("OnError (-want +got):\n%s", diff)
	}
}

// TestHeadroomCollectorNamedPairError: a named pair whose own probe fails
// is left out and counted; the other pairs are exported.
func TestHeadroomCollectorNamedPairError(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0)}}
	c := collector(f, safedialprom.HeadroomOpts{
		Sources: []netip.Addr{netip.MustParseAddr("192.0.2.99"), netip.MustParseAddr("192.0.2.1")},
		Dests:   []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:80")},
	})
	got := exposition(t, c, "safedial_headroom_probe_errors_total", "safedial_headroom_pairs", "safedial_headroom_pairs_exported", "safedial_headroom_used_ratio")
	want := `safedial_headroom_pairs{protocol="tcp"} 3
safedial_headroom_pairs{protocol="udp"} 0
safedial_headroom_pairs_exported{protocol="tcp"} 2
safedial_headroom_pairs_exported{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 1
safedial_headroom_probe_errors_total{protocol="udp"} 0
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.01
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="192.0.2.1"} 0
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("exposition (-want +got):\n%s", diff)
	}
}

// TestHeadroomCollectorNamedPairKept: a named pair (without sockets, so
// probed on its own) whose probe fails keeps its last good answer for
// MaxStale, and the protocol's age says how old the oldest answer is; past
// MaxStale the pair is left out; a good probe brings it back at age 0.
func TestHeadroomCollectorNamedPairKept(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0)}, oneUsed: 90}
	c := collector(f, safedialprom.HeadroomOpts{MinInterval: -1, MaxStale: 5 * time.Minute, Top: -1,
		Sources: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Dests:   []netip.AddrPort{netip.MustParseAddrPort("127.0.0.2:80")},
	})
	const kept = `safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="192.0.2.1"} 0.9
`
	staleSteps(t, c, func(err error) { f.oneErr = err }, []staleStep{
		{"good", 0, nil, `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 0
` + kept},
		{"its probe fails 4 minutes later: kept, 240 s old", 4 * time.Minute, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="tcp"} 240
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 1
safedial_headroom_probe_errors_total{protocol="udp"} 0
` + kept},
		{"at 5 minutes: still kept", time.Minute, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="tcp"} 300
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 2
safedial_headroom_probe_errors_total{protocol="udp"} 0
` + kept},
		{"past MaxStale: left out", time.Second, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 3
safedial_headroom_probe_errors_total{protocol="udp"} 0
`},
		{"good again", time.Second, nil, `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 3
safedial_headroom_probe_errors_total{protocol="udp"} 0
` + kept},
	})
}

// staleStep is a step of staleSteps: after time, the probe's error, and the
// exposition wanted.
type staleStep struct {
	name  string
	after time.Duration
	err   error
	want  string
}

// staleSteps runs steps on c: each moves c's clock on, makes the probe
// fail with its error (through setErr), and compares the errors, ages and
// used ratios exported with its want.
func staleSteps(t *testing.T, c *safedialprom.HeadroomCollector, setErr func(error), steps []staleStep) {
	t.Helper()
	var now time.Time
	safedialprom.SetClock(c, func() time.Time { return now })
	runStaleSteps(t, c, &now, setErr, steps)
}

// runStaleSteps runs steps on c, whose clock reads *now.
func runStaleSteps(t *testing.T, c prometheus.Collector, now *time.Time, setErr func(error), steps []staleStep) {
	t.Helper()
	*now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	names := []string{"safedial_headroom_probe_errors_total", "safedial_headroom_probe_age_seconds", "safedial_headroom_used_ratio"}
	for _, step := range steps {
		*now = now.Add(step.after)
		setErr(step.err)
		if diff := cmp.Diff(step.want, exposition(t, c, names...)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", step.name, diff)
		}
	}
}

// TestHeadroomCollectorSlowProbe: a scrape that arrives during a probe
// slower than MinInterval waits for it and gets its answer, instead of
// probing again once it has the lock (which would turn a scrape storm into
// a queue of probes, one per scrape).
func TestHeadroomCollectorSlowProbe(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	var probing bool // the first probe waits for the second scrape to ask
	entered, asked := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0)}}
	c := collector(f, safedialprom.HeadroomOpts{MinInterval: time.Second})
	safedialprom.SetClock(c, func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		if probing { // the second scrape asks, while the first probes
			probing = false
			close(asked)
		}
		return now
	})
	safedialprom.SetProbes(c, func(ctx context.Context, network string) ([]safedial.Headroom, error) {
		once.Do(func() {
			mu.Lock()
			probing = true
			mu.Unlock()
			close(entered)
			select {
			case <-asked:
			case <-time.After(20 * time.Second):
				t.Error("the second scrape did not read the clock before the first probe ended")
			}
		})
		mu.Lock()
		now = now.Add(5 * time.Second) // each probe takes 5 s
		mu.Unlock()
		return f.all(ctx, network)
	}, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	var wg sync.WaitGroup
	wg.Go(func() { reg.Gather() })
	<-entered
	wg.Go(func() { reg.Gather() })
	wg.Wait()
	if n := f.calls.Load(); n != 2 {
		t.Errorf("a scrape during a 10 s probe: %d probe calls in all, want 2 (one probe of tcp and udp)", n)
	}
}

// TestHeadroomCollectorNamedZone: a named address with a zone (-src
// ::1%lo) names the pair of the kernel's sockets, which have none: that
// pair is exported once, not a second time under the zoned name.
func TestHeadroomCollectorNamedZone(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("::1", "[::1]:8080", 5, 0, 0, 0)}}
	c := collector(f, safedialprom.HeadroomOpts{
		Sources: []netip.Addr{netip.MustParseAddr("::1%lo")},
		Dests:   []netip.AddrPort{netip.MustParseAddrPort("[::1%lo]:8080")},
	})
	got := exposition(t, c, "safedial_headroom_pairs", "safedial_headroom_pairs_exported", "safedial_headroom_used_ratio")
	want := `safedial_headroom_pairs{protocol="tcp"} 1
safedial_headroom_pairs{protocol="udp"} 0
safedial_headroom_pairs_exported{protocol="tcp"} 1
safedial_headroom_pairs_exported{protocol="udp"} 0
safedial_headroom_used_ratio{destination="[::1]:8080",protocol="tcp",source="::1"} 0.05
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("exposition (-want +got):\n%s", diff)
	}
	if n := f.one.Load(); n != 0 {
		t.Errorf("%d probes of a named pair that the probe of every pair found", n)
	}
}

// TestDialerCollectorMappedSource: a source configured IPv4-mapped is
// labelled unmapped, as the headroom rows name it (so that the two join on
// source), and the same address given both ways is one series, not two
// that would fail the scrape when labelled alike.
func TestDialerCollectorMappedSource(t *testing.T) {
	d := &safedial.Dialer{}
	if err := d.SetSources([]netip.Addr{netip.MustParseAddr("::ffff:127.0.0.1"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::ffff:127.0.0.3")}); err != nil {
		t.Fatal(err)
	}
	got := exposition(t, safedialprom.NewDialerCollector(d, safedialprom.DialerOpts{}), "safedial_source_attempts_total")
	want := `safedial_source_attempts_total{source="127.0.0.1"} 0
safedial_source_attempts_total{source="127.0.0.3"} 0
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Stats %+v\nexposition (-want +got):\n%s", d.Stats(), diff)
	}
}

// TestHeadroomCollectorKeepsLastGoodAnswer: a failed probe exports the
// protocol's last good answer with its age, and counts the failure, for
// MaxStale; past it the pairs are dropped; a good probe brings the age back
// to 0.
func TestHeadroomCollectorKeepsLastGoodAnswer(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 95, 0, 0, 0)}, udp: []safedial.Headroom{pair("127.0.0.1", "*", 1, 0, 0, 0)}}
	c := collector(f, safedialprom.HeadroomOpts{MinInterval: -1, MaxStale: 5 * time.Minute})
	staleSteps(t, c, func(err error) { f.udpErr = err }, []staleStep{
		{"good", 0, nil, `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 0
safedial_headroom_used_ratio{destination="*",protocol="udp",source="127.0.0.1"} 0.01
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.95
`},
		{"UDP fails 4 minutes later: the last good answer, 240 s old", 4 * time.Minute, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 240
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 1
safedial_headroom_used_ratio{destination="*",protocol="udp",source="127.0.0.1"} 0.01
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.95
`},
		{"still failing at 5 minutes: still kept", time.Minute, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 300
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 2
safedial_headroom_used_ratio{destination="*",protocol="udp",source="127.0.0.1"} 0.01
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.95
`},
		{"past MaxStale: dropped", time.Second, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 3
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.95
`},
		{"good again", time.Second, nil, `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 3
safedial_headroom_used_ratio{destination="*",protocol="udp",source="127.0.0.1"} 0.01
safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.95
`},
	})

	// MaxStale < 0: dropped at the first failure.
	f.udpErr = nil
	c = collector(f, safedialprom.HeadroomOpts{MinInterval: -1, MaxStale: -1})
	exposition(t, c)
	f.udpErr = errors.New("boom")
	if got := exposition(t, c, "safedial_headroom_used_ratio"); strings.Contains(got, `protocol="udp"`) {
		t.Errorf("MaxStale -1, after a failed UDP probe:\n%s", got)
	}
}

// TestHeadroomCollectorResolveDests: destinations are resolved at each
// probe; a failed resolution is a TCP probe error, not the end of the
// exporter, and the pair appears once its name resolves.
func TestHeadroomCollectorResolveDests(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0), pair("127.0.0.1", "127.0.0.3:80", 2, 0, 0, 0)}}
	var resolved []netip.AddrPort
	var resolveErr error
	c := collector(f, safedialprom.HeadroomOpts{MinInterval: -1, Top: -1,
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		ResolveDests: func(context.Context) ([]netip.AddrPort, error) {
			return resolved, resolveErr
		}})
	names := []string{"safedial_headroom_probe_errors_total", "safedial_headroom_used_ratio"}
	resolveErr = errors.New("no such host")
	if diff := cmp.Diff(`safedial_headroom_probe_errors_total{protocol="tcp"} 1
safedial_headroom_probe_errors_total{protocol="udp"} 0
`, exposition(t, c, names...)); diff != "" {
		t.Errorf("the name does not resolve: -src and -dst name no pair (-want +got):\n%s", diff)
	}
	resolved, resolveErr = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.3:80")}, nil
	const pair3 = `safedial_headroom_used_ratio{destination="127.0.0.3:80",protocol="tcp",source="127.0.0.1"} 0.02
`
	if diff := cmp.Diff(`safedial_headroom_probe_errors_total{protocol="tcp"} 1
safedial_headroom_probe_errors_total{protocol="udp"} 0
`+pair3, exposition(t, c, names...)); diff != "" {
		t.Errorf("the name resolves (-want +got):\n%s", diff)
	}

	// The name stops resolving: its last addresses are kept for MaxStale
	// (5 minutes), their pairs probed afresh; then they are dropped.
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	safedialprom.SetClock(c, func() time.Time { return now })
	resolveErr = nil
	exposition(t, c) // resolved at now
	resolved, resolveErr = nil, errors.New("no such host")
	now = now.Add(5 * time.Minute)
	if diff := cmp.Diff(`safedial_headroom_probe_errors_total{protocol="tcp"} 2
safedial_headroom_probe_errors_total{protocol="udp"} 0
`+pair3, exposition(t, c, names...)); diff != "" {
		t.Errorf("the name no longer resolves, 5 minutes on (-want +got):\n%s", diff)
	}
	now = now.Add(time.Second)
	if diff := cmp.Diff(`safedial_headroom_probe_errors_total{protocol="tcp"} 3
safedial_headroom_probe_errors_total{protocol="udp"} 0
`, exposition(t, c, names...)); diff != "" {
		t.Errorf("the name no longer resolves, past MaxStale (-want +got):\n%s", diff)
	}
}

// TestHeadroomCollectorScrapeJitter: scraped every MinInterval with the
// jitter issue 23 measured (0.82-1.18 of the interval, 257 scrapes), every
// scrape gets a fresh probe. With the strict rule (no slack) 81 of these 257
// got the previous probe's answer (the issue measured 95 of 257).
func TestHeadroomCollectorScrapeJitter(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0)}}
	c := collector(f, safedialprom.HeadroomOpts{MinInterval: time.Second})
	var now time.Time
	safedialprom.SetClock(c, func() time.Time { return now })
	scrapes := jitteredScrapes(c, &now)
	if n := f.calls.Load(); n != 2*int64(scrapes) {
		t.Errorf("%d scrapes at 0.82-1.18 s: %d probes, want %d (one per scrape)", scrapes, n/2, scrapes)
	}
}

// TestDialerCollectorScrapeJitter: the DialerCollector's MinInterval has the
// same slack: scraped every MinInterval with jitter, every scrape probes
// (counted through OnError: the target has no port, so each probe fails at
// once, with no socket).
func TestDialerCollectorScrapeJitter(t *testing.T) {
	probes := 0
	c := safedialprom.NewDialerCollector(&safedial.Dialer{}, safedialprom.DialerOpts{
		MinInterval: time.Second,
		Headroom:    []safedialprom.Target{{Network: "tcp", Address: "127.0.0.1"}},
		OnError:     func(safedialprom.Target, error) { probes++ },
	})
	var now time.Time
	safedialprom.SetDialerClock(c, func() time.Time { return now })
	if scrapes := jitteredScrapes(c, &now); probes != scrapes {
		t.Errorf("%d scrapes at 0.82-1.18 s: %d probes, want %d (one per scrape)", scrapes, probes, scrapes)
	}
}

// TestDialerCollectorKeepsLastGoodAnswer: a target whose probe fails keeps
// its last good answer for MaxStale, with its age, and counts the failure;
// past MaxStale its pairs are dropped; a good probe brings the age back to
// 0. Another target's good answer is not held back.
func TestDialerCollectorKeepsLastGoodAnswer(t *testing.T) {
	var failing error
	c := safedialprom.NewDialerCollector(&safedial.Dialer{}, safedialprom.DialerOpts{
		MinInterval: -1,
		Headroom:    []safedialprom.Target{{Network: "tcp", Address: "127.0.0.2:80"}, {Network: "udp", Address: "127.0.0.3:53"}},
	})
	safedialprom.SetDialerHeadroom(c, func(_ context.Context, network, address string) ([]safedial.Headroom, error) {
		if network == "tcp" {
			if failing != nil {
				return nil, failing
			}
			return []safedial.Headroom{pair("127.0.0.1", address, 95, 0, 0, 0)}, nil
		}
		return []safedial.Headroom{pair("127.0.0.1", address, 1, 0, 0, 0)}, nil
	})
	const both = `safedial_headroom_used_ratio{destination="127.0.0.2:80",protocol="tcp",source="127.0.0.1"} 0.95
safedial_headroom_used_ratio{destination="127.0.0.3:53",protocol="udp",source="127.0.0.1"} 0.01
`
	var now time.Time
	steps := []staleStep{
		{"good", 0, nil, `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 0
safedial_headroom_probe_errors_total{protocol="udp"} 0
` + both},
		{"TCP fails 5 minutes later: kept, 300 s old", 5 * time.Minute, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="tcp"} 300
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 1
safedial_headroom_probe_errors_total{protocol="udp"} 0
` + both},
		{"past MaxStale: dropped", time.Second, errors.New("boom"), `safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 2
safedial_headroom_probe_errors_total{protocol="udp"} 0
safedial_headroom_used_ratio{destination="127.0.0.3:53",protocol="udp",source="127.0.0.1"} 0.01
`},
		{"good again", time.Second, nil, `safedial_headroom_probe_age_seconds{protocol="tcp"} 0
safedial_headroom_probe_age_seconds{protocol="udp"} 0
safedial_headroom_probe_errors_total{protocol="tcp"} 2
safedial_headroom_probe_errors_total{protocol="udp"} 0
` + both},
	}
	safedialprom.SetDialerClock(c, func() time.Time { return now })
	runStaleSteps(t, c, &now, func(err error) { failing = err }, steps)
}

// TestCollectorsUserCodeUnlocked: the user code a probe calls (ResolveDests
// and OnError; the DialerCollector's Dialer.Headroom, which runs the
// Dialer's GetSources and Control hook) runs with the collector's lock
// released; a scrape that arrives meanwhile waits for that probe and gets
// its answer (one probe for both), and a probe that panics lets the scrapes
// waiting for it go.
func TestCollectorsUserCodeUnlocked(t *testing.T) {
	f := &fake{tcp: []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 1, 0, 0, 0)}}
	var hc *safedialprom.HeadroomCollector
	var locked []bool
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	hc = collector(f, safedialprom.HeadroomOpts{MinInterval: time.Hour,
		ResolveDests: func(context.Context) ([]netip.AddrPort, error) {
			locked = append(locked, safedialprom.Locked(hc))
			once.Do(func() { close(entered); <-release })
			return nil, errors.New("no such host")
		},
		OnError: func(string, error) { locked = append(locked, safedialprom.Locked(hc)) },
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(hc)
	var wg sync.WaitGroup
	wg.Go(func() { reg.Gather() })
	<-entered
	wg.Go(func() { reg.Gather() }) // waits for the first scrape's probe
	close(release)
	wg.Wait()
	if n := f.calls.Load(); n != 2 {
		t.Errorf("two scrapes, the second during the first's probe: %d probe calls, want 2 (one probe of tcp and udp)", n)
	}
	if !slices.Equal(locked, []bool{false, false}) {
		t.Errorf("HeadroomCollector's lock held during ResolveDests, OnError: %v, want neither", locked)
	}

	locked = nil
	var dc *safedialprom.DialerCollector
	dc = safedialprom.NewDialerCollector(&safedial.Dialer{}, safedialprom.DialerOpts{MinInterval: -1,
		Headroom: []safedialprom.Target{{Network: "tcp", Address: "127.0.0.2:80"}},
		OnError:  func(safedialprom.Target, error) { locked = append(locked, safedialprom.Locked(dc)) },
	})
	panics := true
	safedialprom.SetDialerHeadroom(dc, func(context.Context, string, string) ([]safedial.Headroom, error) {
		locked = append(locked, safedialprom.Locked(dc))
		if panics {
			panics = false
			panic("a hook panicked")
		}
		return nil, errors.New("boom")
	})
	func() {
		defer func() {
			if r := recover(); r != "a hook panicked" {
				t.Errorf("recovered %v, want the hook's panic", r)
			}
		}()
		dc.Collect(make(chan prometheus.Metric, 100))
	}()
	testutil.CollectAndCount(dc) // would wait for good if the panic had left the probe under way
	if !slices.Equal(locked, []bool{false, false, false}) {
		t.Errorf("DialerCollector's lock held during Headroom, Headroom, OnError: %v, want none", locked)
	}
}

// TestCollectorsWaitBounded: a scrape that arrives while a probe runs
// waits for it at most the probe's Timeout. A hook that overstays it (here
// one that ignores its context until the test lets it go) leaves the other
// scrapes the last answer, and a scrape from inside the probe's own hook
// (OnError scraping the collector) returns instead of waiting for itself.
func TestCollectorsWaitBounded(t *testing.T) {
	good := []safedial.Headroom{pair("127.0.0.1", "127.0.0.2:80", 7, 0, 0, 0)}
	var dc *safedialprom.DialerCollector
	var inHook atomic.Int64 // series a scrape from OnError saw
	dc = safedialprom.NewDialerCollector(&safedial.Dialer{}, safedialprom.DialerOpts{MinInterval: -1, Timeout: time.Millisecond,
		Headroom: []safedialprom.Target{{Network: "tcp", Address: "127.0.0.2:80"}},
		OnError:  func(safedialprom.Target, error) { inHook.Store(int64(testutil.CollectAndCount(dc))) },
	})
	entered, release := make(chan struct{}), make(chan struct{})
	var calls int
	safedialprom.SetDialerHeadroom(dc, func(context.Context, string, string) ([]safedial.Headroom, error) {
		calls++
		switch calls {
		case 1:
			return good, nil
		case 2:
			close(entered)
			<-release // past its context's deadline
			return good, nil
		}
		return nil, errors.New("boom")
	})
	want := exposition(t, dc, "safedial_headroom_free")
	var wg sync.WaitGroup
	wg.Go(func() { testutil.CollectAndCount(dc) }) // the probe that hangs
	<-entered
	got := make(chan string, 1)
	go func() { got <- exposition(t, dc, "safedial_headroom_free") }()
	select {
	case g := <-got:
		if g != want {
			t.Errorf("a scrape during a probe past its Timeout:\n%s\nwant the last answer:\n%s", g, want)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("a scrape waited 20s for a probe whose Timeout is 1ms")
	}
	close(release)
	wg.Wait()
	if calls != 2 {
		t.Errorf("%d probes, want 2 (the waiting scrape does not probe)", calls)
	}

	// OnError scrapes the collector whose probe called it.
	done := make(chan struct{})
	go func() { testutil.CollectAndCount(dc); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("a scrape from OnError waited 20s for its own probe")
	}
	if n := inHook.Load(); n == 0 {
		t.Errorf("the scrape from OnError saw no series")
	}

	f := &fake{tcp: good, udpErr: errors.New("boom")}
	var hc *safedialprom.HeadroomCollector
	hc = collector(f, safedialprom.HeadroomOpts{MinInterval: -1, Timeout: time.Millisecond,
		OnError: func(string, error) { inHook.Store(int64(testutil.CollectAndCount(hc))) },
	})
	inHook.Store(0)
	done = make(chan struct{})
	go func() { testutil.CollectAndCount(hc); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("a scrape from the HeadroomCollector's OnError waited 20s for its own probe")
	}
	if n := f.calls.Load(); n != 2 {
		t.Errorf("%d probe calls, want 2 (the scrape from OnError does not probe)", n)
	}
}

// jitteredScrapes scrapes c 257 times, moving *now (the clock c reads) on
// by 0.82-1.18 s between scrapes, the jitter issue 23 measured, and returns
// the number of scrapes.
func jitteredScrapes(c prometheus.Collector, now *time.Time) int {
	*now = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	const scrapes = 257
	for i := range scrapes {
		if i > 0 {
			*now = now.Add(820*time.Millisecond + time.Duration(rng.Int64N(int64(360*time.Millisecond))))
		}
		testutil.CollectAndCount(c)
	}
	return scrapes
}

// TestHeadroomDescsShared: the series a DialerCollector shares with the
// HeadroomCollector (so that one alert covers both) are described alike,
// help texts included: prometheus.Gatherers merging a registry of each
// refuses a family whose help differs (safedial_headroom_probe_age_seconds'
// did).
func TestHeadroomDescsShared(t *testing.T) {
	describe := func(c prometheus.Collector) map[string]string {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		m := map[string]string{}
		for d := range ch {
			s := d.String()
			name := s[strings.Index(s, `fqName: "`)+len(`fqName: "`):]
			m[name[:strings.Index(name, `"`)]] = s
		}
		return m
	}
	host := describe(safedialprom.NewHeadroomCollector(safedialprom.HeadroomOpts{}))
	dialer := describe(safedialprom.NewDialerCollector(&safedial.Dialer{}, safedialprom.DialerOpts{Headroom: []safedialprom.Target{{Network: "tcp", Address: "127.0.0.1:80"}}}))
	shared := 0
	for name, d := range dialer {
		if h, ok := host[name]; ok {
			shared++
			if d != h {
				t.Errorf("%s:\nDialerCollector   %s\nHeadroomCollector %s", name, d, h)
			}
		}
	}
	if shared != 4 {
		t.Errorf("%d descriptors shared, want 4 (ports, used ratio, probe errors, probe age)", shared)
	}
}
