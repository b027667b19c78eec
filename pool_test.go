//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
)

func localAddr(c net.Conn) netip.AddrPort {
	return c.LocalAddr().(*net.TCPAddr).AddrPort()
}

// TestPoolCapacity: 4 sources x 3 destinations x a 24-port range hold
// exactly 288 connections, 72 per source, and the 289th dial fails after
// trying every source.
func TestPoolCapacity(t *testing.T) {
	inNamespace(t, 40000, 40023, func(t *testing.T) {
		dsts := servers(t, "tcp", []string{"127.0.1.1", "127.0.1.2", "127.0.1.3"}, []int{8080})
		srcs := mustAddrs("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
		var events []string
		d := &safedial.Dialer{Sources: srcs, OnExhausted: func(e *safedial.ExhaustedError) {
			events = append(events, e.Source.String())
		}}
		conns, err := fillConns(t, d.DialContext, "tcp", dsts, 400)
		perSource := map[netip.Addr]int{}
		for _, c := range conns {
			perSource[localAddr(c).Addr()]++
		}
		t.Logf("pool capacity: %d connections, per source %v, then: %v", len(conns), perSource, err)
		if len(conns) != 288 {
			t.Errorf("connections = %d, want 288 (4 sources x 3 destinations x 24 ports)", len(conns))
		}
		want := map[netip.Addr]int{srcs[0]: 72, srcs[1]: 72, srcs[2]: 72, srcs[3]: 72}
		if diff := cmp.Diff(want, perSource, netipCmp); diff != "" {
			t.Errorf("connections per source (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), chain(err)); diff != "" {
			t.Errorf("289th dial: error chain (-want +got):\n%s", diff)
		}
		var ee *safedial.ExhaustedError
		if errors.As(err, &ee) {
			// The 289th dial (i=288) starts at source 288%4 = 0.
			if diff := cmp.Diff(srcs, ee.Tried, netipCmp); diff != "" {
				t.Errorf("Tried (-want +got):\n%s", diff)
			}
			for _, s := range srcs {
				if !strings.Contains(err.Error(), s.String()) {
					t.Errorf("message %q does not name source %v", err, s)
				}
			}
		}
		// Round-robin over sources and destinations covers each of the 12
		// pairs exactly 24 times: no failover until the last dial, which
		// fails over three times.
		wantStats := safedial.Stats{Dials: 289, Succeeded: 288, Exhausted: 1, Failovers: 3}
		for _, s := range srcs {
			wantStats.Sources = append(wantStats.Sources, safedial.SourceStats{Addr: s, Attempts: 73, Succeeded: 72, Exhausted: 1})
		}
		if diff := cmp.Diff(wantStats, d.Stats(), netipCmp); diff != "" {
			t.Errorf("Stats (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"}, events); diff != "" {
			t.Errorf("OnExhausted calls (-want +got):\n%s", diff)
		}
	})
}

// TestPoolFailover: one source is filled first by another dialer; the pool
// still connects through the other. The full source is remembered: later
// dials try the other first and do not ask the kernel about the full one
// while the other has ports; when both are full, the dial asks about both,
// and the next one only about the source marked longest ago.
func TestPoolFailover(t *testing.T) {
	inNamespace(t, 40000, 40023, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		a, b := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
		other := &safedial.Dialer{Base: net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0))}}
		if n, err := fill(t, other.DialContext, "tcp", []string{dst}, 100); n != 24 {
			t.Fatalf("filled %d from %v (%v), want 24", n, a, err)
		}

		var events []string
		d := &safedial.Dialer{Sources: []netip.Addr{a, b}, OnExhausted: func(e *safedial.ExhaustedError) {
			// The network of the dial, as in the error it returns and
			// as for a dial without Sources (not the attempt's tcp4).
			events = append(events, e.Net+" from "+e.Source.String())
		}}
		conns, err := fillConns(t, d.DialContext, "tcp", []string{dst}, 100)
		for _, c := range conns {
			if got := localAddr(c).Addr(); got != b {
				t.Errorf("connection from %v, want %v (the only source with ports left)", got, b)
			}
		}
		if len(conns) != 24 {
			t.Errorf("pool connections = %d, want 24", len(conns))
		}
		if diff := cmp.Diff(exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), chain(err)); diff != "" {
			t.Errorf("25th dial: error chain (-want +got):\n%s", diff)
		}
		var ee *safedial.ExhaustedError
		if errors.As(err, &ee) {
			// The 25th dial tries b (not known full) first, then a.
			if diff := cmp.Diff([]netip.Addr{b, a}, ee.Tried, netipCmp); diff != "" {
				t.Errorf("Tried (-want +got):\n%s", diff)
			}
		}
		// Dial 0 finds a full and fails over; dials 1-23 go to b alone; dial
		// 24 finds b full, then a.
		want := safedial.Stats{Dials: 25, Succeeded: 24, Exhausted: 1, Failovers: 2, Sources: []safedial.SourceStats{
			{Addr: a, Attempts: 2, Exhausted: 2},
			{Addr: b, Attempts: 25, Succeeded: 24, Exhausted: 1},
		}}
		if diff := cmp.Diff(want, d.Stats(), netipCmp); diff != "" {
			t.Errorf("Stats (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"tcp from " + a.String(), "tcp from " + b.String(), "tcp from " + a.String()}, events); diff != "" {
			t.Errorf("OnExhausted calls (-want +got):\n%s", diff)
		}
		// Both known full: one kernel attempt, from b (marked before a).
		_, err = d.Dial("tcp", dst)
		if errors.As(err, &ee) {
			if diff := cmp.Diff([]netip.Addr{b, a}, ee.Tried, netipCmp); diff != "" || ee.Source != b {
				t.Errorf("both known full: Tried (-want +got):\n%s; Source %v, want %v", diff, ee.Source, b)
			}
		} else {
			t.Errorf("both known full: %v, want exhaustion", err)
		}
		want.Dials, want.Exhausted, want.Failovers = 26, 2, 3
		want.Sources[1].Attempts, want.Sources[1].Exhausted = 26, 2
		want.Sources[0].Skipped = 1
		if diff := cmp.Diff(want, d.Stats(), netipCmp); diff != "" {
			t.Errorf("Stats after a dial with both known full (-want +got):\n%s", diff)
		}
	})
}

