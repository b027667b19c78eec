//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/sys/unix"
)

// closingServer listens on addr and closes each connection once the client
// has closed it (EOF), so that the client's side ends in TIME_WAIT.
func closingServer(t *testing.T, addr string) string {
	t.Helper()
	a, _ := netnstest.EOFServer(t, addr)
	return a
}

// ssAddr writes an address as ss's filters want it: IPv6 in brackets.
func ssAddr(a netip.Addr) string {
	if a.Is6() {
		return "[" + a.String() + "]"
	}
	return a.String()
}

// ssCount runs ss with filter and returns the number of sockets it lists and
// how many of them are in TIME-WAIT.
func ssCount(t *testing.T, args ...string) (all, timeWait int) {
	t.Helper()
	out, err := exec.Command("ss", append([]string{"-Hn", "state", "all"}, args...)...).Output()
	if err != nil {
		t.Fatalf("ss %v: %v", args, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		all++
		if strings.Contains(line, "TIME-WAIT") {
			timeWait++
		}
	}
	return all, timeWait
}

func needSS(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ss"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("iproute2's ss is needed as the reference (CI=true, so this fails instead of skipping): %v", err)
		}
		t.Skipf("iproute2's ss is needed as the reference: %v", err)
	}
}

// build makes est held connections and tw connections closed by the client
// (TIME_WAIT on its side) from src to dst, as safedial dials them (the port
// chosen at connect), and waits until ss sees them all.
func build(t *testing.T, network string, src netip.Addr, dst string, est, tw int) {
	t.Helper()
	d := &net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), ControlContext: (&safedial.Dialer{}).ControlContext}
	for i := range est + tw {
		c, err := d.Dial(network, dst)
		if err != nil {
			t.Fatalf("dial %d from %v to %s: %v", i, src, dst, err)
		}
		if i < est {
			t.Cleanup(func() { c.Close() })
		} else {
			c.Close()
		}
	}
	// The server closes its side when it reads EOF, asynchronously: wait
	// for the kernel state the test built, as ss (the reference) sees it.
	for end := time.Now().Add(10 * time.Second); ; {
		if _, n := ssCount(t, "-t", "src", ssAddr(src), "dst", dst); n >= tw || time.Now().After(end) {
			return
		}
	}
}

// TestProbeHeadroom builds known numbers of established and TIME_WAIT
// connections from one source to one destination, plus noise from another
// source and to another destination port, and checks ProbeHeadroom against
// the exact numbers and against ss, in IPv4 and IPv6.
func TestProbeHeadroom(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needSS(t)
		needIPv6(t)
		for _, tc := range []struct {
			network       string
			src, noiseSrc netip.Addr
			dstHost       string
		}{
			{"tcp4", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.3"), "127.0.0.2"},
			{"tcp6", netip.MustParseAddr("::1"), netip.Addr{}, "::1"},
		} {
			t.Run(tc.network, func(t *testing.T) {
				dst := closingServer(t, net.JoinHostPort(tc.dstHost, "8080"))
				other := closingServer(t, net.JoinHostPort(tc.dstHost, "8081"))
				build(t, tc.network, tc.src, dst, 7, 5)
				build(t, tc.network, tc.src, other, 3, 2) // another destination port
				want := safedial.Headroom{Source: tc.src, Dest: netip.MustParseAddrPort(dst), Range: safedial.PortRange{Lo: 40000, Hi: 40099},
					InUse: 7, TimeWait: 5, Free: 88}
				if tc.noiseSrc.IsValid() {
					build(t, tc.network, tc.noiseSrc, dst, 4, 4) // another source
					// IPv4 on a dual-stack IPv6 socket (IPv4-mapped
					// addresses), as Java and some C programs dial: it
					// holds a port of the pair too.
					dualStack(t, tc.src, netip.MustParseAddrPort(dst))
					want.InUse, want.Free = 8, 87
				}
				h, err := safedial.ProbeHeadroom(context.Background(), "tcp", tc.src, netip.MustParseAddrPort(dst))
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, h, netipCmp); diff != "" {
					t.Errorf("ProbeHeadroom (-want +got):\n%s", diff)
				}
				all, tw := ssCount(t, "-t", "src", ssAddr(tc.src), "dst", dst)
				if all != h.InUse+h.TimeWait || tw != h.TimeWait {
					t.Errorf("ss counts %d sockets, %d in TIME-WAIT; ProbeHeadroom %d, %d", all, tw, h.InUse, h.TimeWait)
				}
			})
		}
	})
}

