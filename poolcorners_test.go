//go:build linux

package safedial_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// The corners of a pool where it must behave as net.Dialer does (or better),
// one test per case found when the pool was probed: protocols, context,
// families, DialTCP, hooks, error sources, panics, typed nils, Stats and
// sources that are not local.

// TestPoolProtocols: TCP and UDP ports are separate spaces. With every
// source's UDP ports in use, a TCP dial toward the same host and port
// connects (also from a Happy Eyeballs racer), and the reverse.
func TestPoolProtocols(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		needIPv6(t)
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8053})[0]
		res := fakeResolver(map[string][]netip.Addr{"he.test.": mustAddrs("::1", "127.0.1.1")}) // nothing on [::1]:8053
		d := &safedial.Dialer{Sources: mustAddrs("127.0.0.1", "127.0.0.2", "::1"), Base: net.Dialer{Resolver: res}}
		t.Run("UDP full, then TCP", func(t *testing.T) {
			n, err := fill(t, d.DialContext, "udp", []string{dst}, 100)
			if n != 8 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("%d UDP sockets, then %v; want 8, then exhaustion", n, err)
			}
			for _, address := range []string{dst, "he.test:8053"} {
				c, err := d.Dial("tcp", address)
				if err != nil {
					t.Fatalf("TCP to %s with the UDP ports full: %v", address, err)
				}
				c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT: the next subtest fills the TCP ports
				c.Close()
			}
		})
		t.Run("TCP full, then UDP", func(t *testing.T) {
			n, err := fill(t, d.DialContext, "tcp", []string{dst}, 100)
			if n != 8 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("%d TCP connections, then %v; want 8, then exhaustion", n, err)
			}
			c, err := d.Dial("udp", dst)
			if err != nil {
				t.Fatalf("UDP with the TCP ports full: %v", err)
			}
			c.Close()
		})
	})
}

// TestPoolContextBetweenSteps: the context is checked before every failover
// step. A dial cancelled (or past its deadline) during its second step stops
// there, with net.Dialer's error for an ended context from that source.
func TestPoolContextBetweenSteps(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		stopClock(t) // marks of full sources last for the whole test
		dst, accepted := acceptingServer(t, "127.0.1.1:8080")
		var srcs []netip.Addr
		for i := range 8 {
			srcs = append(srcs, netip.AddrFrom4([4]byte{127, 0, 0, byte(i + 1)}))
		}
		if n, _ := fill(t, (&safedial.Dialer{Sources: srcs}).DialContext, "tcp", []string{dst}, 100); n != 32 {
			t.Fatalf("filled %d, want 32", n)
		}
		receive(t, accepted, 32) // before the descriptors are counted
		for _, tc := range []struct {
			name     string
			deadline bool
			is       error
		}{
			{"cancel", false, context.Canceled},
			{"deadline", true, context.DeadlineExceeded},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithCancel(context.Background())
				if tc.deadline {
					ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
				}
				defer cancel()
				calls := 0
				d := &safedial.Dialer{Sources: srcs, Base: net.Dialer{Control: func(string, string, syscall.RawConn) error {
					if calls++; calls == 2 {
						if tc.deadline {
							<-ctx.Done() // the deadline passes during the second step
						} else {
							cancel()
						}
					}
					return nil
				}}}
				fds := fdCount(t)
				_, err := d.DialContext(ctx, "tcp", dst)
				if got := fdCount(t); got != fds {
					t.Errorf("open fds: %d before the dial, %d after", fds, got)
				}
				if calls != 2 {
					t.Errorf("the hook ran %d times, want 2 (no step after the context ended)", calls)
				}
				if st := d.Stats(); st.Failovers != 1 {
					t.Errorf("Stats().Failovers = %d, want 1 (to the second source; none after the context ended)", st.Failovers)
				}
				if !errors.Is(err, tc.is) {
					t.Errorf("err = %v, want it to match %v", err, tc.is)
				}
				var ne net.Error
				if !errors.As(err, &ne) || ne.Timeout() != tc.deadline {
					t.Errorf("err = %v: Timeout() should be %v", err, tc.deadline)
				}
				// net.Dialer from the second source, with the context ended.
				ended, cancelEnded := context.WithCancel(context.Background())
				if tc.deadline {
					ended, cancelEnded = context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
				}
				cancelEnded()
				_, want := (&net.Dialer{LocalAddr: tcpAddr("127.0.0.2:0")}).DialContext(ended, "tcp", dst)
				if err == nil || err.Error() != want.Error() {
					t.Errorf("message:\n got %v\nwant %v", err, want)
				}
				if diff := cmp.Diff(chain(want), chain(err)); diff != "" {
					t.Errorf("error chain (-net.Dialer +safedial):\n%s", diff)
				}
			})
		}
	})
}