// TestPoolFamilies: sources are chosen by the destination's family; a host
// name is resolved with Base.Resolver and tried in its order.
func TestPoolFamilies(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		v4 := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
		v6 := servers(t, "tcp", []string{"::1"}, []int{8080})[0]
		res := fakeResolver(map[string][]netip.Addr{"both.test.": mustAddrs("127.0.0.2", "::1")})
		order, err := res.LookupNetIP(context.Background(), "ip", "both.test")
		if err != nil || len(order) != 2 {
			t.Fatalf("fake resolver: %v %v", order, err)
		}
		mixed := mustAddrs("127.0.0.1", "::1")
		for _, tc := range []struct {
			name     string
			sources  []netip.Addr
			dst      string
			from, to netip.Addr
		}{
			{"IPv4 destination", mixed, v4, mixed[0], netip.MustParseAddr("127.0.0.2")},
			{"IPv6 destination", mixed, v6, mixed[1], netip.MustParseAddr("::1")},
			{"name, both families", mixed, "both.test:8080", sourceFor(order[0], mixed), order[0]},
			{"name, IPv4 sources only", mixed[:1], "both.test:8080", mixed[0], netip.MustParseAddr("127.0.0.2")},
			{"name, IPv6 sources only", mixed[1:], "both.test:8080", mixed[1], netip.MustParseAddr("::1")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d := &safedial.Dialer{Sources: tc.sources, Base: net.Dialer{Resolver: res}}
				c, err := d.Dial("tcp", tc.dst)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if got := localAddr(c).Addr(); got != tc.from {
					t.Errorf("source = %v, want %v", got, tc.from)
				}
				if got := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != tc.to {
					t.Errorf("destination = %v, want %v", got, tc.to)
				}
			})
		}
		t.Run("IPv4 pool, IPv6 destination", func(t *testing.T) {
			d := &safedial.Dialer{Sources: mixed[:1]}
			_, err := d.Dial("tcp", v6)
			if !errors.Is(err, safedial.ErrInvalidConfig) || errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("err = %v, want ErrInvalidConfig, not exhaustion", err)
			}
			want := "dial tcp [::1]:8080: safedial: no source address of the destination's family for [::1]:8080 (IPv6): Sources holds 127.0.0.1; add an IPv6 source"
			if err.Error() != want {
				t.Errorf("message:\n got %q\nwant %q", err, want)
			}
		})
		t.Run("DialTCP from the pool", func(t *testing.T) {
			d := &safedial.Dialer{Sources: mixed}
			c, err := d.DialTCP(context.Background(), "tcp", netip.AddrPort{}, netip.MustParseAddrPort(v6))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := localAddr(c).Addr(); got != mixed[1] {
				t.Errorf("source = %v, want ::1", got)
			}
		})
	})
}