// dualStack connects an AF_INET6 socket (not IPV6_V6ONLY) from src to dst,
// both IPv4, as IPv4-mapped addresses.
func dualStack(t *testing.T, src netip.Addr, dst netip.AddrPort) {
	t.Helper()
	s, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	mapped := func(a netip.Addr) [16]byte { return netip.AddrFrom16(a.As16()).As16() }
	if err := unix.Bind(s, &unix.SockaddrInet6{Addr: mapped(src)}); err != nil {
		t.Fatalf("bind [::ffff:%v]:0: %v", src, err)
	}
	if err := unix.Connect(s, &unix.SockaddrInet6{Addr: mapped(dst.Addr()), Port: int(dst.Port())}); err != nil {
		t.Fatalf("connect [::ffff:%v]: %v", dst, err)
	}
}

// TestProbeHeadroomUDP: for UDP a port is held for every destination: the
// probe counts the sockets on the source (or the wildcard), whatever their
// destination.
func TestProbeHeadroomUDP(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		for i, dst := range []string{"127.0.0.2:53", "127.0.0.3:53", "127.0.0.2:54"} {
			for range i + 1 {
				c, err := (&net.Dialer{LocalAddr: src}).Dial("udp", dst)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
			}
		}
		wild, err := net.ListenUDP("udp4", &net.UDPAddr{}) // the wildcard, an ephemeral port
		if err != nil {
			t.Fatal(err)
		}
		defer wild.Close()
		noise, err := (&net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 5)}}).Dial("udp", "127.0.0.2:53")
		if err != nil {
			t.Fatal(err)
		}
		defer noise.Close()
		h, err := safedial.ProbeHeadroom(context.Background(), "udp", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort("127.0.0.9:1"))
		if err != nil {
			t.Fatal(err)
		}
		if h.InUse != 7 || h.TimeWait != 0 || h.Free != 93 {
			t.Errorf("UDP headroom %+v, want 7 in use (6 connected sockets and the wildcard), 93 free", h)
		}
	})
}

// TestProbeHeadroomInput: bad input gets a clear error, never a count.
func TestProbeHeadroomInput(t *testing.T) {
	v4, v6 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")
	d4, d6 := netip.MustParseAddrPort("127.0.0.2:80"), netip.MustParseAddrPort("[::1]:80")
	for _, tc := range []struct {
		network string
		src     netip.Addr
		dst     netip.AddrPort
		msg     string
	}{
		{"tcp", netip.Addr{}, d4, "the source is the zero netip.Addr"},
		{"tcp", v4, netip.AddrPort{}, "the destination is the zero netip.AddrPort"},
		{"tcp", v4, d6, "different address families"},
		{"tcp", v6, d4, "different address families"},
		{"tcp4", v6, d6, "network tcp4 does not match"},
		{"tcp6", v4, d4, "network tcp6 does not match"},
		{"unix", v4, d4, `unknown network "unix"`},
		{"tcp", netip.MustParseAddr("192.0.2.1"), d4, "source address is not an address of this host: 192.0.2.1"},
		{"tcp", netip.MustParseAddr("2001:db8::1"), d6, "source address is not an address of this host: 2001:db8::1"},
		{"tcp", netip.IPv4Unspecified(), d4, "the source is the unspecified address"},
		{"tcp", netip.IPv6Unspecified(), d6, "the source is the unspecified address"},
		{"udp", netip.MustParseAddr("224.0.0.1"), d4, "the source is a multicast address"},
		{"tcp", netip.MustParseAddr("ff02::1"), d6, "the source is a multicast address"},
		{"tcp", netip.MustParseAddr("255.255.255.255"), d4, "the source is a broadcast address"},
		{"tcp", netip.MustParseAddr("127.255.255.255"), d4, "the source is a broadcast address"},
		{"tcp", v4, netip.MustParseAddrPort("0.0.0.0:80"), "the destination is the unspecified address"},
		{"tcp", v6, netip.MustParseAddrPort("[::]:80"), "the destination is the unspecified address"},
		{"tcp", v4, netip.MustParseAddrPort("127.0.0.2:0"), "the destination port is 0"},
		{"tcp", netip.MustParseAddr("fe80::1%nosuchif0"), d6, `unknown zone "nosuchif0"`},
		{"tcp", v6, netip.MustParseAddrPort("[fe80::1%nosuchif0]:80"), `unknown zone "nosuchif0"`},
		{"", v4, d4, `unknown network ""`},
	} {
		h, err := safedial.ProbeHeadroom(context.Background(), tc.network, tc.src, tc.dst)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ProbeHeadroom(%q, %v, %v) = %+v, %v; want an error saying %q", tc.network, tc.src, tc.dst, h, err, tc.msg)
		}
		if h.InUse != 0 || h.Free != 0 {
			t.Errorf("ProbeHeadroom(%q, %v, %v) counted %+v with an error", tc.network, tc.src, tc.dst, h)
		}
	}
	if _, err := safedial.ProbeHeadroom(context.Background(), "tcp", netip.MustParseAddr("192.0.2.1"), d4); !errors.Is(err, safedial.ErrSourceNotLocal) {
		t.Errorf("a source not of this host: %v, want an error matching ErrSourceNotLocal", err)
	}
	// IPv4-mapped IPv6 addresses count as IPv4.
	if err := func() error {
		_, err := safedial.ProbeHeadroom(context.Background(), "tcp4", netip.MustParseAddr("::ffff:127.0.0.1"), d4)
		return err
	}(); err != nil {
		t.Errorf("IPv4-mapped source: %v", err)
	}
}

