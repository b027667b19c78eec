//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// fillConcurrent dials with g goroutines, each taking the destinations in
// turn, until every goroutine got an exhaustion; it returns the
// connections (closed when the test ends) and one of the exhaustion errors.
func fillConcurrent(t *testing.T, d *safedial.Dialer, dsts []string, g int) ([]net.Conn, error) {
	t.Helper()
	var (
		mu    sync.Mutex
		conns []net.Conn
		last  error
		wg    sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c, err := d.DialContext(ctx, "udp", dsts[(i+j)%len(dsts)])
				cancel()
				mu.Lock()
				if err != nil {
					if !errors.Is(err, safedial.ErrEphemeralExhausted) {
						t.Errorf("goroutine %d: %v", i, err)
					}
					last = err
					mu.Unlock()
					return
				}
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return conns, last
}

// TestShareUDPPortsUnspecified (issue 16, defect 1): dials to ":9000",
// "0.0.0.0:9000" and "[::]:9000" connect to this host; the search, the
// checks and the duplicate check use that peer, so that mixed with dials
// to the peer by name, 16 goroutines at once hold exactly the range, no
// 4-tuple twice, each socket with its own echo.
func TestShareUDPPortsUnspecified(t *testing.T) {
	for _, tc := range []struct {
		name  string
		local string
		echo  string
		dsts  []string
	}{
		{"IPv4 bound", "127.0.0.1", "0.0.0.0:9000", []string{":9000", "0.0.0.0:9000", "127.0.0.1:9000"}},
		{"IPv4 bound elsewhere", "127.0.0.5", "127.0.0.5:9000", []string{":9000", "127.0.0.5:9000"}},
		{"IPv6 bound", "::1", "[::]:9000", []string{"[::]:9000", "[::1]:9000"}},
		{"IPv4 unbound", "", "0.0.0.0:9000", []string{":9000", "127.0.0.1:9000"}},
		{"IPv6 unbound", "", "[::]:9000", []string{"[::]:9000", "[::1]:9000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inNamespace(t, 40000, 40031, func(t *testing.T) {
				if strings.Contains(tc.name, "IPv6") {
					needIPv6(t)
				}
				udpEcho(t, tc.echo)
				d := &safedial.Dialer{ShareUDPPorts: true}
				if tc.local != "" {
					d.Base.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.local), 0))
				}
				conns, err := fillConcurrent(t, d, tc.dsts, 16)
				// Per peer, at most the range; the peer of the test
				// exactly the range. (An unbound dial to "[::]:9000" that
				// finds the IPv6 peer full goes on, as net.Dialer's does,
				// to 0.0.0.0:9000: the IPv4 peer.)
				peers := map[netip.AddrPort]int{}
				for _, c := range conns {
					peers[addrPortOf(c.RemoteAddr())]++
				}
				peer := netip.MustParseAddrPort(tc.dsts[len(tc.dsts)-1])
				for p, n := range peers {
					if n > 32 || p == peer && n != 32 {
						t.Errorf("%d sockets connected to %v, want 32 at most, and exactly 32 to %v", n, p, peer)
					}
				}
				if !errors.Is(err, safedial.ErrEphemeralExhausted) {
					t.Errorf("last error %v, want exhaustion", err)
				}
				checkUDP(t, conns)
			})
		})
	}
}

// warmUp exchanges one datagram with the echo at dst: right after the
// address is added, a socket sometimes never gets its echo (seen with
// plain net.Dial too: a route cached before the address was ready), which
// is not what the tests check. Each try uses a fresh socket.
func warmUp(t *testing.T, dst string) {
	t.Helper()
	buf := make([]byte, 16)
	for range 50 {
		c, err := net.Dial("udp", dst)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("warm up"))
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err = c.Read(buf)
		c.Close()
		if err == nil {
			return
		}
	}
	t.Fatalf("no echo from %s", dst)
}