// TestPoolOneFamily: a pool whose sources are all IPv4 dials only the IPv4
// addresses of a name, as net.Dialer{LocalAddr: an IPv4 address} does, and
// returns the same error (the caller's network in it), with or without
// Happy Eyeballs.
func TestPoolOneFamily(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		unresponsive(t, "127.0.0.5:8080")
		servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})
		res := fakeResolver(map[string][]netip.Addr{
			"refused.test.": mustAddrs("::1", "127.0.0.2"),
			"silent.test.":  mustAddrs("::1", "127.0.0.5"),
			"v6.test.":      mustAddrs("::1"),
		})
		heOff := func(nd *net.Dialer) { nd.FallbackDelay = -1 }
		none := func(*net.Dialer) {}
		for _, sc := range []scenario{
			{name: "refused", network: "tcp", address: "refused.test:9", base: none},
			{name: "refused, Happy Eyeballs off", network: "tcp", address: "refused.test:9", base: heOff},
			{name: "connects", network: "tcp", address: "refused.test:8080", base: none},
			{name: "unresponsive", network: "tcp", address: "silent.test:8080", base: func(nd *net.Dialer) { nd.Timeout = 300 * time.Millisecond }},
			{name: "udp", network: "udp", address: "refused.test:53", base: none},
			{name: "name of the other family only", network: "tcp", address: "v6.test:8080", base: none},
			{name: "no such name", network: "tcp", address: "nx.test:8080", base: none},
		} {
			t.Run(sc.name, func(t *testing.T) {
				ref := net.Dialer{Resolver: res, LocalAddr: tcpAddr("127.0.0.1:0")}
				if sc.network == "udp" {
					ref.LocalAddr = net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0"))
				}
				sc.base(&ref)
				pool := &safedial.Dialer{Sources: mustAddrs("127.0.0.1"), Base: net.Dialer{Resolver: res}}
				sc.base(&pool.Base)
				// The trace names the network net.Dialer dialed: tcp4 for
				// the pool (see Dialer.Sources).
				want, got := runPair(ref.DialContext, pool.DialContext, sc, func(r *result) { r.Trace = nil })
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("safedial differs from net.Dialer{LocalAddr: 127.0.0.1} (-net +safedial):\n%s", diff)
				}
			})
		}
	})
}

// TestDialTCPZeroLaddr: DialTCP with a zero laddr uses no local address,
// whatever Base.LocalAddr holds, as net.Dialer.DialTCP does.
func TestDialTCPZeroLaddr(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		raddr := netip.MustParseAddrPort(servers(t, "tcp", []string{"127.0.0.1"}, []int{8080})[0])
		for _, la := range []net.Addr{tcpAddr("127.0.0.3:0"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 3)}, tcpAddr("[::1]:0")} {
			t.Run(la.Network()+" "+la.String(), func(t *testing.T) {
				want, err := (&net.Dialer{LocalAddr: la}).DialTCP(context.Background(), "tcp", netip.AddrPort{}, raddr)
				if err != nil {
					t.Fatalf("net.Dialer: %v", err)
				}
				defer want.Close()
				got, err := (&safedial.Dialer{Base: net.Dialer{LocalAddr: la}}).DialTCP(context.Background(), "tcp", netip.AddrPort{}, raddr)
				if err != nil {
					t.Fatalf("safedial: %v", err)
				}
				defer got.Close()
				if w, g := localAddr(want).Addr(), localAddr(got).Addr(); w != g {
					t.Errorf("source %v, want %v (net.Dialer's)", g, w)
				}
			})
		}
	})
}

// TestPoolHookRawConn: every call of the user's hook, on failover too, gets
// a RawConn over the descriptor the connection keeps: one kept after the
// dial still reaches the connection's socket.
func TestPoolHookRawConn(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		a, b := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
		if n, _ := fill(t, (&net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0"), Control: bindNoPort}).DialContext, "tcp", []string{dst}, 100); n != 4 {
			t.Fatalf("filled %d from %v, want 4", n, a)
		}
		var saved []syscall.RawConn
		d := &safedial.Dialer{Sources: []netip.Addr{a, b}, Base: net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
			saved = append(saved, c)
			return nil
		}}}
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// New sockets take any descriptor numbers freed during the dial.
		for range 4 {
			ln, err := net.Listen("tcp", "127.0.0.9:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
		}
		if len(saved) != 2 {
			t.Fatalf("the hook ran %d times, want 2 (a, then b)", len(saved))
		}
		for i, rc := range saved {
			var (
				sa   unix.Sockaddr
				gerr error
			)
			if err := rc.Control(func(fd uintptr) { sa, gerr = unix.Getsockname(int(fd)) }); err != nil || gerr != nil {
				t.Errorf("hook call %d: RawConn.Control: %v, getsockname: %v", i, err, gerr)
				continue
			}
			in4, _ := sa.(*unix.SockaddrInet4)
			if in4 == nil || netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)) != localAddr(c) {
				t.Errorf("hook call %d: its RawConn reaches %+v, want the connection's socket %v", i, sa, localAddr(c))
			}
		}
	})
}