// TestDialerHeadroom: a Dialer's headroom covers its pool's sources of the
// destination's family, each resolved address, and its PortRange.
func TestDialerHeadroom(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		dst := closingServer(t, "127.0.0.2:8080")
		build(t, "tcp", netip.MustParseAddr("127.0.0.1"), dst, 3, 2)
		res := fakeResolver(map[string][]netip.Addr{"db.test.": mustAddrs("127.0.0.2", "::1")})
		d := &safedial.Dialer{Sources: mustAddrs("127.0.0.1", "127.0.0.3", "::1"), Base: net.Dialer{Resolver: res}}
		hs, err := d.Headroom(context.Background(), "tcp", "db.test:8080")
		if err != nil {
			t.Fatal(err)
		}
		r := safedial.PortRange{Lo: 40000, Hi: 40099}
		// In the resolver's order: ::1 first (RFC 6724), then 127.0.0.2.
		want := []safedial.Headroom{
			{Source: netip.MustParseAddr("::1"), Dest: netip.MustParseAddrPort("[::1]:8080"), Range: r, Free: 100},
			{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort(dst), Range: r, InUse: 3, TimeWait: 2, Free: 95},
			{Source: netip.MustParseAddr("127.0.0.3"), Dest: netip.MustParseAddrPort(dst), Range: r, Free: 100},
		}
		if diff := cmp.Diff(want, hs, netipCmp); diff != "" {
			t.Errorf("Headroom (-want +got):\n%s", diff)
		}

		// PortRange is the range; without any source, the kernel's
		// routing picks 127.0.0.1 toward 127.0.0.2.
		pr := &safedial.Dialer{PortRange: safedial.PortRange{Lo: 40000, Hi: 40009}}
		hs, err = pr.Headroom(context.Background(), "tcp4", dst)
		if err != nil || len(hs) != 1 || hs[0].Source != netip.MustParseAddr("127.0.0.1") || hs[0].Range != pr.PortRange {
			t.Errorf("Headroom with PortRange = %+v, %v; want one entry from 127.0.0.1 over %v", hs, err, pr.PortRange)
		}
	})
}