func sourceFor(dst netip.Addr, srcs []netip.Addr) netip.Addr {
	for _, s := range srcs {
		if s.Is4() == dst.Is4() {
			return s
		}
	}
	return netip.Addr{}
}

// TestPoolNotLocal: a source that is not on this host fails the dial with an
// error naming it when it is the only one; reached by failover from a full
// source, the dial reports the exhaustion (the not-local source is counted
// in Stats).
func TestPoolNotLocal(t *testing.T) {
	inNamespace(t, 40000, 40023, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		bad := netip.MustParseAddr("192.0.2.1")
		t.Run("only source", func(t *testing.T) {
			d := &safedial.Dialer{Sources: []netip.Addr{bad}}
			_, err := d.Dial("tcp", dst)
			if !errors.Is(err, safedial.ErrSourceNotLocal) || errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("err = %v, want ErrSourceNotLocal and not exhaustion", err)
			}
			if want := "dial tcp 192.0.2.1:0->127.0.1.1:8080: source address 192.0.2.1 is not an address of this host"; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("message %q, want it to start with %q", err, want)
			}
			want := safedial.Stats{Dials: 1, Sources: []safedial.SourceStats{{Addr: bad, Attempts: 1, NotLocal: 1}}}
			if diff := cmp.Diff(want, d.Stats(), netipCmp); diff != "" {
				t.Errorf("Stats (-want +got):\n%s", diff)
			}
		})
		t.Run("reached by failover", func(t *testing.T) {
			other := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}}
			if n, err := fill(t, other.DialContext, "tcp", []string{dst}, 100); n != 24 {
				t.Fatalf("filled %d (%v), want 24", n, err)
			}
			d := &safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), bad}}
			_, err := d.Dial("tcp", dst)
			if diff := cmp.Diff(exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), chain(err)); diff != "" {
				t.Errorf("error chain (-want +got):\n%s", diff)
			}
			if st := d.Stats(); st.Exhausted != 1 || st.Sources[1].NotLocal != 1 {
				t.Errorf("Stats = %+v, want 1 exhausted, the second source not local once", st)
			}
		})
	})
}

