//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
)

// TestSourcesNotUnicast: a source that cannot pin a connection is a
// configuration error, before any socket where that can be known, and after
// the bind (the kernel's choice read back) where it cannot.
func TestSourcesNotUnicast(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		dst4 := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
		dst6 := servers(t, "tcp", []string{"::1"}, []int{8080})[0]
		for _, tc := range []struct {
			src      string
			dst      string
			socket   bool // the error can only come after a socket was made
			contains string
		}{
			{"0.0.0.0", dst4, false, "Sources[0] 0.0.0.0 is the unspecified address"},
			{"::", dst6, false, "Sources[0] :: is the unspecified address"},
			{"224.0.0.1", dst4, false, "Sources[0] 224.0.0.1 is a multicast address"},
			{"ff02::1", dst6, false, "Sources[0] ff02::1 is a multicast address"},
			{"255.255.255.255", dst4, false, "Sources[0] 255.255.255.255 is the limited broadcast address"},
			{"fe80::1", dst6, false, "Sources[0] fe80::1 is an IPv6 link-local address without a zone"},
			{"fe80::1%nosuchif", dst6, false, `Sources[0] fe80::1%nosuchif has zone "nosuchif", which is not an interface of this host`},
			{"127.255.255.255", dst4, false, "Sources[0] 127.255.255.255 is a broadcast address of this host"}, // lo's broadcast: found with the routing, before any socket
		} {
			t.Run(tc.src, func(t *testing.T) {
				hookRan := false
				d := &safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr(tc.src)}, Base: net.Dialer{
					Control: func(string, string, syscall.RawConn) error { hookRan = true; return nil },
				}}
				c, err := d.Dial("tcp", tc.dst)
				if err == nil {
					t.Fatalf("connected from %v, want an error", c.LocalAddr())
				}
				if !errors.Is(err, safedial.ErrInvalidConfig) || errors.Is(err, safedial.ErrEphemeralExhausted) || errors.Is(err, safedial.ErrSourceNotLocal) {
					t.Errorf("err = %v, want ErrInvalidConfig only", err)
				}
				if !strings.Contains(err.Error(), tc.contains) {
					t.Errorf("message %q lacks %q", err, tc.contains)
				}
				if _, ok := err.(*net.OpError); !ok {
					t.Errorf("err is %T, want *net.OpError", err)
				}
				if hookRan != tc.socket {
					t.Errorf("a socket was made: %v, want %v", hookRan, tc.socket)
				}
				if err := d.SetSources(d.Sources); (err != nil) == tc.socket {
					t.Errorf("SetSources = %v; want an error exactly where no socket is needed to know", err)
				}
			})
		}
	})
}

// TestSourcesLinkLocal: an IPv6 link-local source carries its interface as
// the zone (fe80::1%lo), and pins the connection to it.
func TestSourcesLinkLocal(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		addLinkLocal(t)
		servers(t, "tcp", []string{"fe80::1%lo"}, []int{8080})
		// Not the listener's Addr, which came back without its zone in
		// about half the runs here ("[fe80::1]:8080": connect then
		// fails with ENETUNREACH).
		dst := "[fe80::1%lo]:8080"
		for _, zone := range []string{"lo", "1"} { // lo is interface 1 in a fresh namespace
			d := &safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("fe80::1%" + zone)}}
			c, err := d.Dial("tcp", dst)
			if err != nil {
				t.Fatalf("zone %s: %v", zone, err)
			}
			got := localAddr(c)
			c.Close()
			if got.Addr().WithZone("") != netip.MustParseAddr("fe80::1") {
				t.Errorf("zone %s: source %v, want fe80::1", zone, got)
			}
		}
	})
}