// TestProbeAllHeadroom: every pair with sockets in the range, most used
// first; listeners left out.
func TestProbeAllHeadroom(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		a := closingServer(t, "127.0.0.2:8080")
		b := closingServer(t, "127.0.0.2:8081")
		build(t, "tcp", netip.MustParseAddr("127.0.0.1"), a, 4, 3)
		build(t, "tcp", netip.MustParseAddr("127.0.0.1"), b, 2, 0)
		build(t, "tcp", netip.MustParseAddr("127.0.0.3"), a, 1, 1)
		hs, err := safedial.ProbeAllHeadroom(context.Background(), "tcp")
		if err != nil {
			t.Fatal(err)
		}
		r := safedial.PortRange{Lo: 40000, Hi: 40099}
		want := []safedial.Headroom{
			{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort(a), Range: r, InUse: 4, TimeWait: 3, Free: 93},
			{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort(b), Range: r, InUse: 2, Free: 98},
			{Source: netip.MustParseAddr("127.0.0.3"), Dest: netip.MustParseAddrPort(a), Range: r, InUse: 1, TimeWait: 1, Free: 98},
		}
		if diff := cmp.Diff(want, hs, netipCmp); diff != "" {
			t.Errorf("ProbeAllHeadroom (-want +got):\n%s", diff)
		}
		if _, err := safedial.ProbeAllHeadroom(context.Background(), "sctp"); err == nil || errors.Is(err, errors.ErrUnsupported) {
			t.Errorf("unknown network: %v, want a clear error", err)
		}
	})
}

// TestDialerHeadroomRoutedSource: without a source, Headroom asks the
// routing (RTM_GETROUTE) and opens no socket: it answers even when every UDP
// port is taken.
func TestDialerHeadroomRoutedSource(t *testing.T) {
	inNamespace(t, 40000, 40009, func(t *testing.T) {
		for range 10 {
			c, err := net.ListenPacket("udp4", "0.0.0.0:0")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		if c, err := net.Dial("udp4", "127.0.0.2:53"); err == nil {
			c.Close()
			t.Fatal("the UDP ports are not exhausted: the test proves nothing")
		}
		dst := closingServer(t, "127.0.0.2:8080")
		hs, err := (&safedial.Dialer{}).Headroom(context.Background(), "tcp", dst)
		if err != nil {
			t.Fatalf("Headroom with every UDP port taken: %v", err)
		}
		want := []safedial.Headroom{{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort(dst), Range: safedial.PortRange{Lo: 40000, Hi: 40009}, Free: 10}}
		if diff := cmp.Diff(want, hs, netipCmp); diff != "" {
			t.Errorf("Headroom (-want +got):\n%s", diff)
		}
	})
}

// TestDialerHeadroomWidePortRange: a PortRange wider than the namespace
// range gives the kernel only their intersection; the ports outside it are
// never handed out (Reserved), and Free is what the dials then get. A
// PortRange outside the namespace range is the dial's configuration error.
func TestDialerHeadroomWidePortRange(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		tcpDst := closingServer(t, "127.0.0.2:5432")
		udpDst := udpEcho(t, "127.0.0.2:9000")[0]
		r := safedial.PortRange{Lo: 39950, Hi: 40049}
		for _, tc := range []struct {
			network, dst string
			d            *safedial.Dialer
		}{
			{"tcp", tcpDst, &safedial.Dialer{PortRange: r}},
			{"tcp", tcpDst, &safedial.Dialer{PortRange: r, Sources: mustAddrs("127.0.0.3")}},
			{"udp", udpDst, &safedial.Dialer{PortRange: r, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}},
			{"udp", udpDst, &safedial.Dialer{PortRange: r}},
		} {
			t.Run("", func(t *testing.T) { // its connections closed when it ends
				hs, err := tc.d.Headroom(context.Background(), tc.network, tc.dst)
				if err != nil || len(hs) != 1 {
					t.Fatalf("Headroom(%s, %s): %+v, %v", tc.network, tc.dst, hs, err)
				}
				h := hs[0]
				if h.Range != r || h.Reserved != 50 || h.Free != 50 || h.InUse+h.TimeWait+h.Reserved+h.Bound+h.Free != 100 {
					t.Errorf("Headroom(%s, %s) with PortRange %v in namespace range 40000-40099 = %+v, want Reserved 50 (below the namespace range), Free 50", tc.network, tc.dst, r, h)
				}
				n, err := fill(t, tc.d.DialContext, tc.network, []string{tc.dst}, 200)
				if n != h.Free || !errors.Is(err, safedial.ErrEphemeralExhausted) {
					t.Errorf("%s dials from %v: %d, then %v; Headroom said Free %d", tc.network, h.Source, n, err, h.Free)
				} else if !strings.Contains(err.Error(), "range 39950-40049 (the kernel uses only 40000-40049,") {
					t.Errorf("%s exhaustion %q does not say that the kernel uses only 40000-40049", tc.network, err)
				}
			})
		}
		out := &safedial.Dialer{PortRange: safedial.PortRange{Lo: 30000, Hi: 30099}}
		if _, err := out.Headroom(context.Background(), "tcp", tcpDst); !errors.Is(err, safedial.ErrInvalidConfig) {
			t.Errorf("Headroom with a PortRange outside the namespace range: %v, want ErrInvalidConfig", err)
		}
	})
}