// bindNoPort is a net.Dialer hook that sets IP_BIND_ADDRESS_NO_PORT, so that
// a bound net.Dialer fills a source toward one destination only.
func bindNoPort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// TestPoolErrorSource: errors through a pool name the source used, as
// net.Dialer{LocalAddr: that source} does: same message, same chain, same
// timing class.
func TestPoolErrorSource(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		servers(t, "tcp", []string{"127.0.0.1"}, []int{8080})
		unresponsive(t, "127.0.0.5:8080")
		none := func(*net.Dialer) {}
		timeout := func(nd *net.Dialer) { nd.Timeout = 300 * time.Millisecond }
		ctxTimeout := func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 300*time.Millisecond)
		}
		cancelAfter := func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}
		canceled := func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}
		for _, sc := range []scenario{
			{name: "refused", network: "tcp", address: "127.0.0.1:9", base: none},
			{name: "unreachable", network: "tcp", address: "10.0.0.1:80", base: none},
			{name: "timeout", network: "tcp", address: "127.0.0.5:8080", base: timeout},
			{name: "deadline", network: "tcp", address: "127.0.0.5:8080", base: none, ctx: ctxTimeout},
			{name: "cancel", network: "tcp", address: "127.0.0.5:8080", base: none, ctx: cancelAfter},
			{name: "canceled before", network: "tcp", address: "127.0.0.1:8080", base: none, ctx: canceled},
		} {
			t.Run(sc.name, func(t *testing.T) {
				t.Parallel()
				ref := net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}
				sc.base(&ref)
				pool := &safedial.Dialer{Sources: mustAddrs("127.0.0.1")}
				sc.base(&pool.Base)
				// httptrace's ConnectDone gets net.Dialer's error before
				// safedial adds the source: compare the traces without it.
				want, got := runPair(ref.DialContext, pool.DialContext, sc, func(r *result) {
					for i, e := range r.Trace {
						r.Trace[i] = strings.Replace(e, "dial tcp 127.0.0.1:0->", "dial tcp ", 1)
					}
				})
				if !strings.HasPrefix(want.Outcome, "dial tcp 127.0.0.1:0->") {
					t.Fatalf("net.Dialer: %s, want an error from 127.0.0.1:0", want.Outcome)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("safedial differs from net.Dialer{LocalAddr: 127.0.0.1} (-net +safedial):\n%s", diff)
				}
			})
		}
		t.Run("two sources", func(t *testing.T) {
			srcs := mustAddrs("127.0.0.1", "127.0.0.2")
			d := &safedial.Dialer{Sources: srcs}
			for i := range 2 {
				_, err := d.Dial("tcp", "127.0.0.1:9")
				_, want := (&net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(srcs[i], 0))}).Dial("tcp", "127.0.0.1:9")
				if err == nil || err.Error() != want.Error() {
					t.Errorf("dial %d (from %v, in turn): %v, want %v", i, srcs[i], err, want)
				}
			}
		})
		// Errors the attempt returns at once, from the hook: connect's
		// ENETUNREACH, and the user's hook's own error.
		t.Run("two sources, errors in the hook", func(t *testing.T) {
			srcs := mustAddrs("127.0.0.1", "127.0.0.2")
			hookErr := errors.New("hook says no")
			no := func(string, string, syscall.RawConn) error { return hookErr }
			for _, tc := range []struct {
				name, address string
				hook          func(string, string, syscall.RawConn) error
			}{
				{"unreachable", "10.0.0.1:80", nil},
				{"hook error", "127.0.0.1:8080", no},
			} {
				d := &safedial.Dialer{Sources: srcs, Base: net.Dialer{Control: tc.hook}}
				for i := range 2 {
					_, err := d.Dial("tcp", tc.address)
					_, want := (&net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(srcs[i], 0)), Control: tc.hook}).Dial("tcp", tc.address)
					if err == nil || err.Error() != want.Error() {
						t.Errorf("%s, dial %d (from %v, in turn): %v, want %v", tc.name, i, srcs[i], err, want)
					}
					if diff := cmp.Diff(chain(want), chain(err)); diff != "" {
						t.Errorf("%s, dial %d: error chain (-net.Dialer +safedial):\n%s", tc.name, i, diff)
					}
				}
			}
		})
	})
}

