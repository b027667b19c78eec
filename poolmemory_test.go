//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// stopClock freezes safedial's clock for the rest of the test, so that marks
// of full sources neither expire nor age while the test counts attempts.
func stopClock(t *testing.T) (advance func(time.Duration)) {
	adv, restore := safedial.StopClock()
	t.Cleanup(restore)
	return func(d time.Duration) { adv(int64(d)) }
}

// dialFrom makes n sequential dials to dst with d, counting the source of
// each connection; each connection is closed abortively (no TIME_WAIT), so
// that the next dial has the same ports.
func dialFrom(t *testing.T, d *safedial.Dialer, dst string, n int) map[netip.Addr]int {
	t.Helper()
	got := make(map[netip.Addr]int)
	for i := range n {
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatalf("dial %d of %d: %v", i, n, err)
		}
		got[localAddr(c).Addr()]++
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	return got
}

// abort closes conns abortively, which frees their ports at once.
func abort(conns []net.Conn) {
	for _, c := range conns {
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
}

// TestPoolTransientFull: a source another program filled for a moment, and
// that has room again, carries its share once its mark is FullTTL old: the
// 200 dials that follow split 100/100, as two net.Dialers taken in turn
// would. (v0.3.0's mark lasted until a success through the source, which
// never came: 0/200.)
func TestPoolTransientFull(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		advance := stopClock(t)
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		a, b := netip.MustParseAddr("127.0.0.10"), netip.MustParseAddr("127.0.0.11")
		other := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0)), Control: bindNoPort}
		held, err := fillConns(t, other.DialContext, "tcp", []string{dst}, 100)
		if len(held) != 4 {
			t.Fatalf("the other program holds %d of %v's ports (%v), want 4", len(held), a, err)
		}
		d := &safedial.Dialer{Sources: []netip.Addr{a, b}}
		if got := dialFrom(t, d, dst, 1); got[b] != 1 {
			t.Fatalf("while %v is full: %v, want the dial from %v", a, got, b)
		}
		abort(held)
		if got := dialFrom(t, d, dst, 10); got[b] != 10 {
			t.Errorf("within FullTTL of the mark: %v, want every dial from %v (the mark orders)", got, b)
		}
		advance(safedial.FullTTL)
		if got := dialFrom(t, d, dst, 200); got[a] != 100 || got[b] != 100 {
			t.Errorf("200 dials after the mark expired: %d from %v, %d from %v; want 100 each", got[a], a, got[b], b)
		}
	})
}

// TestPoolBurstFull: a burst over capacity marks all four sources full; once
// it drains, the first dial connects through the source marked longest ago,
// which makes the other marks hints at once (no need to wait FullTTL): 400
// dials split evenly. (v0.3.0: 400/0/0/0, the first source to connect again
// kept every dial.)
func TestPoolBurstFull(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		stopClock(t)
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		srcs := mustAddrs("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13")
		d := &safedial.Dialer{Sources: srcs}
		burst, err := fillConns(t, d.DialContext, "tcp", []string{dst}, 100)
		if len(burst) != 16 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Fatalf("burst: %d connections, then %v; want 16, then exhaustion", len(burst), err)
		}
		abort(burst)
		got := dialFrom(t, d, dst, 400)
		for _, s := range srcs {
			if got[s] < 99 || got[s] > 101 {
				t.Errorf("400 dials after the burst: %v; want 100 ± 1 from each source", got)
				break
			}
		}
	})
}