// TestDialerHeadroomUnspecifiedDest: Dial accepts ":8080" and
// "0.0.0.0:8080" (the kernel connects to this host: the source itself for
// IPv4, ::1 for IPv6), so Headroom must too, and report the pair the
// kernel makes, with Free what the dials then get.
func TestDialerHeadroomUnspecifiedDest(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		closingServer(t, ":8080") // every address, both families
		udpEcho(t, ":9000")
		for _, tc := range []struct {
			network, addr string
			d             *safedial.Dialer
			src, peer     string
		}{
			{"tcp", ":8080", &safedial.Dialer{}, "127.0.0.1", "127.0.0.1:8080"},
			{"tcp4", "0.0.0.0:8080", &safedial.Dialer{Sources: mustAddrs("127.0.0.3")}, "127.0.0.3", "127.0.0.3:8080"},
			{"tcp6", "[::]:8080", &safedial.Dialer{}, "::1", "[::1]:8080"},
			{"udp", ":9000", &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 5)}}}, "127.0.0.5", "127.0.0.5:9000"},
		} {
			t.Run("", func(t *testing.T) { // its connections closed when it ends
				hs, err := tc.d.Headroom(context.Background(), tc.network, tc.addr)
				if err != nil || len(hs) != 1 {
					t.Fatalf("Headroom(%s, %s) = %+v, %v; want one entry", tc.network, tc.addr, hs, err)
				}
				h := hs[0]
				if h.Source != netip.MustParseAddr(tc.src) || h.Dest != netip.MustParseAddrPort(tc.peer) || h.Free != 100 {
					t.Errorf("Headroom(%s, %s) = %+v, want %s -> %s, Free 100", tc.network, tc.addr, h, tc.src, tc.peer)
				}
				conns, err := fillConns(t, tc.d.DialContext, tc.network, []string{tc.addr}, 200)
				if len(conns) != h.Free || !errors.Is(err, safedial.ErrEphemeralExhausted) {
					t.Errorf("%s dials to %s: %d, then %v; Headroom said Free %d", tc.network, tc.addr, len(conns), err, h.Free)
				}
				if len(conns) > 0 && netip.MustParseAddrPort(conns[0].RemoteAddr().String()) != h.Dest {
					t.Errorf("the kernel connected to %v; Headroom said %v", conns[0].RemoteAddr(), h.Dest)
				}
			})
		}
	})
}