// TestPoolHookPanic: a user hook that panics on a failover socket leaks no
// more than net.Dialer does with the same hook (net.Dialer's own socket).
func TestPoolHookPanic(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		dst, accepted := acceptingServer(t, "127.0.1.1:8080")
		if n, _ := fill(t, (&net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0"), Control: bindNoPort}).DialContext, "tcp", []string{dst}, 100); n != 4 {
			t.Fatalf("filled %d, want 4", n)
		}
		receive(t, accepted, 4)
		leak := func(dial func() (net.Conn, error)) int {
			if c, err := (&net.Dialer{}).Dial("tcp", dst); err == nil { // warm up: the poller's descriptors
				c.Close()
				receive(t, accepted, 1)
			}
			before := fdCount(t)
			func() {
				defer func() {
					if r := recover(); r != "hook panics" {
						t.Errorf("recovered %v, want the hook's panic", r)
					}
				}()
				dial()
			}()
			return fdCount(t) - before
		}
		nd := &net.Dialer{LocalAddr: tcpAddr("127.0.0.2:0"), Control: func(string, string, syscall.RawConn) error {
			panic("hook panics")
		}}
		netLeak := leak(func() (net.Conn, error) { return nd.Dial("tcp", dst) })
		calls := 0
		d := &safedial.Dialer{Sources: mustAddrs("127.0.0.1", "127.0.0.2"), Base: net.Dialer{Control: func(string, string, syscall.RawConn) error {
			if calls++; calls == 2 {
				panic("hook panics") // on the failover socket
			}
			return nil
		}}}
		poolLeak := leak(func() (net.Conn, error) { return d.Dial("tcp", dst) })
		if calls != 2 || poolLeak != netLeak {
			t.Errorf("pool: %d descriptors left after a panic in hook call %d; net.Dialer: %d", poolLeak, calls, netLeak)
		}
	})
}

// TestPoolLocalAddrTypedNil: a typed nil Base.LocalAddr is no address, as
// for net.Dialer, not a conflict with Sources.
func TestPoolLocalAddrTypedNil(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		d := &safedial.Dialer{Sources: mustAddrs("127.0.0.3"), Base: net.Dialer{LocalAddr: (*net.TCPAddr)(nil)}}
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := localAddr(c).Addr(); got != netip.MustParseAddr("127.0.0.3") {
			t.Errorf("source %v, want 127.0.0.3", got)
		}
	})
}

// TestPoolStatsAddr: Stats shows each source as configured (an IPv4-mapped
// address stays mapped) and counts a success on the entry that was used when
// an address appears twice.
func TestPoolStatsAddr(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		stopClock(t) // marks of full sources last for the whole test
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		mapped := netip.MustParseAddr("::ffff:127.0.0.3")
		d := &safedial.Dialer{Sources: []netip.Addr{mapped}}
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if got := localAddr(c).Addr().Unmap(); got != mapped.Unmap() {
			t.Errorf("source %v, want %v", got, mapped.Unmap())
		}
		want := []safedial.SourceStats{{Addr: mapped, Attempts: 1, Succeeded: 1}}
		if diff := cmp.Diff(want, d.Stats().Sources, netipCmp); diff != "" {
			t.Errorf("Stats().Sources (-want +got):\n%s", diff)
		}

		a := netip.MustParseAddr("127.0.0.1")
		d = &safedial.Dialer{Sources: []netip.Addr{a, a}}
		if err := d.SetSources(d.Sources); err != nil {
			t.Fatalf("SetSources with a duplicate: %v", err)
		}
		if n, err := fill(t, d.DialContext, "tcp", []string{dst}, 4); n != 4 {
			t.Fatalf("%d connections (%v), want 4", n, err)
		}
		want = []safedial.SourceStats{{Addr: a, Attempts: 2, Succeeded: 2}, {Addr: a, Attempts: 2, Succeeded: 2}}
		if diff := cmp.Diff(want, d.Stats().Sources, netipCmp); diff != "" {
			t.Errorf("Stats().Sources with a duplicate (-want +got):\n%s", diff)
		}
	})
}