// TestPoolFullAttempts: with every port of the range bound (so every source
// is full toward every destination), a failing dial costs one kernel
// attempt, for a pool of 32 sources dialing 3 destinations and of 8 dialing
// 9, and of 4 dialing 300, on the real clock (marks that expire still ask
// one source). v0.3.0's 64 slots could not hold 96 or 72 marks: 32.0 and 8.0
// attempts per dial; a memory of 64 destinations, 4.0 at 4 x 300.
func TestPoolFullAttempts(t *testing.T) {
	for _, size := range []struct{ srcs, dsts int }{{32, 3}, {8, 9}, {4, 300}} {
		t.Run(fmt.Sprintf("%dx%d", size.srcs, size.dsts), func(t *testing.T) {
			inNamespace(t, 40000, 40003, func(t *testing.T) {
				for range 4 { // the whole range: 40000-40003
					ln, err := net.Listen("tcp4", "127.0.0.200:0")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { ln.Close() })
				}
				var srcs []netip.Addr
				for i := range size.srcs {
					srcs = append(srcs, netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)}))
				}
				var dsts []string
				for i := range size.dsts {
					dsts = append(dsts, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(1 + i/250), byte(1 + i%250)}), 8080).String())
				}
				d := &safedial.Dialer{Sources: srcs}
				attempts := func() (n uint64) {
					for _, s := range d.Stats().Sources {
						n += s.Attempts
					}
					return n
				}
				const rounds = 10
				for round := range rounds + 1 {
					if round == 1 {
						// Round 0 found every source full toward every destination.
						if got, want := attempts(), uint64(size.srcs*size.dsts); got != want {
							t.Fatalf("first round: %d kernel attempts, want %d", got, want)
						}
					}
					for _, dst := range dsts {
						if _, err := d.Dial("tcp", dst); !errors.Is(err, safedial.ErrEphemeralExhausted) {
							t.Fatalf("round %d, %s: %v, want exhaustion", round, dst, err)
						}
					}
				}
				got := attempts() - uint64(size.srcs*size.dsts)
				if want := uint64(rounds * size.dsts); got != want {
					t.Errorf("%d failing dials made %d kernel attempts (%.1f per dial), want one per dial", want, got, float64(got)/float64(want))
				} else {
					t.Logf("%d failing dials made %d kernel attempts (%.1f per dial)", want, got, float64(got)/float64(want))
				}
			})
		})
	}
}

// TestPoolSourceReadded: a source removed from the host (found not local by
// a dial) and added again carries its share once the mark is FullTTL old.
// (v0.3.0: the not-local mark lasted until a success that never came.)
func TestPoolSourceReadded(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		advance := stopClock(t)
		ipCmd := ipCommand(t)
		ipCmd("addr", "add", "10.9.9.9/32", "dev", "lo")
		waitLocal(t, "10.9.9.9")
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		extra, lo := netip.MustParseAddr("10.9.9.9"), netip.MustParseAddr("127.0.0.1")
		d := &safedial.Dialer{Sources: []netip.Addr{extra, lo}}
		ipCmd("addr", "del", "10.9.9.9/32", "dev", "lo")
		if got := dialFrom(t, d, dst, 1); got[lo] != 1 {
			t.Fatalf("after the removal: %v, want the dial from %v", got, lo)
		}
		ipCmd("addr", "add", "10.9.9.9/32", "dev", "lo")
		waitLocal(t, "10.9.9.9")
		advance(safedial.FullTTL)
		if got := dialFrom(t, d, dst, 200); got[extra] != 100 || got[lo] != 100 {
			t.Errorf("200 dials after the address came back: %d from %v, %d from %v; want 100 each", got[extra], extra, got[lo], lo)
		}
		if st := d.Stats().Sources[0]; st.NotLocal != 1 {
			t.Errorf("Stats().Sources[0].NotLocal = %d, want 1", st.NotLocal)
		}
	})
}

// passingCtx is a context whose deadline passes when pass is called, while
// its Err stays nil: a runtime timer that has not fired yet.
type passingCtx struct {
	context.Context
	future time.Time // the deadline until it passes
	passed bool
}

func (c *passingCtx) Deadline() (time.Time, bool) {
	if c.passed {
		return time.Now().Add(-time.Millisecond), true
	}
	return c.future, true
}