// TestShareUDPPortsLinkLocal (issue 16, defect 2): a link-local source with
// a zone (the owner lookups carry the interface index) fills its range
// toward a peer exactly, then reports exhaustion.
func TestShareUDPPortsLinkLocal(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		addLinkLocal(t)
		dst := udpEcho(t, "[fe80::1%lo]:9000")
		warmUp(t, dst[0])
		src := netip.MustParseAddr("fe80::1%lo")
		for _, d := range []*safedial.Dialer{
			{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: src.AsSlice(), Zone: "lo"}}},
			{ShareUDPPorts: true, Sources: []netip.Addr{src}},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conns, err := fillConns(t, func(_ context.Context, network, address string) (net.Conn, error) {
				return d.DialContext(ctx, network, address)
			}, "udp", dst, 100)
			cancel()
			if len(conns) != 32 {
				t.Errorf("Sources %v: connected UDP sockets = %d, want 32", d.Sources, len(conns))
			}
			if diff := cmp.Diff(exhaustedChain("udp", "connect", "EAGAIN"), chain(err)); diff != "" {
				t.Errorf("Sources %v: %v: error chain (-want +got):\n%s", d.Sources, err, diff)
			}
			checkUDP(t, conns)
			for _, c := range conns {
				c.Close()
			}
		}
	})
}

// TestShareUDPPortsPairLock (issue 16, defect 3): while this process's lock
// of one (source, peer) pair is held, a shared dial of another pair goes
// through, and a dial of that pair returns with its context's error.
func TestShareUDPPortsPairLock(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		release := safedial.HoldSharePair(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort(dsts[0]))
		c, err := d.Dial("udp", dsts[1])
		if err != nil {
			t.Fatalf("dial of another pair while one is held: %v", err)
		}
		c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_, err = d.DialContext(ctx, "udp", dsts[0])
		cancel()
		var ne net.Error
		if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("dial of the held pair with a deadline: %v, want its deadline (Timeout)", err)
		}
		ctx, cancel = context.WithCancel(context.Background())
		cancel()
		if _, err := d.DialContext(ctx, "udp", dsts[0]); !errors.Is(err, context.Canceled) {
			t.Errorf("dial of the held pair, cancelled: %v, want context.Canceled", err)
		}
		release()
		c, err = d.Dial("udp", dsts[0])
		if err != nil {
			t.Fatalf("dial once the pair is free: %v", err)
		}
		c.Close()
		if n := safedial.SharePairs(); n != 0 {
			t.Errorf("%d pair locks left after the dials, want 0", n)
		}
	})
}

// TestShareUDPPortsHookDials (issue 16, defect 4): a user hook that itself
// makes shared UDP dials (toward the same and another destination, on
// every socket it is given, net.Dialer's and the fresh ones) never blocks
// the dial it runs in, up to exhaustion.
func TestShareUDPPortsHookDials(t *testing.T) {
	inNamespace(t, 40000, 40015, func(t *testing.T) {
		dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
		src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		innerSrc := src
		var hookErrs, hookCalls int
		outer := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: src,
			ControlContext: func(ctx context.Context, _, _ string, _ syscall.RawConn) error {
				hookCalls++
				for _, dst := range dsts {
					// A new Dialer each time: nothing remembered spares
					// it the search.
					inner := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: innerSrc}}
					c, err := inner.DialContext(ctx, "udp", dst)
					if err != nil {
						if !errors.Is(err, safedial.ErrEphemeralExhausted) {
							hookErrs++
						}
						continue
					}
					c.Close()
				}
				return nil
			}}}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conns, err := fillConns(t, func(_ context.Context, network, address string) (net.Conn, error) {
			return outer.DialContext(ctx, network, address)
		}, "udp", dsts[:1], 100)
		if len(conns) != 16 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Errorf("%d sockets then %v; want 16 then exhaustion", len(conns), err)
		}
		if hookCalls == 0 || hookErrs != 0 {
			t.Errorf("hook ran %d times, %d of its dials failed other than by exhaustion", hookCalls, hookErrs)
		}
		checkUDP(t, conns)

		// Every port of 127.0.0.7 held by an unconnected SO_REUSEPORT
		// socket of this user: a shared bind succeeds but that socket
		// wins the kernel's lookup, so each claim binds and backs out,
		// and the dial replaces its socket (running the hook) again and
		// again. Before, the dial went on alone holding a process-wide
		// lock while the hook's own shared dial waited for it: it never
		// returned.
		for p := 40000; p <= 40015; p++ {
			s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(s)
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
				t.Fatal(err)
			}
			if err := unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 7}, Port: p}); err != nil {
				t.Fatal(err)
			}
		}
		src7 := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 7)}
		innerSrc, outer.Base.LocalAddr = src7, src7
		hookCalls = 0
		_, err = outer.DialContext(ctx, "udp", dsts[0])
		if !errors.Is(err, safedial.ErrEphemeralExhausted) || hookCalls == 0 || hookErrs != 0 {
			t.Errorf("dial from a source held by SO_REUSEPORT sockets: %v (hook ran %d times, %d failures), want exhaustion", err, hookCalls, hookErrs)
		}
	})
}