// TestSetSourcesNotLocal: SetSources refuses a source that is not an
// address of this host, naming it, and leaves the pool as it was.
func TestSetSourcesNotLocal(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		good := mustAddrs("127.0.0.1")
		d := &safedial.Dialer{}
		if err := d.SetSources(good); err != nil {
			t.Fatal(err)
		}
		for _, srcs := range [][]netip.Addr{mustAddrs("192.0.2.10"), mustAddrs("127.0.0.1", "192.0.2.10")} {
			err := d.SetSources(srcs)
			if !errors.Is(err, safedial.ErrSourceNotLocal) || errors.Is(err, safedial.ErrInvalidConfig) {
				t.Errorf("SetSources(%v) = %v, want ErrSourceNotLocal", srcs, err)
			}
			if want := "source address 192.0.2.10 is not an address of this host (bind: cannot assign requested address)"; err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("message %v, want it to start with %q", err, want)
			}
			if diff := cmp.Diff(good, d.Sources, netipCmp); diff != "" {
				t.Errorf("Sources after a refused SetSources (-want +got):\n%s", diff)
			}
		}
	})
}

// TestPoolSourceGone: a source that is not (or no longer) an address of this
// host is treated like a full one: the dial fails over, later dials try it
// last, and Stats counts it as NotLocal.
func TestPoolSourceGone(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		stopClock(t) // marks of full sources last for the whole test
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		good, gone := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.1")
		d := &safedial.Dialer{Sources: []netip.Addr{good, gone}} // assigned, not checked: as if removed since
		for i := range 4 {
			c, err := d.Dial("tcp", dst)
			if err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
			c.Close()
		}
		// Dial 1 starts at the gone source, fails over; dials 2 and 3 try
		// the good one first.
		want := safedial.Stats{Dials: 4, Succeeded: 4, Failovers: 1, Sources: []safedial.SourceStats{
			{Addr: good, Attempts: 4, Succeeded: 4},
			{Addr: gone, Attempts: 1, NotLocal: 1},
		}}
		st := d.Stats()
		if diff := cmp.Diff(want, st, netipCmp); diff != "" {
			t.Errorf("Stats (-want +got):\n%s", diff)
		}
		b, err := json.Marshal(st.Sources[1])
		if err != nil || !strings.Contains(string(b), `"not_local":1`) {
			t.Errorf("JSON %s (%v), want not_local", b, err)
		}
	})
}

// TestPoolSourceRemoved: an address removed from the host while it is a
// source (ip addr del) fails over to the others; SetSources, before, took
// it, and refuses it after.
func TestPoolSourceRemoved(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		stopClock(t) // marks of full sources last for the whole test
		ipCmd := ipCommand(t)
		ipCmd("addr", "add", "10.9.9.9/32", "dev", "lo")
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		extra, lo := netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("127.0.0.1")
		d := &safedial.Dialer{}
		if err := d.SetSources([]netip.Addr{extra, lo}); err != nil {
			t.Fatalf("SetSources with 10.9.9.9 on lo: %v", err)
		}
		dial := func() netip.Addr {
			t.Helper()
			c, err := d.Dial("tcp", dst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			return localAddr(c).Addr()
		}
		if a, b := dial(), dial(); a != extra || b != lo {
			t.Fatalf("sources %v, %v; want %v, %v in turn", a, b, extra, lo)
		}
		ipCmd("addr", "del", "10.9.9.9/32", "dev", "lo")
		for i := range 4 {
			if got := dial(); got != lo {
				t.Errorf("dial %d after the removal: from %v, want %v", i, got, lo)
			}
		}
		st := d.Stats().Sources
		if st[0].NotLocal != 1 || st[0].Succeeded != 1 || st[1].Succeeded != 5 {
			t.Errorf("Stats().Sources = %+v; want the removed source not local once (then tried last), the other 5 successes", st)
		}
		if err := d.SetSources([]netip.Addr{extra, lo}); !errors.Is(err, safedial.ErrSourceNotLocal) {
			t.Errorf("SetSources after the removal: %v, want ErrSourceNotLocal", err)
		}
	})
}

// runPair runs sc through ref and dial at once, as the conformance suite
// does, and normalises both results with norm: outcomes and chains must
// match at the first run; a timing class
// that differs gets one more run, so that a stalled machine does not fail
// the test while a dialer that is really slower fails it both times.
func runPair(ref, dial func(context.Context, string, string) (net.Conn, error), sc scenario, norm func(*result)) (want, got result) {
	for attempt := 1; ; attempt++ {
		done := make(chan struct{})
		go func() {
			defer close(done)
			want = run(ref, sc)
		}()
		got = run(dial, sc)
		<-done
		norm(&want)
		norm(&got)
		if want.Class == got.Class || attempt == 2 {
			return want, got
		}
		a, b := want, got
		a.Class, b.Class = "", ""
		if !cmp.Equal(a, b) {
			return want, got
		}
	}
}