// TestPoolDeadlinePassed: the failover loop compares the context's deadline
// with the clock, not only ctx.Err(): a deadline that passed during an
// attempt ends the dial before the next source is asked, with net.Dialer's
// timeout error, even when the runtime's timer has not fired yet. (v0.3.0
// went on to the next source.)
func TestPoolDeadlinePassed(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		gone, lo := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("127.0.0.1")
		ctx := &passingCtx{Context: context.Background(), future: time.Now().Add(time.Hour)}
		d := &safedial.Dialer{Sources: []netip.Addr{gone, lo}}
		d.Base.Control = func(_, _ string, _ syscall.RawConn) error {
			ctx.passed = true // during the first attempt
			return nil
		}
		_, err := d.DialContext(ctx, "tcp", "127.0.1.1:9")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want a timeout (context.DeadlineExceeded)", err)
		}
		if st := d.Stats().Sources; st[0].NotLocal != 1 || st[1].Attempts != 0 {
			t.Errorf("Stats().Sources = %+v; want the first source found not local, the second not asked", st)
		}
	})
}

// TestPoolNonlocalBind: with ip_nonlocal_bind=1 (set in the test's namespace
// only; keepalived and VRRP hosts set it), bind accepts an address the host
// does not have, so locality comes from the routing table: SetSources
// refuses the address, and a pool given it fails over to the other source
// and counts it NotLocal, for IPv4 and IPv6. (v0.3.0: SetSources took it;
// IPv4 dials failed with ENETUNREACH, IPv6 ones sent their SYN from the
// missing address and ran to the Timeout.)
func TestPoolNonlocalBind(t *testing.T) {
	for _, tc := range []struct{ family, gone, here, dst string }{
		{"ipv4", "192.0.2.1", "127.0.0.1", "127.0.1.1"},
		{"ipv6", "2001:db8::1", "::1", "::1"},
	} {
		t.Run(tc.family, func(t *testing.T) {
			inNamespace(t, 40000, 40099, func(t *testing.T) {
				stopClock(t)
				if tc.family == "ipv6" {
					needIPv6(t)
				}
				if err := os.WriteFile("/proc/sys/net/"+tc.family+"/ip_nonlocal_bind", []byte("1"), 0); err != nil {
					t.Fatalf("setting ip_nonlocal_bind in the test's namespace: %v", err)
				}
				dst := servers(t, "tcp", []string{tc.dst}, []int{8080})[0]
				gone, here := netip.MustParseAddr(tc.gone), netip.MustParseAddr(tc.here)
				d := &safedial.Dialer{}
				if err := d.SetSources([]netip.Addr{gone, here}); !errors.Is(err, safedial.ErrSourceNotLocal) {
					t.Errorf("SetSources with %v: %v, want ErrSourceNotLocal", gone, err)
				}
				d.Sources = []netip.Addr{gone, here} // assigned, not checked: as if removed since
				d.Base.Timeout = 5 * time.Second     // bounds v0.3.0's IPv6 dials, which wait for an answer that never comes
				if got := dialFrom(t, d, dst, 20); got[here] != 20 {
					t.Errorf("20 dials: %v, want every one from %v", got, here)
				}
				if st := d.Stats().Sources[0]; st.NotLocal != 1 || st.Attempts != 1 {
					t.Errorf("Stats().Sources[0] = %+v, want one attempt, found not local", st)
				}
			})
		})
	}
}

// TestPoolFreebindUnreachable: a user hook that sets IP_FREEBIND lets bind
// accept an address the host does not have; the connect's ENETUNREACH from
// that source, which the routing table says is not local, fails over and
// counts NotLocal, as a bind's EADDRNOTAVAIL does.
func TestPoolFreebindUnreachable(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		stopClock(t)
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		gone, here := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("127.0.0.1")
		d := &safedial.Dialer{Sources: []netip.Addr{gone, here}}
		d.Base.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1) }); err != nil {
				return err
			}
			return serr
		}
		if got := dialFrom(t, d, dst, 4); got[here] != 4 {
			t.Errorf("4 dials: %v, want every one from %v", got, here)
		}
		if st := d.Stats().Sources[0]; st.NotLocal != 1 || st.Attempts != 1 {
			t.Errorf("Stats().Sources[0] = %+v, want one attempt, found not local", st)
		}
	})
}