// TestShareUDPPortsNonSharing (issue 16, defect 5, and issue 14's
// ShareUDPPorts headroom): ports held by sockets a shared bind cannot join
// (plain unconnected and connected UDP sockets of this user, wildcard and
// dual-stack wildcard binds, another user's socket) are taken for every
// destination: Dialer.Headroom counts them as Bound, the dials fill exactly
// the rest, and the exhaustion says what holds the ports.
func TestShareUDPPortsNonSharing(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		needIPv6(t)
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		var held []net.PacketConn
		t.Cleanup(func() {
			for _, c := range held {
				c.Close()
			}
		})
		hold := func(network, addr string) {
			c, err := net.ListenPacket(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		for p := 40000; p < 40008; p++ {
			hold("udp4", fmt.Sprintf("127.0.0.1:%d", p)) // plain, bound
		}
		for p := 40008; p < 40012; p++ { // plain, connected elsewhere
			c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p}, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 9})
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		hold("udp4", "0.0.0.0:40012")
		hold("udp4", "0.0.0.0:40013")
		hold("udp", "[::]:40014") // dual-stack: holds the IPv4 port too
		hold("udp", "[::]:40015")
		const bound = 16
		src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: src}}
		want := safedial.Headroom{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort(dst),
			Range: safedial.PortRange{Lo: 40000, Hi: 40031}, Bound: bound, Free: 32 - bound}
		hs, err := d.Headroom(context.Background(), "udp", dst)
		if err != nil || len(hs) != 1 {
			t.Fatalf("Headroom: %v, %v", hs, err)
		}
		if diff := cmp.Diff(want, hs[0], netipCmp); diff != "" {
			t.Errorf("Headroom before the dials (-want +got):\n%s", diff)
		}
		n, err := fillUDP(t, d, []string{dst}, 100)
		if n != 32-bound {
			t.Errorf("connected UDP sockets = %d, want %d", n, 32-bound)
		}
		var ee *safedial.ExhaustedError
		if !errors.As(err, &ee) || ee.Held == nil {
			t.Fatalf("after %d sockets: %v, want an *ExhaustedError with Held", n, err)
		}
		want.InUse, want.Free = 32-bound, 0
		if diff := cmp.Diff(want, *ee.Held, netipCmp); diff != "" {
			t.Errorf("ExhaustedError.Held (-want +got):\n%s", diff)
		}
		if msg := err.Error(); !strings.Contains(msg, "16 in use toward this destination, 16 held for every destination by UDP sockets a shared port cannot join") {
			t.Errorf("message %q does not say what holds the ports", msg)
		}
		if hs, err := d.Headroom(context.Background(), "udp", dst); err != nil || len(hs) != 1 || hs[0] != want {
			t.Errorf("Headroom after the dials: %+v, %v; want %+v", hs, err, want)
		}
	})
}