// TestStatsWhileSourcesChange: an expvar-like goroutine reads Stats while
// Sources changes between dials (run with -race), Stats describes the pool
// the next dial uses, and a dial whose OnExhausted panics is still counted.
func TestStatsWhileSourcesChange(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
		a, b := mustAddrs("127.0.0.1"), mustAddrs("127.0.0.3")
		d := &safedial.Dialer{Sources: a}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					_ = d.Stats()
				}
			}
		}()
		dial := func() {
			t.Helper()
			c, err := d.Dial("tcp", dst)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		dial()
		d.Sources = b // a change between dials, as the docs allow
		dial()
		if err := d.SetSources(a); err != nil {
			t.Fatal(err)
		}
		close(stop)
		wg.Wait()

		// SetSources: Stats describes the new pool at once, counted from
		// zero.
		want := safedial.Stats{Dials: 2, Succeeded: 2, Sources: []safedial.SourceStats{{Addr: a[0]}}}
		if diff := cmp.Diff(want, d.Stats(), netipCmp); diff != "" {
			t.Errorf("Stats after SetSources (-want +got):\n%s", diff)
		}
		if err := d.SetSources(mustAddrs("0.0.0.0")); !errors.Is(err, safedial.ErrInvalidConfig) {
			t.Errorf("SetSources(0.0.0.0) = %v, want ErrInvalidConfig", err)
		}
		if err := d.SetSources(nil); err != nil || d.Stats().Sources != nil {
			t.Errorf("SetSources(nil) = %v, Stats().Sources = %v; want no pool", err, d.Stats().Sources)
		}
		if err := d.SetSources(a); err != nil {
			t.Fatal(err)
		}

		// Fill a's 4 ports toward dst, then panic in OnExhausted: the dial
		// is counted all the same.
		for range 3 {
			dial()
		}
		d.OnExhausted = func(*safedial.ExhaustedError) { panic("OnExhausted panics") }
		func() {
			defer func() {
				if r := recover(); r != "OnExhausted panics" {
					t.Errorf("recovered %v, want the panic of OnExhausted", r)
				}
			}()
			d.Dial("tcp", dst)
			t.Error("the dial returned; OnExhausted should have panicked")
		}()
		if st := d.Stats(); st.Dials != 6 || st.Succeeded != 5 {
			t.Errorf("Stats = %+v, want 6 dials (the panicking one counted), 5 succeeded", st)
		}
	})
}

// TestPoolMemory: the memory of full sources orders the sources, it never
// refuses one. With every source known full a dial asks the kernel about one
// source only (the one marked longest ago), so it costs one scan; a port
// freed on any source is found within one pass over the sources; another
// destination is not affected.
func TestPoolMemory(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		dsts := servers(t, "tcp", []string{"127.0.1.1", "127.0.1.2"}, []int{8080})
		srcs := mustAddrs("127.0.0.1", "127.0.0.2")
		a, b := srcs[0], srcs[1]
		d := &safedial.Dialer{Sources: srcs}
		// 2 sources x 4 ports toward dsts[0]: 8 connections; the 9th dial
		// asks the kernel about both.
		conns, err := fillConns(t, d.DialContext, "tcp", dsts[:1], 100)
		if len(conns) != 8 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Fatalf("%d connections, then %v; want 8, then exhaustion", len(conns), err)
		}
		attempts := func() (n [2]uint64) {
			for i, s := range d.Stats().Sources {
				n[i] = s.Attempts
			}
			return n
		}
		tried := func(err error) []netip.Addr {
			var ee *safedial.ExhaustedError
			if !errors.As(err, &ee) {
				t.Fatalf("%v, want exhaustion", err)
			}
			if diff := cmp.Diff(exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), chain(err)); diff != "" {
				t.Errorf("error chain (-want +got):\n%s", diff)
			}
			// The kernel's error is the last one it gave: from the only
			// source asked when every source was known full, else from
			// the last one tried.
			if asked := ee.Tried[len(ee.Tried)-1]; ee.Source != asked && ee.Source != ee.Tried[0] {
				t.Errorf("Source %v, want a source asked: %v", ee.Source, err)
			}
			return ee.Tried
		}
		// Known full: one kernel attempt per dial, from the source marked
		// longest ago (the 9th dial marked a, then b).
		for i, want := range [][]netip.Addr{{a, b}, {b, a}, {a, b}} {
			before := attempts()
			_, err := d.Dial("tcp", dsts[0])
			if diff := cmp.Diff(want, tried(err), netipCmp); diff != "" {
				t.Errorf("known full, dial %d: Tried (-want +got):\n%s", i, diff)
			}
			after := attempts()
			if got := after[0] - before[0] + after[1] - before[1]; got != 1 {
				t.Errorf("known full, dial %d: %d kernel attempts, want 1", i, got)
			}
		}
		// Another destination is not affected.
		c, err := d.Dial("tcp", dsts[1])
		if err != nil {
			t.Fatalf("other destination: %v", err)
		}
		c.Close()

		// Free one of a's ports (an abortive close leaves no TIME_WAIT). b
		// is now the source marked longest ago: the next dial asks about
		// b, the one after about a, and connects.
		for _, c := range conns {
			if localAddr(c).Addr() == a {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				break
			}
		}
		_, err = d.Dial("tcp", dsts[0])
		if diff := cmp.Diff([]netip.Addr{b, a}, tried(err), netipCmp); diff != "" {
			t.Errorf("after the free, first dial: Tried (-want +got):\n%s", diff)
		}
		c, err = d.Dial("tcp", dsts[0])
		if err != nil {
			t.Fatalf("after the free, second dial: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		if got := localAddr(c).Addr(); got != a {
			t.Errorf("connected from %v, want %v", got, a)
		}
		// The success cleared a's mark: the next dial asks about a (not
		// known full) first, then b.
		_, err = d.Dial("tcp", dsts[0])
		if diff := cmp.Diff([]netip.Addr{a, b}, tried(err), netipCmp); diff != "" {
			t.Errorf("after the success: Tried (-want +got):\n%s", diff)
		}
	})
}