// TestPoolTentativeRejoins: an IPv6 source added while tentative (duplicate
// address detection refuses its bind) is found not local; once DAD ends and
// the mark is FullTTL old it carries its share. (v0.3.0: 0 of 200.)
func TestPoolTentativeRejoins(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		advance := stopClock(t)
		needIPv6(t)
		ip, err := exec.LookPath("ip")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("iproute2's ip is needed to add a tentative address (CI=true, so this fails instead of skipping): %v", err)
			}
			t.Skipf("iproute2's ip is needed to add a tentative address: %v", err)
		}
		ipCmd := func(args ...string) string {
			t.Helper()
			out, err := exec.Command(ip, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
			return string(out)
		}
		// A veth pair runs DAD (lo and dummy interfaces skip it).
		ipCmd("link", "add", "sd0", "type", "veth", "peer", "name", "sd1")
		ipCmd("link", "set", "sd1", "up")
		ipCmd("link", "set", "sd0", "up")
		ipCmd("-6", "addr", "add", "2001:db8::5/64", "dev", "sd0")
		dst := servers(t, "tcp", []string{"::1"}, []int{8080})[0]
		tent, lo := netip.MustParseAddr("2001:db8::5"), netip.MustParseAddr("::1")
		d := &safedial.Dialer{Sources: []netip.Addr{tent, lo}}
		if !strings.Contains(ipCmd("-6", "addr", "show", "dev", "sd0"), "tentative") {
			t.Skip("2001:db8::5 was not tentative at the first dial: DAD ended already")
		}
		if got := dialFrom(t, d, dst, 1); got[lo] != 1 {
			t.Fatalf("while tentative: %v, want the dial from %v", got, lo)
		}
		if st := d.Stats().Sources[0]; st.NotLocal != 1 {
			t.Fatalf("Stats().Sources[0] = %+v, want the tentative source found not local", st)
		}
		// DAD takes about a second: ask ip until it ends; 10 s is a bound, not a pace.
		for end := time.Now().Add(10 * time.Second); strings.Contains(ipCmd("-6", "addr", "show", "dev", "sd0"), "tentative"); {
			if time.Now().After(end) {
				t.Fatal("2001:db8::5 still tentative 10 s after it was added")
			}
		}
		advance(safedial.FullTTL)
		if got := dialFrom(t, d, dst, 200); got[tent] != 100 || got[lo] != 100 {
			t.Errorf("200 dials after DAD: %d from %v, %d from %v; want 100 each", got[tent], tent, got[lo], lo)
		}
	})
}

// TestFixedPortTupleInUse: a dial from a fixed source port to a peer whose
// 4-tuple is still held, by an open connection or one closing or in
// TIME_WAIT, fails at connect with EADDRNOTAVAIL; the error says why and
// what to do, is not exhaustion, and still matches syscall.EADDRNOTAVAIL.
// (v0.3.0: "connect: cannot assign requested address", unexplained.)
//
// The namespace turns TCP timestamps off: with them, a connect from an
// explicitly bound port takes over a TIME_WAIT 4-tuple at once, whatever
// tcp_tw_reuse (the kernel's check for an explicit port skips the reuse
// delay), so once the closed connection has left FIN_WAIT1 the next dial
// succeeds, and the test would race the peer's ACK.
func TestFixedPortTupleInUse(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		writeSysctl(t, "net/ipv4/tcp_timestamps", "0")
		dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
		d := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:5000")}}
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		want := "dial tcp 127.0.0.1:5000->127.0.1.1:8080: connect: cannot assign requested address: the 4-tuple 127.0.0.1:5000->127.0.1.1:8080 is still held, by an open connection or one in TIME_WAIT; " +
			"a fixed source port reaches one peer once per TIME_WAIT (60 s): let the kernel pick the port (port 0 in LocalAddr), or set net.ipv4.tcp_tw_reuse=1 (with TCP timestamps)"
		for _, held := range []string{"open", "closed by the client (FIN_WAIT or TIME_WAIT)"} {
			if held != "open" {
				c.Close() // the client closes first: its 4-tuple goes to TIME_WAIT
			}
			_, err = d.Dial("tcp", dst)
			if !errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("second dial, the first connection %s: %v; want EADDRNOTAVAIL, not exhaustion", held, err)
			}
			if err.Error() != want {
				t.Errorf("the first connection %s: error:\n%s\nwant:\n%s", held, err, want)
			}
			var op *net.OpError
			if !errors.As(err, &op) || op.Op != "dial" {
				t.Errorf("%T, want a *net.OpError", err)
			}
		}
	})
}