// TestProbeHeadroomNotLocalNoRoute: in a namespace without a default route,
// the routing answers "unreachable" for an address not of this host, and a
// zone's interface lists its addresses: a source that is not this host's,
// with or without a zone, is ErrSourceNotLocal, never "every port free".
func TestProbeHeadroomNotLocalNoRoute(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		addLinkLocal(t) // fe80::1/64 on lo
		for _, tc := range []struct {
			src, dst string
			local    bool
		}{
			{"192.0.2.1", "127.0.0.2:80", false},
			{"2001:db8::1", "[::1]:80", false},
			{"fe80::dead%lo", "[fe80::2%lo]:80", false},
			{"fe80::dead", "[fe80::2]:80", false},
			{"::1%lo", "[::1]:80", true},
			{"fe80::1%lo", "[fe80::2%lo]:80", true},
			{"fe80::1", "[fe80::2]:80", true},
			{"fe80::1%1", "[fe80::2]:80", true}, // lo is interface 1
		} {
			for _, network := range []string{"tcp", "udp"} {
				h, err := safedial.ProbeHeadroom(context.Background(), network, netip.MustParseAddr(tc.src), netip.MustParseAddrPort(tc.dst))
				if tc.local && (err != nil || h.Free != 100) {
					t.Errorf("ProbeHeadroom(%s, %s, %s) = %+v, %v; want Free 100", network, tc.src, tc.dst, h, err)
				}
				if !tc.local && !errors.Is(err, safedial.ErrSourceNotLocal) {
					t.Errorf("ProbeHeadroom(%s, %s, %s) = %+v, %v; want ErrSourceNotLocal", network, tc.src, tc.dst, h, err)
				}
			}
		}
		d := &safedial.Dialer{Sources: mustAddrs("fe80::dead%lo")}
		if hs, err := d.Headroom(context.Background(), "udp", "[fe80::2%lo]:53"); !errors.Is(err, safedial.ErrSourceNotLocal) {
			t.Errorf("Dialer.Headroom from fe80::dead%%lo = %+v, %v; want ErrSourceNotLocal", hs, err)
		}
	})
}

// TestDialerHeadroomBindFirst: a Dialer with DisableBindNoPort binds src:0
// before connecting, and bind() must pick a port no TCP socket on src (or
// on the wildcard address) holds, whatever its destination and state;
// sockets on other addresses do not matter. Free must be what its dials
// then get.
func TestDialerHeadroomBindFirst(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		a := closingServer(t, "127.0.0.2:5432")
		b := closingServer(t, "127.0.0.4:5432")
		src := netip.MustParseAddr("127.0.0.1")
		ln, err := net.Listen("tcp4", "0.0.0.0:40090") // first: no connection takes its port
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		build(t, "tcp", src, a, 30, 10)                             // toward another destination
		build(t, "tcp", netip.MustParseAddr("127.0.0.3"), a, 20, 0) // from another address
		d := &safedial.Dialer{DisableBindNoPort: true, Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}}
		hs, err := d.Headroom(context.Background(), "tcp", b)
		if err != nil || len(hs) != 1 {
			t.Fatalf("Headroom: %+v, %v", hs, err)
		}
		h := hs[0]
		want := safedial.Headroom{Source: src, Dest: netip.MustParseAddrPort(b), Range: safedial.PortRange{Lo: 40000, Hi: 40099}, InUse: 30, TimeWait: 10, Bound: 1, Free: 59}
		if diff := cmp.Diff(want, h, netipCmp); diff != "" {
			t.Errorf("Headroom of a Dialer that binds first (-want +got):\n%s", diff)
		}
		n, err := fill(t, d.DialContext, "tcp", []string{b}, 200)
		if n != h.Free || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Errorf("dials that bind first: %d, then %v; Headroom said Free %d", n, err, h.Free)
		}
	})
}

// TestDialerHeadroomPoolNotLocal: a pool's dials fail over from a source
// that is not (or no longer) an address of this host; its Headroom leaves
// that source out instead of failing for every source, and fails with
// ErrSourceNotLocal only when no source is left.
func TestDialerHeadroomPoolNotLocal(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dst := closingServer(t, "127.0.0.2:5432")
		d := &safedial.Dialer{Sources: mustAddrs("192.0.2.1", "127.0.0.1")}
		hs, err := d.Headroom(context.Background(), "tcp", dst)
		if err != nil || len(hs) != 1 || hs[0].Source != netip.MustParseAddr("127.0.0.1") || hs[0].Free != 100 {
			t.Errorf("Headroom of a pool with a source not of this host: %+v, %v; want 127.0.0.1's alone, Free 100", hs, err)
		}
		if c, err := d.Dial("tcp", dst); err != nil {
			t.Errorf("the pool's dial: %v", err)
		} else {
			c.Close()
		}
		only := &safedial.Dialer{Sources: mustAddrs("192.0.2.1")}
		if hs, err := only.Headroom(context.Background(), "tcp", dst); !errors.Is(err, safedial.ErrSourceNotLocal) {
			t.Errorf("Headroom of a pool with no local source: %+v, %v; want ErrSourceNotLocal", hs, err)
		}
	})
}