// TestPoolFailoverSocketDefaults: the fresh socket of a failover step has
// the defaults net.Dialer gave its own (SO_BROADCAST on every UDP socket,
// IPv6 ones too; IPV6_V6ONLY), so the connection's socket is the one
// net.Dialer{LocalAddr: that source} makes.
func TestPoolFailoverSocketDefaults(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		needIPv6(t)
		ip, err := exec.LookPath("ip")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("iproute2's ip is needed to add an address (CI=true, so this fails instead of skipping): %v", err)
			}
			t.Skipf("iproute2's ip is needed to add an address: %v", err)
		}
		if out, err := exec.Command(ip, "-6", "addr", "add", "fd00::2/128", "dev", "lo", "nodad").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add: %v: %s", err, out)
		}
		dst := "[::1]:9999"
		first := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[::1]:0"))
		if n, _ := fill(t, (&net.Dialer{LocalAddr: first, Control: bindNoPort}).DialContext, "udp", []string{dst}, 100); n != 4 {
			t.Fatalf("filled %d UDP ports of ::1, want 4", n)
		}
		type defaults struct{ Broadcast, V6Only int }
		read := func(c net.Conn) (d defaults) {
			t.Helper()
			rc, err := c.(syscall.Conn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var err1, err2 error
			if err := rc.Control(func(fd uintptr) {
				d.Broadcast, err1 = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST)
				d.V6Only, err2 = unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
			}); err != nil || err1 != nil || err2 != nil {
				t.Fatalf("getsockopt: %v, %v, %v", err, err1, err2)
			}
			return d
		}
		ref, err := (&net.Dialer{LocalAddr: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[fd00::2]:0"))}).Dial("udp", dst)
		if err != nil {
			t.Fatal(err)
		}
		defer ref.Close()
		d := &safedial.Dialer{Sources: mustAddrs("::1", "fd00::2")}
		c, err := d.Dial("udp", dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := c.LocalAddr().(*net.UDPAddr).AddrPort().Addr(); got != netip.MustParseAddr("fd00::2") {
			t.Fatalf("connected from %v, want fd00::2 (after a failover from ::1)", got)
		}
		if diff := cmp.Diff(read(ref), read(c)); diff != "" {
			t.Errorf("the failover socket's defaults (-net.Dialer{LocalAddr: fd00::2} +safedial):\n%s", diff)
		}
	})
}

// TestOnExhaustedScope: what OnExhausted sees, as its doc says. A name with
// two addresses, the source full toward the first: net.Dialer moves on to
// the second and connects. Without Sources the first exhaustion stays
// inside net.Dialer; with Sources the hook saw it, and reports it.
func TestOnExhaustedScope(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		servers(t, "tcp", []string{"127.0.1.1", "127.0.1.2"}, []int{8080})
		res := fakeResolver(map[string][]netip.Addr{"two.test.": mustAddrs("127.0.1.1", "127.0.1.2")})
		if n, _ := fill(t, (&net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0"), Control: bindNoPort}).DialContext, "tcp", []string{"127.0.1.1:8080"}, 100); n != 4 {
			t.Fatalf("filled %d, want 4", n)
		}
		for _, tc := range []struct {
			name string
			d    *safedial.Dialer
			want []string
		}{
			{"Base.LocalAddr", &safedial.Dialer{Base: net.Dialer{Resolver: res, LocalAddr: tcpAddr("127.0.0.1:0")}}, nil},
			{"Sources", &safedial.Dialer{Base: net.Dialer{Resolver: res}, Sources: mustAddrs("127.0.0.1")}, []string{"127.0.0.1->127.0.1.1:8080"}},
		} {
			var got []string
			tc.d.OnExhausted = func(e *safedial.ExhaustedError) { got = append(got, e.Source.String()+"->"+e.Dest.String()) }
			c, err := tc.d.Dial("tcp", "two.test:8080")
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			c.Close()
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("%s: OnExhausted calls (-want +got):\n%s", tc.name, diff)
			}
		}
	})
}