// TestShareUDPPortsReserved (issue 16, defect 6): shared dials take only
// ports the kernel hands out: none of ip_local_reserved_ports, none outside
// the namespace range when PortRange is wider.
func TestShareUDPPortsReserved(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_reserved_ports", []byte("40000-40007,40030"), 0); err != nil {
			t.Fatalf("reserve ports in the namespace: %v", err)
		}
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		r := safedial.PortRange{Lo: 39990, Hi: 40031}
		d := &safedial.Dialer{ShareUDPPorts: true, PortRange: r, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		conns, err := fillConns(t, d.DialContext, "udp", []string{dst}, 100)
		if len(conns) != 23 {
			t.Errorf("connected UDP sockets = %d, want 23 (32 less 9 reserved)", len(conns))
		}
		for _, c := range conns {
			if p := addrPortOf(c.LocalAddr()).Port(); p < 40008 || p == 40030 {
				t.Errorf("socket on port %d, which the kernel would not hand out", p)
			}
		}
		var ee *safedial.ExhaustedError
		if !errors.As(err, &ee) || ee.Held == nil || ee.Held.Reserved != 19 || ee.Held.InUse != 23 {
			t.Errorf("exhaustion %v: Held %+v, want 19 reserved (9 listed, 10 below the namespace range), 23 in use", err, ee)
		}
		checkUDP(t, conns)
	})
}

// TestShareUDPPortsUnsolicited (issue 16, defect 7): a datagram that reaches
// a shared socket while it is bound but not yet connected, from another
// sender, is discarded: the connection reads only its peer's replies.
func TestShareUDPPortsUnsolicited(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		spoof, err := net.ListenPacket("udp4", "127.0.0.9:9999")
		if err != nil {
			t.Fatal(err)
		}
		defer spoof.Close()
		var sent int
		defer safedial.BeforeSharedConnect(func(fd int, port uint16) {
			if _, err := spoof.WriteTo([]byte("unsolicited"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}); err != nil {
				t.Errorf("send: %v", err)
				return
			}
			// Wait until it is queued on the socket.
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(fds, 5000); n != 1 || err != nil {
				t.Errorf("the unsolicited datagram never arrived: %d, %v", n, err)
			}
			sent++
		})()
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		conns, err := fillConns(t, d.DialContext, "udp", []string{dst}, 8)
		if err != nil {
			t.Fatal(err)
		}
		if sent < len(conns) {
			t.Fatalf("only %d datagrams sent for %d sockets", sent, len(conns))
		}
		checkUDP(t, conns)
	})
}

// TestShareUDPPortsSmall (issue 16, defect 8): Tried stays nil outside a
// pool; a port freed after an exhaustion is taken by the next dial at once
// (the clock stopped: no memory refuses it); an unreadable port range is an
// error that says so; an IPv4-mapped dual-stack socket connected to the
// peer counts as in use toward it.
func TestShareUDPPortsSmall(t *testing.T) {
	inNamespace(t, 40000, 40015, func(t *testing.T) {
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: src}}
		_, restore := safedial.StopClock()
		defer restore()
		conns, err := fillConns(t, d.DialContext, "udp", []string{dst}, 100)
		var ee *safedial.ExhaustedError
		if len(conns) != 16 || !errors.As(err, &ee) {
			t.Fatalf("%d sockets then %v, want 16 then exhaustion", len(conns), err)
		}
		if ee.Tried != nil {
			t.Errorf("Tried = %v outside a pool, want nil", ee.Tried)
		}
		conns[3].Close()
		c, err := d.Dial("udp", dst)
		if err != nil {
			t.Fatalf("dial after a port was freed: %v", err)
		}
		c.Close()

		func() {
			defer safedial.UnreadablePortRange()()
			_, err := d.Dial("udp", dst)
			if err == nil || errors.Is(err, safedial.ErrEphemeralExhausted) || !strings.Contains(err.Error(), "cannot read net.ipv4.ip_local_port_range") {
				t.Errorf("dial with the range unreadable: %v, want an error saying so", err)
			}
		}()

		needIPv6(t)
		for _, c := range conns {
			c.Close()
		}
		s, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(s)
		mapped := func(a string, port int) *unix.SockaddrInet6 {
			return &unix.SockaddrInet6{Addr: netip.MustParseAddr(a).As16(), Port: port}
		}
		if err := unix.Bind(s, mapped("::ffff:127.0.0.1", 40005)); err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(s, mapped("::ffff:127.0.0.2", 9000)); err != nil {
			t.Fatal(err)
		}
		hs, err := d.Headroom(context.Background(), "udp", dst)
		if err != nil || len(hs) != 1 || hs[0].InUse != 1 || hs[0].Free != 15 {
			t.Errorf("Headroom with a dual-stack socket connected to the peer: %+v, %v; want 1 in use, 15 free", hs, err)
		}
	})
}