// TestPoolFirstDialAfterFree: a single-source pool whose ports toward the
// destination are all in use fails each dial with one kernel attempt, and
// the first dial after a port is freed connects (the memory of full sources
// never turns a dial away).
func TestPoolFirstDialAfterFree(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		d := &safedial.Dialer{Sources: mustAddrs("127.0.0.1")}
		conns, err := fillConns(t, d.DialContext, "tcp", []string{dst}, 100)
		if len(conns) != 4 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Fatalf("%d connections, then %v; want 4, then exhaustion", len(conns), err)
		}
		for range 3 {
			if _, err := d.Dial("tcp", dst); !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("full: %v, want exhaustion", err)
			}
		}
		for round := range 3 {
			conns[round].(*net.TCPConn).SetLinger(0)
			conns[round].Close()
			c, err := d.Dial("tcp", dst)
			if err != nil {
				t.Fatalf("round %d: first dial after a port was freed: %v", round, err)
			}
			t.Cleanup(func() { c.Close() })
			if _, err := d.Dial("tcp", dst); !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("round %d: full again: %v, want exhaustion", round, err)
			}
		}
		// 4 connections and 1 + 3 failed dials before the rounds, then 3 x (one success,
		// one failure): every dial one kernel attempt, none skipped.
		want := safedial.Stats{Dials: 14, Succeeded: 7, Exhausted: 7, Sources: []safedial.SourceStats{
			{Addr: netip.MustParseAddr("127.0.0.1"), Attempts: 14, Succeeded: 7, Exhausted: 7}}}
		if diff := cmp.Diff(want, d.Stats(), netipCmp); diff != "" {
			t.Errorf("Stats (-want +got):\n%s", diff)
		}
	})
}

// TestPoolMemoryBounded: a pool dialing far more destinations than its memory
// holds stays correct: every exhaustion is found by the kernel, one attempt
// per dial, and every destination that has ports left connects.
func TestPoolMemoryBounded(t *testing.T) {
	inNamespace(t, 40000, 40001, func(t *testing.T) {
		var hosts []string
		for i := range 100 {
			hosts = append(hosts, netip.AddrFrom4([4]byte{127, 0, 2, byte(i + 1)}).String())
		}
		dsts := servers(t, "tcp", hosts, []int{8080})
		d := &safedial.Dialer{Sources: mustAddrs("127.0.0.1")}
		// 2 ports x 100 destinations, then one exhausted dial each, twice.
		for round := range 4 {
			for _, dst := range dsts {
				c, err := d.DialContext(context.Background(), "tcp", dst)
				switch {
				case round < 2 && err != nil:
					t.Fatalf("round %d, %s: %v", round, dst, err)
				case round < 2:
					t.Cleanup(func() { c.Close() })
				case !errors.Is(err, safedial.ErrEphemeralExhausted):
					t.Fatalf("round %d, %s: %v, want exhaustion", round, dst, err)
				}
			}
		}
		want := safedial.SourceStats{Addr: netip.MustParseAddr("127.0.0.1"), Attempts: 400, Succeeded: 200, Exhausted: 200}
		if diff := cmp.Diff(want, d.Stats().Sources[0], netipCmp); diff != "" {
			t.Errorf("Stats (-want +got):\n%s", diff)
		}
	})
}