// TestPoolLinkLocalOtherLink: a pool of fe80::1 on two links dialing
// fe80::2 on one of them uses the source of that link only: the kernel
// refuses the other's connect with EINVAL (as it refuses net.Dialer's,
// checked here), which every second dial returned before. A pool whose
// only IPv6 sources are on other links is a configuration error naming the
// link (net.Dialer{LocalAddr} gets EINVAL: a deliberate difference, clearer).
func TestPoolLinkLocalOtherLink(t *testing.T) {
	inNamespace(t, 40000, 40015, func(t *testing.T) {
		twoLinks(t)
		onA, onB := netip.MustParseAddr("fe80::1%a0"), netip.MustParseAddr("fe80::1%b0")
		const dst = "[fe80::2%a0]:53"
		if c, err := (&net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("fe80::1"), Zone: "b0"}}).Dial("udp", dst); !errors.Is(err, syscall.EINVAL) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("net.Dialer from fe80::1%%b0 to %s: %v, want EINVAL", dst, err)
		}
		for _, share := range []bool{false, true} {
			d := &safedial.Dialer{Sources: []netip.Addr{onA, onB}, ShareUDPPorts: share}
			for i := range 10 {
				c, err := d.Dial("udp", dst)
				if err != nil {
					t.Fatalf("ShareUDPPorts %v, dial %d: %v", share, i, err)
				}
				if la := c.LocalAddr().(*net.UDPAddr); la.Zone != "a0" {
					t.Errorf("ShareUDPPorts %v, dial %d: from %v, want fe80::1%%a0", share, i, la)
				}
				c.Close()
			}
			if st := d.Stats().Sources; st[0].Attempts != 10 || st[1].Attempts != 0 {
				t.Errorf("ShareUDPPorts %v: Stats().Sources %+v, want 10 attempts from fe80::1%%a0, none from fe80::1%%b0", share, st)
			}
		}
		// Headroom names the sources the dials use: the link's only.
		hs, err := (&safedial.Dialer{Sources: []netip.Addr{onA, onB}}).Headroom(context.Background(), "udp", dst)
		if err != nil || len(hs) != 1 || hs[0].Source != onA {
			t.Errorf("Headroom of the pool toward %s: %+v, %v; want one row, from %v", dst, hs, err, onA)
		}
		d := &safedial.Dialer{Sources: []netip.Addr{onB}}
		_, err = d.Dial("udp", dst)
		if !errors.Is(err, safedial.ErrInvalidConfig) || !strings.Contains(err.Error(), "add a source of link a0") {
			t.Errorf("a pool of fe80::1%%b0 only, to %s: %v; want ErrInvalidConfig naming link a0", dst, err)
		}
	})
}

// TestPoolLinkLocalNoZone: a link-local destination without a zone (or with
// one that names no interface) is dialed on the link of the socket's bound
// device, which the kernel shows side by side: net.Dialer from fe80::1%b0
// connects on b0, from a global source it gets EINVAL. A pool then uses its
// link-local sources when they are on one link (every second dial from the
// global source failed with EINVAL), and refuses when they are on several
// (each dial went out on another link, half of them to no peer): the error
// asks for the zone. Headroom reports the same sources, or the same error.
func TestPoolLinkLocalNoZone(t *testing.T) {
	inNamespace(t, 40000, 40015, func(t *testing.T) {
		twoLinks(t)
		ipCommand(t)("-6", "addr", "add", "2001:db8::1/128", "dev", "lo", "nodad")
		waitLocal(t, "2001:db8::1")
		global, onA, onB := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("fe80::1%a0"), netip.MustParseAddr("fe80::1%b0")
		const dst = "[fe80::2]:53"
		if c, err := (&net.Dialer{LocalAddr: &net.UDPAddr{IP: global.AsSlice()}}).Dial("udp", dst); !errors.Is(err, syscall.EINVAL) {
			if c != nil {
				c.Close()
			}
			t.Fatalf("net.Dialer from %v to %s: %v, want EINVAL", global, dst, err)
		}
		c, err := (&net.Dialer{LocalAddr: &net.UDPAddr{IP: onB.AsSlice(), Zone: "b0"}}).Dial("udp", dst)
		if err != nil {
			t.Fatalf("net.Dialer from %v to %s: %v", onB, dst, err)
		}
		c.Close()

		d := &safedial.Dialer{Sources: []netip.Addr{global, onB}}
		for i := range 10 {
			c, err := d.Dial("udp", dst)
			if err != nil {
				t.Fatalf("pool {%v, %v}, dial %d to %s: %v", global, onB, i, dst, err)
			}
			if la := c.LocalAddr().(*net.UDPAddr); la.Zone != "b0" {
				t.Errorf("dial %d: from %v, want %v", i, la, onB)
			}
			c.Close()
		}
		if st := d.Stats().Sources; st[0].Attempts != 0 || st[1].Attempts != 10 {
			t.Errorf("Stats().Sources %+v, want 10 attempts from %v, none from %v", st, onB, global)
		}
		if hs, err := d.Headroom(context.Background(), "udp", dst); err != nil || len(hs) != 1 || hs[0].Source != onB {
			t.Errorf("Headroom of {%v, %v} toward %s: %+v, %v; want one row, from %v", global, onB, dst, hs, err, onB)
		}

		two := &safedial.Dialer{Sources: []netip.Addr{onA, onB}}
		for _, dst := range []string{"[fe80::2]:53", "[fe80::2%nosuch]:53"} {
			for i := range 2 {
				c, err := two.Dial("udp", dst)
				if err == nil {
					t.Errorf("pool {%v, %v}, dial %d to %s: from %v, want ErrInvalidConfig", onA, onB, i, dst, c.LocalAddr())
					c.Close()
				} else if !errors.Is(err, safedial.ErrInvalidConfig) || !strings.Contains(err.Error(), "name the link in the address") {
					t.Errorf("pool {%v, %v}, dial %d to %s: %v, want ErrInvalidConfig asking for the zone", onA, onB, i, dst, err)
				}
			}
			if _, err := two.Headroom(context.Background(), "udp", dst); !errors.Is(err, safedial.ErrInvalidConfig) {
				t.Errorf("Headroom of {%v, %v} toward %s: %v, want ErrInvalidConfig", onA, onB, dst, err)
			}
			// A pool with no link-local source: the same error, not the
			// kernel's EINVAL from a first attempt.
			if _, err := (&safedial.Dialer{Sources: []netip.Addr{global}}).Dial("udp", dst); !errors.Is(err, safedial.ErrInvalidConfig) {
				t.Errorf("pool {%v} to %s: %v, want ErrInvalidConfig asking for the zone", global, dst, err)
			}
		}
	})
}