// TestShareUDPPortsDualStack (issue 16, defect 8): IPv6 sockets on
// IPv4-mapped addresses connected to the peer (with SO_REUSEPORT, as a
// same-user program can) hold their ports toward it: the search's dump sees
// them, the dial takes none of those ports, and the exhaustion counts them
// as in use toward the peer.
func TestShareUDPPortsDualStack(t *testing.T) {
	inNamespace(t, 40000, 40003, func(t *testing.T) {
		needIPv6(t)
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		mapped := func(a string, port int) *unix.SockaddrInet6 {
			return &unix.SockaddrInet6{Addr: netip.MustParseAddr(a).As16(), Port: port}
		}
		for p := 40000; p <= 40003; p++ {
			s, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(s)
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
				t.Fatal(err)
			}
			if err := unix.Bind(s, mapped("::ffff:127.0.0.1", p)); err != nil {
				t.Fatal(err)
			}
			if err := unix.Connect(s, mapped("::ffff:127.0.0.2", 9000)); err != nil {
				t.Fatal(err)
			}
		}
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		c, err := d.Dial("udp", dst)
		if err == nil {
			c.Close()
			t.Fatalf("dial connected from %v, a port an IPv6 socket holds toward the peer", c.LocalAddr())
		}
		var ee *safedial.ExhaustedError
		if !errors.As(err, &ee) || ee.Held == nil || ee.Held.InUse != 4 {
			t.Errorf("dial: %v, want exhaustion with the 4 ports in use toward the peer", err)
		}
	})
}

// TestShareUDPPortsV6OnlyWildcard: an IPv6-only socket on [::]:P (Go's
// ListenPacket("udp6", ":0")) does not hold P for IPv4 addresses, so a
// shared dial from an IPv4 source can take P; a dual-stack one on [::]:P
// holds it. Headroom and the dials must agree with the kernel.
func TestShareUDPPortsV6OnlyWildcard(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		needIPv6(t)
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		for p := 40000; p < 40008; p++ {
			c, err := net.ListenPacket("udp6", fmt.Sprintf("[::]:%d", p)) // IPV6_V6ONLY
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		for p := 40008; p < 40012; p++ {
			c, err := net.ListenPacket("udp", fmt.Sprintf(":%d", p)) // dual-stack
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		want := safedial.Headroom{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort(dst),
			Range: safedial.PortRange{Lo: 40000, Hi: 40031}, Bound: 4, Free: 28}
		hs, err := d.Headroom(context.Background(), "udp", dst)
		if err != nil || len(hs) != 1 {
			t.Fatalf("Headroom: %v, %v", hs, err)
		}
		if diff := cmp.Diff(want, hs[0], netipCmp); diff != "" {
			t.Errorf("Headroom (-want +got):\n%s", diff)
		}
		n, err := fillUDP(t, d, []string{dst}, 100)
		var ee *safedial.ExhaustedError
		if n != 28 || !errors.As(err, &ee) || ee.Held == nil || ee.Held.Bound != 4 {
			t.Errorf("%d shared dials, then %v (Held %+v); want 28, then exhaustion with 4 bound", n, err, ee)
		}
	})
}

// TestShareUDPPortsLocalAddrFamily: a shared dial from Base.LocalAddr to an
// address of the other family names Base.LocalAddr, not Sources (which the
// user did not set).
func TestShareUDPPortsLocalAddrFamily(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		needIPv6(t)
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		_, err := d.Dial("udp", "[::1]:9000")
		if !errors.Is(err, safedial.ErrInvalidConfig) || !strings.Contains(err.Error(), "Base.LocalAddr is 127.0.0.1") || strings.Contains(err.Error(), "Sources") {
			t.Errorf("shared dial from 127.0.0.1 to [::1]:9000: %v; want ErrInvalidConfig naming Base.LocalAddr", err)
		}
	})
}