// TestPoolOneFamilyOneLookup: a pool of one family dialing a name makes one
// DNS lookup per dial, as net.Dialer{LocalAddr} does, whether the name has
// addresses of the pool's family or of the other family only. (v0.3.0
// looked a name of the other family up twice, each under its own Timeout.)
func TestPoolOneFamilyOneLookup(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})
		res := fakeResolver(map[string][]netip.Addr{
			"both.test.": mustAddrs("::1", "127.0.0.2"),
			"v6.test.":   mustAddrs("::1"),
		})
		for _, tc := range []struct {
			address string
			ok      bool
		}{{"both.test:8080", true}, {"v6.test:8080", false}, {"nx.test:8080", false}} {
			lookups := 0
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{DNSStart: func(httptrace.DNSStartInfo) { lookups++ }})
			d := &safedial.Dialer{Sources: mustAddrs("127.0.0.1"), Base: net.Dialer{Resolver: res}}
			c, err := d.DialContext(ctx, "tcp", tc.address)
			if (err == nil) != tc.ok {
				t.Errorf("%s: %v, want success %v", tc.address, err, tc.ok)
			}
			if c != nil {
				c.Close()
			}
			if lookups != 1 {
				t.Errorf("%s: %d DNS lookups, want 1", tc.address, lookups)
			}
		}
	})
}

// TestPoolRejoinRealClock: TestPoolTransientFull and TestPoolBurstFull on
// the real clock: dials poll (bounded at 5 s) until the source that was full
// connects again, then the next dials split evenly. It logs how long the
// rejoin took (a figure for docs/pools.md, not an assertion).
func TestPoolRejoinRealClock(t *testing.T) {
	rejoin := func(t *testing.T, d *safedial.Dialer, dst string, want netip.Addr, since time.Time) {
		t.Helper()
		for end := since.Add(5 * time.Second); ; {
			if got := dialFrom(t, d, dst, 1); got[want] == 1 {
				t.Logf("%v carried a dial again %v after its ports were freed", want, time.Since(since).Round(time.Millisecond))
				return
			}
			if time.Now().After(end) {
				t.Fatalf("%v not used 5 s after its ports were freed", want)
			}
		}
	}
	t.Run("transient", func(t *testing.T) {
		inNamespace(t, 40000, 40003, func(t *testing.T) {
			dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
			a, b := netip.MustParseAddr("127.0.0.10"), netip.MustParseAddr("127.0.0.11")
			other := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0)), Control: bindNoPort}
			held, _ := fillConns(t, other.DialContext, "tcp", []string{dst}, 4)
			d := &safedial.Dialer{Sources: []netip.Addr{a, b}}
			dialFrom(t, d, dst, 1) // finds a full
			abort(held)
			rejoin(t, d, dst, a, time.Now())
			if got := dialFrom(t, d, dst, 200); got[a] < 80 || got[a] > 120 {
				t.Errorf("200 dials after the rejoin: %d from %v, %d from %v; want 100 ± 20 each", got[a], a, got[b], b)
			} else {
				t.Logf("200 dials after the rejoin: %d from %v, %d from %v", got[a], a, got[b], b)
			}
		})
	})
	t.Run("burst", func(t *testing.T) {
		inNamespace(t, 40000, 40003, func(t *testing.T) {
			dst := servers(t, "tcp", []string{"127.0.1.1"}, []int{8080})[0]
			srcs := mustAddrs("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13")
			d := &safedial.Dialer{Sources: srcs}
			burst, _ := fillConns(t, d.DialContext, "tcp", []string{dst}, 100)
			abort(burst)
			start := time.Now()
			got := dialFrom(t, d, dst, 400)
			for _, s := range srcs {
				if got[s] < 80 || got[s] > 120 {
					t.Fatalf("400 dials after the burst (%v): %v; want 100 ± 20 from each source", time.Since(start).Round(time.Millisecond), got)
				}
			}
			t.Logf("400 dials after the burst (%v): %v", time.Since(start).Round(time.Millisecond), got)
		})
	})
}