// TestPoolLinkLocalName: a name whose address has a zone (a hosts-file line
// "fe80::2%a0 ll.test", the only place a zone comes from) keeps it: the
// pool's own lookup used LookupNetIP, which drops zones, so the pool dialed
// fe80::2 without a link (from each link in turn, or refused it) where
// net.Dialer dials fe80::2%a0. The hosts file is mounted over /etc/hosts in
// a mount namespace of a process re-executed for it.
func TestPoolLinkLocalName(t *testing.T) {
	inNamespace(t, 40000, 40015, func(t *testing.T) {
		const mounted = "SAFEDIAL_TEST_HOSTS_MOUNTED"
		if os.Getenv(mounted) == "" {
			twoLinks(t)
			unshare, err := exec.LookPath("unshare")
			if err != nil {
				if os.Getenv("CI") == "true" {
					t.Fatalf("util-linux's unshare is needed to mount a hosts file (CI=true, so this fails instead of skipping): %v", err)
				}
				t.Skipf("util-linux's unshare is needed to mount a hosts file: %v", err)
			}
			hosts := filepath.Join(t.TempDir(), "hosts")
			if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\nfe80::2%a0 ll.test\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`,
				hosts, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
			cmd.Env = append(os.Environ(), mounted+"=1")
			out, err := cmd.CombinedOutput()
			t.Logf("re-executed with %s mounted over /etc/hosts:\n%s", hosts, out)
			if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()+" ") {
				t.Fatalf("failed with the hosts file mounted (exit: %v)", err)
			}
			return
		}
		const dst = "ll.test:53"
		c, err := net.Dial("udp", dst)
		if err != nil {
			t.Fatalf("net.Dial to %s: %v", dst, err)
		}
		if ra := c.RemoteAddr().(*net.UDPAddr); ra.Zone != "a0" {
			t.Fatalf("net.Dial to %s reached %v, want fe80::2%%a0 (is the hosts file mounted?)", dst, ra)
		}
		c.Close()
		onA, onB := netip.MustParseAddr("fe80::1%a0"), netip.MustParseAddr("fe80::1%b0")
		d := &safedial.Dialer{Sources: []netip.Addr{onA, onB}}
		for i := range 10 {
			c, err := d.Dial("udp", dst)
			if err != nil {
				t.Fatalf("dial %d to %s: %v", i, dst, err)
			}
			if la, ra := c.LocalAddr().(*net.UDPAddr), c.RemoteAddr().(*net.UDPAddr); la.Zone != "a0" || ra.Zone != "a0" {
				t.Errorf("dial %d to %s: %v -> %v, want fe80::1%%a0 -> fe80::2%%a0", i, dst, la, ra)
			}
			c.Close()
		}
		if st := d.Stats().Sources; st[0].Attempts != 10 || st[1].Attempts != 0 {
			t.Errorf("Stats().Sources %+v, want 10 attempts from %v, none from %v", st, onA, onB)
		}
		hs, err := d.Headroom(context.Background(), "udp", dst)
		if want := netip.MustParseAddrPort("[fe80::2%a0]:53"); err != nil || len(hs) != 1 || hs[0].Source != onA || hs[0].Dest != want {
			t.Errorf("Headroom toward %s: %+v, %v; want one row, %v -> %v", dst, hs, err, onA, want)
		}
	})
}