// TestPortRange: a per-socket range inside a wider namespace range holds
// exactly its own ports; disjoint ranges never share a port.
func TestPortRange(t *testing.T) {
	inNamespace(t, 40000, 49999, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		ranges := []safedial.PortRange{{Lo: 45000, Hi: 45009}, {Lo: 45010, Hi: 45019}}
		seen := map[uint16]int{}
		for i, r := range ranges {
			d := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}, PortRange: r}
			conns, err := fillConns(t, d.DialContext, "tcp", []string{dst}, 100)
			for _, c := range conns {
				p := localAddr(c).Port()
				if p < r.Lo || p > r.Hi {
					t.Errorf("dialer %d: local port %d outside %v", i, p, r)
				}
				if j, ok := seen[p]; ok {
					t.Errorf("port %d used by dialers %d and %d", p, j, i)
				}
				seen[p] = i
			}
			if len(conns) != 10 {
				t.Errorf("dialer %d (%v): %d connections, want 10", i, r, len(conns))
			}
			var ee *safedial.ExhaustedError
			if !errors.As(err, &ee) || ee.Syscall != "connect" || ee.Range != r || !ee.PerSocket {
				t.Errorf("11th dial: %v, want exhaustion of the per-socket range %v", err, r)
			} else if !strings.Contains(err.Error(), "per-socket port range "+r.String()+" is full") {
				t.Errorf("message %q does not name the per-socket range", err)
			}
		}
		t.Run("without a source address", func(t *testing.T) {
			d := &safedial.Dialer{PortRange: safedial.PortRange{Lo: 46000, Hi: 46003}}
			n, err := fill(t, d.DialContext, "tcp", []string{dst}, 100)
			if n != 4 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Errorf("%d connections (%v), want 4 then exhaustion", n, err)
			}
		})
	})
}

// TestPoolConcurrent: 64 goroutines over a 2-source pool with room for 48
// connections; run it with -race.
func TestPoolConcurrent(t *testing.T) {
	inNamespace(t, 40000, 40023, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		var events atomic.Uint64
		d := &safedial.Dialer{
			Sources:     mustAddrs("127.0.0.1", "127.0.0.2"),
			OnExhausted: func(*safedial.ExhaustedError) { events.Add(1) },
		}
		var (
			wg        sync.WaitGroup
			mu        sync.Mutex
			conns     []net.Conn
			exhausted int
		)
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := d.Dial("tcp", dst)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					conns = append(conns, c)
				case errors.Is(err, safedial.ErrEphemeralExhausted):
					exhausted++
				default:
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
		st := d.Stats()
		if len(conns) != 48 || exhausted != 16 || st.Dials != 64 || st.Succeeded != 48 || st.Exhausted != 16 {
			t.Errorf("%d connected, %d exhausted, Stats %+v; want 48, 16", len(conns), exhausted, st)
		}
		// Every source passed over (found full by the kernel, or known
		// full and skipped) is a failover step, or the last source of a
		// failed dial; each one the kernel found full is one OnExhausted
		// call.
		var passedFull, skipped uint64
		for _, s := range st.Sources {
			passedFull += s.Exhausted
			skipped += s.Skipped
		}
		if got, want := passedFull+skipped, st.Failovers+st.Exhausted; got != want {
			t.Errorf("sources passed over = %d, want Failovers+Exhausted = %d", got, want)
		}
		if passedFull != events.Load() {
			t.Errorf("per-source Exhausted sum %d != OnExhausted calls %d", passedFull, events.Load())
		}
	})
}

// TestPoolBindExhaustion: with DisableBindNoPort each source of a pool is
// capped at the range by bind(ip:0); the error says so for every source.
func TestPoolBindExhaustion(t *testing.T) {
	inNamespace(t, 40000, 40023, func(t *testing.T) {
		dsts := servers(t, "tcp", []string{"127.0.1.1", "127.0.1.2"}, []int{8080})
		d := &safedial.Dialer{Sources: mustAddrs("127.0.0.1", "127.0.0.2"), DisableBindNoPort: true}
		n, err := fill(t, d.DialContext, "tcp", dsts, 200)
		if n != 48 {
			t.Errorf("connections = %d, want 48 (2 sources x 24 ports, whatever the destinations)", n)
		}
		if diff := cmp.Diff(exhaustedChain("tcp", "bind", "EADDRINUSE"), chain(err)); diff != "" {
			t.Errorf("error chain (-want +got):\n%s", diff)
		}
		if want := "every port of the local port range 40000-40023 is bound on every source tried (127.0.0.1, 127.0.0.2)"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("message %v lacks %q", err, want)
		}
	})
}
