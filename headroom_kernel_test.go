//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/sys/unix"
)

// A family of the kernel-equality tests: addresses, and whether the sockets
// are dual-stack AF_INET6 sockets with IPv4-mapped addresses.
type family struct {
	name        string
	src, other  netip.Addr // the pair's source; another local address
	dst, elsewh netip.Addr // the pair's destination host; another one
	dual        bool
	oldKernel   bool // probe as on a kernel without INET_DIAG_BC_CGROUP_COND
	// A pair of addresses on lo that are not loopback addresses, for
	// tcp_tw_reuse=2, which reuses only loopback pairs' TIME_WAIT.
	awaySrc, awayDst netip.Addr
}

var families = []family{
	{name: "ipv4", src: netip.MustParseAddr("127.0.0.9"), other: netip.MustParseAddr("127.0.0.3"), dst: netip.MustParseAddr("127.0.0.2"), elsewh: netip.MustParseAddr("127.0.0.4"),
		awaySrc: netip.MustParseAddr("10.1.0.9"), awayDst: netip.MustParseAddr("10.1.0.2")},
	{name: "ipv6", src: netip.MustParseAddr("fd00::9"), other: netip.MustParseAddr("fd00::3"), dst: netip.MustParseAddr("::1"), elsewh: netip.MustParseAddr("fd00::4"),
		awaySrc: netip.MustParseAddr("fd00::9"), awayDst: netip.MustParseAddr("fd00::2")},
	{name: "dual-stack", src: netip.MustParseAddr("127.0.0.9"), other: netip.MustParseAddr("127.0.0.3"), dst: netip.MustParseAddr("127.0.0.2"), elsewh: netip.MustParseAddr("127.0.0.4"), dual: true,
		awaySrc: netip.MustParseAddr("10.1.0.9"), awayDst: netip.MustParseAddr("10.1.0.2")},
	{name: "ipv4-before-5.9", src: netip.MustParseAddr("127.0.0.9"), other: netip.MustParseAddr("127.0.0.3"), dst: netip.MustParseAddr("127.0.0.2"), elsewh: netip.MustParseAddr("127.0.0.4"), oldKernel: true,
		awaySrc: netip.MustParseAddr("10.1.0.9"), awayDst: netip.MustParseAddr("10.1.0.2")},
}

// sockaddrOf is a in f's socket family.
func (f family) sockaddr(a netip.Addr, port uint16) unix.Sockaddr {
	if a.Is4() && !f.dual {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(port)}
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: int(port)}
}

func (f family) socket(t *testing.T, typ int) int {
	t.Helper()
	fam := unix.AF_INET
	if f.src.Is6() || f.dual {
		fam = unix.AF_INET6
	}
	s, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// connect makes a TCP connection from src to dst in f's socket family; with
// noPort the port is chosen at connect (IP_BIND_ADDRESS_NO_PORT), as
// safedial dials, else at bind, as net.Dialer with a LocalAddr does. The
// socket is closed when the test ends, unless the caller closes it.
func (f family) connect(t *testing.T, src netip.Addr, dst netip.AddrPort, noPort bool) (int, error) {
	t.Helper()
	s := f.socket(t, unix.SOCK_STREAM)
	t.Cleanup(func() { unix.Close(s) })
	if noPort {
		if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Bind(s, f.sockaddr(src, 0)); err != nil {
		return s, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Connect(s, f.sockaddr(dst.Addr(), dst.Port())); err != nil {
		return s, fmt.Errorf("connect: %w", err)
	}
	return s, nil
}

// accepted dials from src to dst as safedial does until the kernel refuses
// (EADDRNOTAVAIL), and returns how many connections it accepted.
func (f family) accepted(t *testing.T, src netip.Addr, dst netip.AddrPort) int {
	t.Helper()
	for n := 0; ; n++ {
		if _, err := f.connect(t, src, dst, true); err != nil {
			if !errors.Is(err, unix.EADDRNOTAVAIL) {
				t.Fatalf("dial %d from %v to %v: %v, want success or EADDRNOTAVAIL", n, src, dst, err)
			}
			return n
		}
		if n > 70000 {
			t.Fatal("the kernel never refused")
		}
	}
}

// pairOf builds est held connections and tw connections in TIME_WAIT from
// src to dst (connect-chosen ports), and waits until ss sees the TIME_WAIT
// ones.
func (f family) pairOf(t *testing.T, src netip.Addr, dst netip.AddrPort, est, tw int, closed <-chan struct{}) {
	t.Helper()
	for i := range est + tw {
		s, err := f.connect(t, src, dst, true)
		if err != nil {
			t.Fatalf("connection %d from %v to %v: %v", i, src, dst, err)
		}
		if i >= est {
			unix.Close(s)
			<-closed // the server closed its side: ours goes to TIME_WAIT
		}
	}
	// Until the client has processed each server's FIN (under load, some
	// time after <-closed), a closed socket is in FIN_WAIT2, not TIME_WAIT.
	// (With tcp_tw_reuse, later connections may have reused TIME_WAIT
	// 4-tuples: fewer than tw remain.)
	needSS(t)
	for end := time.Now().Add(10 * time.Second); ; {
		all, n := ssCount(t, "src", ssAddr(src), "dst", ssAddr(dst.Addr())+":"+strconv.Itoa(int(dst.Port())))
		if all == est+n {
			return
		} else if time.Now().After(end) {
			t.Fatalf("ss sees %d sockets from %v to %v, %d of them in TIME_WAIT, 10 s after the closes; want %d held and the rest in TIME_WAIT", all, src, dst, n, est)
		}
	}
}

// addAddrs adds the addresses of the tests to lo, and waits until the
// routing takes each for local: the kernel adds the local route from a work
// queue, after the command returns (until then, packets to the address are
// routed out of lo and back, and refused as unreachable).
func addAddrs(t *testing.T, as ...netip.Addr) {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("iproute2's ip is needed to add addresses to lo (CI=true, so this fails instead of skipping): %v", err)
		}
		t.Skipf("iproute2's ip is needed to add addresses to lo: %v", err)
	}
	slices.SortFunc(as, netip.Addr.Compare)
	as = slices.Compact(as)
	for _, a := range as {
		if a.IsLoopback() {
			continue
		}
		args := []string{"-6", "addr", "add", a.String() + "/128", "dev", "lo", "nodad"}
		if a.Is4() {
			args = []string{"-4", "addr", "add", a.String() + "/32", "dev", "lo"}
		}
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	for _, a := range as {
		if a.IsLoopback() {
			continue
		}
		waitLocal(t, a.String())
	}
}

// nsConfig is a namespace with range lo-hi and net.ipv4.tcp_tw_reuse set.
func nsConfig(lo, hi uint16, twReuse int) netns.Config {
	return netns.Config{PortLo: lo, PortHi: hi, TWReuse: twReuse}
}

func writeSysctl(t *testing.T, name, value string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0); err != nil {
		t.Fatalf("set %s=%s in the test's namespace: %v", name, value, err)
	}
}

// TestHeadroomEqualsKernel builds each case of issue 14's table in a fresh
// namespace (range 40000-40099; 30 connections held and 30 in TIME_WAIT
// toward the pair unless said otherwise), in IPv4, IPv6 and dual-stack
// (AF_INET6 sockets with IPv4-mapped addresses), probes, then dials from the
// pair's source to its destination until the kernel refuses: Free must be
// the number of connections the kernel accepted, and the five counts must
// add up to the range.
func TestHeadroomEqualsKernel(t *testing.T) {
	type want struct{ inUse, timeWait, reserved, bound, free int }
	cases := []struct {
		name    string
		twReuse int // net.ipv4.tcp_tw_reuse
		setup   func(t *testing.T, f family)
		noPair  bool // the pair has no connection
		away    bool // the pair is awaySrc -> awayDst
		want    want
		reuse   bool // TimeWaitReusable
	}{
		{name: "plain", want: want{30, 30, 0, 0, 40}},
		{name: "reserved", setup: func(t *testing.T, f family) {
			writeSysctl(t, "net/ipv4/ip_local_reserved_ports", "40090-40099")
		}, want: want{30, 30, 10, 0, 30}},
		{name: "listener-other-address", setup: func(t *testing.T, f family) {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(f.other, 40050).String())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}, want: want{30, 30, 0, 1, 39}},
		{name: "listener-other-family", setup: func(t *testing.T, f family) {
			// TCP ports are one space for IPv4 and IPv6.
			other := "127.0.0.3:40050"
			if f.src.Is4() {
				other = "[::1]:40050"
			}
			ln, err := net.Listen("tcp", other)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}, want: want{30, 30, 0, 1, 39}},
		{name: "bound-wildcard", setup: func(t *testing.T, f family) {
			s := f.socket(t, unix.SOCK_STREAM)
			t.Cleanup(func() { unix.Close(s) })
			wild := netip.IPv4Unspecified()
			if f.src.Is6() || f.dual {
				wild = netip.IPv6Unspecified()
			}
			if err := unix.Bind(s, f.sockaddr(wild, 40050)); err != nil {
				t.Fatal(err)
			}
		}, want: want{30, 30, 0, 1, 39}},
		{name: "pinned-elsewhere", noPair: true, setup: func(t *testing.T, f family) {
			// 50 sockets bound to other:0 without IP_BIND_ADDRESS_NO_PORT,
			// connected to another destination.
			elsewhere, _ := netnstest.EOFServer(t, netip.AddrPortFrom(f.elsewh, 80).String())
			for i := range 50 {
				if _, err := f.connect(t, f.other, netip.MustParseAddrPort(elsewhere), false); err != nil {
					t.Fatalf("pinned socket %d: %v", i, err)
				}
			}
		}, want: want{0, 0, 0, 50, 50}},
		{name: "explicit-port-connected", setup: func(t *testing.T, f family) {
			// Bound to an explicit port on the source the routing picks
			// for its destination, then connected: seen by how it was
			// bound (INET_DIAG_BC_AUTO), not by its addresses.
			elsewhere, _ := netnstest.EOFServer(t, netip.AddrPortFrom(f.elsewh, 80).String())
			routed := netip.MustParseAddr("127.0.0.1")
			if f.elsewh.Is6() {
				routed = f.elsewh
			}
			s := f.socket(t, unix.SOCK_STREAM)
			t.Cleanup(func() { unix.Close(s) })
			to := netip.MustParseAddrPort(elsewhere)
			if err := unix.Bind(s, f.sockaddr(routed, 40050)); err != nil {
				t.Fatal(err)
			}
			if err := unix.Connect(s, f.sockaddr(to.Addr(), to.Port())); err != nil {
				t.Fatal(err)
			}
		}, want: want{30, 30, 0, 1, 39}},
		{name: "tw_reuse=1", twReuse: 1, setup: func(t *testing.T, f family) {
			writeSysctl(t, "net/ipv4/tcp_tw_reuse_delay", "1")
		}, want: want{30, 0, 0, 0, 70}, reuse: true},
		{name: "tw_reuse=2", twReuse: 2, setup: func(t *testing.T, f family) {
			writeSysctl(t, "net/ipv4/tcp_tw_reuse_delay", "1")
		}, want: want{30, 0, 0, 0, 70}, reuse: true},
		{name: "tw_reuse=2-not-loopback", twReuse: 2, away: true, setup: func(t *testing.T, f family) {
			writeSysctl(t, "net/ipv4/tcp_tw_reuse_delay", "1")
		}, want: want{30, 30, 0, 0, 40}},
		{name: "tw_reuse=1-young", twReuse: 1, setup: func(t *testing.T, f family) {
			writeSysctl(t, "net/ipv4/tcp_tw_reuse_delay", "60000")
		}, want: want{30, 30, 0, 0, 40}, reuse: true},
	}
	for _, f := range families {
		for _, tc := range cases {
			t.Run(f.name+"/"+tc.name, func(t *testing.T) {
				netnstest.Run(t, nsConfig(40000, 40099, tc.twReuse), func(t *testing.T) {
					needIPv6(t)
					if _, err := os.Stat("/proc/sys/net/ipv4/tcp_tw_reuse_delay"); err != nil && tc.twReuse != 0 {
						t.Skip("this kernel has no net.ipv4.tcp_tw_reuse_delay (Linux 6.13+): the test would wait a second per case")
					}
					addAddrs(t, f.src, f.other, f.elsewh, f.awaySrc, f.awayDst)
					src, dstHost := f.src, f.dst
					if tc.away {
						src, dstHost = f.awaySrc, f.awayDst
					}
					dstAddr, closed := netnstest.EOFServer(t, netip.AddrPortFrom(dstHost, 5432).String())
					dst := netip.MustParseAddrPort(dstAddr)
					if tc.setup != nil {
						tc.setup(t, f)
					}
					if !tc.noPair {
						f.pairOf(t, src, dst, 30, 30, closed)
					}
					if tc.twReuse != 0 {
						// TIME_WAIT sockets are reused once older than
						// tcp_tw_reuse_delay (1 ms here): real time, which
						// only waiting provides.
						time.Sleep(20 * time.Millisecond)
					}
					if f.oldKernel {
						defer safedial.WithoutCgroupCond()()
					}
					h, err := safedial.ProbeHeadroom(context.Background(), "tcp", src, dst)
					if err != nil {
						t.Fatal(err)
					}
					got := want{h.InUse, h.TimeWait, h.Reserved, h.Bound, h.Free}
					if got != tc.want || h.TimeWaitReusable != tc.reuse {
						t.Errorf("ProbeHeadroom = %+v (TimeWaitReusable %v), want %+v (%v)", got, h.TimeWaitReusable, tc.want, tc.reuse)
					}
					if sum := h.InUse + h.TimeWait + h.Reserved + h.Bound + h.Free; sum != 100 {
						t.Errorf("the five counts add up to %d, want the range's 100", sum)
					}
					all, err := safedial.ProbeAllHeadroom(context.Background(), "tcp")
					if err != nil {
						t.Fatal(err)
					}
					for _, a := range all {
						if a.Source == src && a.Dest == dst && a != h {
							t.Errorf("ProbeAllHeadroom says %+v, ProbeHeadroom %+v", a, h)
						}
					}
					if n := f.accepted(t, src, dst); n != h.Free {
						t.Errorf("the kernel accepted %d connections from %v to %v; ProbeHeadroom said Free %d (%+v)", n, src, dst, h.Free, h)
					} else {
						t.Logf("%s %s: ProbeHeadroom Free %d, the kernel accepted %d (%+v)", f.name, tc.name, h.Free, n, got)
					}
				})
			})
		}
	}
}

// TestHeadroomUDPWildcards: UDP sockets on 0.0.0.0:P and on [::]:P (Go's
// ListenPacket("udp", ":0"), dual-stack) hold P for every IPv4 source, and
// [::]:P (IPv6-only or not) for every IPv6 one. Free must be what the kernel
// then accepts from a socket bound to the source, as safedial dials UDP.
func TestHeadroomUDPWildcards(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		hold := func(network, laddr string, n int) {
			for range n {
				c, err := net.ListenPacket(network, laddr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
			}
		}
		for i := range 5 {
			c, err := (&net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}).Dial("udp", fmt.Sprintf("127.0.0.2:%d", 53+i))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		hold("udp", ":0", 3)           // [::]:P, dual-stack
		hold("udp4", "0.0.0.0:0", 2)   // 0.0.0.0:P
		hold("udp6", "[::]:0", 1)      // [::]:P, IPv6-only
		hold("udp4", "127.0.0.5:0", 4) // another source

		for _, tc := range []struct {
			src         netip.Addr
			inUse, free int
		}{
			{netip.MustParseAddr("127.0.0.1"), 10, 90}, // its 5, 3 dual-stack, 2 on 0.0.0.0
			{netip.MustParseAddr("::1"), 4, 96},        // the 4 on [::]
		} {
			dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), 9)
			if tc.src.Is6() {
				dst = netip.MustParseAddrPort("[::1]:9")
			}
			h, err := safedial.ProbeHeadroom(context.Background(), "udp", tc.src, dst)
			if err != nil {
				t.Fatal(err)
			}
			if h.InUse != tc.inUse || h.Free != tc.free || h.InUse+h.TimeWait+h.Reserved+h.Bound+h.Free != 100 {
				t.Errorf("UDP headroom of %v: %+v, want %d in use, %d free", tc.src, h, tc.inUse, tc.free)
			}
			if n := acceptedUDP(t, tc.src, dst); n != h.Free {
				t.Errorf("the kernel accepted %d UDP sockets from %v; ProbeHeadroom said Free %d", n, tc.src, h.Free)
			} else {
				t.Logf("UDP from %v: ProbeHeadroom Free %d, the kernel accepted %d", tc.src, h.Free, n)
			}
		}
	})
}

// TestProbeAllHeadroomUDP: wildcard sockets count against each source of
// the family they cover, not as rows of their own; alone, they show as the
// wildcard address.
func TestProbeAllHeadroomUDP(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		for _, la := range []struct {
			network, addr string
			n             int
		}{{"udp4", "127.0.0.1:0", 5}, {"udp4", "127.0.0.5:0", 4}, {"udp", ":0", 3}, {"udp4", "0.0.0.0:0", 2}, {"udp6", "[::]:0", 1}} {
			for range la.n {
				c, err := net.ListenPacket(la.network, la.addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
			}
		}
		hs, err := safedial.ProbeAllHeadroom(context.Background(), "udp")
		if err != nil {
			t.Fatal(err)
		}
		r := safedial.PortRange{Lo: 40000, Hi: 40099}
		want := []safedial.Headroom{
			{Source: netip.MustParseAddr("127.0.0.1"), Range: r, InUse: 10, Free: 90},
			{Source: netip.MustParseAddr("127.0.0.5"), Range: r, InUse: 9, Free: 91},
			{Source: netip.IPv6Unspecified(), Range: r, InUse: 4, Free: 96},
		}
		if diff := cmp.Diff(want, hs, netipCmp); diff != "" {
			t.Errorf("ProbeAllHeadroom(udp) (-want +got):\n%s", diff)
		}
	})
}

// acceptedUDP connects UDP sockets bound to src (IP_BIND_ADDRESS_NO_PORT, as
// safedial dials) to dst until the kernel refuses (EAGAIN).
func acceptedUDP(t *testing.T, src netip.Addr, dst netip.AddrPort) int {
	t.Helper()
	f := family{src: src}
	for n := 0; ; n++ {
		s := f.socket(t, unix.SOCK_DGRAM)
		t.Cleanup(func() { unix.Close(s) })
		if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(s, f.sockaddr(src, 0)); err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(s, f.sockaddr(dst.Addr(), dst.Port())); err != nil {
			if !errors.Is(err, unix.EAGAIN) {
				t.Fatalf("UDP socket %d from %v: %v, want success or EAGAIN", n, src, err)
			}
			return n
		}
	}
}

// TestHeadroomIdleSockets: the ports of bound-inactive TCP sockets (bound,
// neither listening nor connected) are read at most once a second; once
// read again, a socket bound since counts in Bound.
func TestHeadroomIdleSockets(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dst := netip.MustParseAddrPort(closingServer(t, "127.0.0.2:5432"))
		src := netip.MustParseAddr("127.0.0.1")
		probe := func() safedial.Headroom {
			t.Helper()
			h, err := safedial.ProbeHeadroom(context.Background(), "tcp", src, dst)
			if err != nil {
				t.Fatal(err)
			}
			return h
		}
		if h := probe(); h.Bound != 0 || h.Free != 100 {
			t.Fatalf("an empty namespace: %+v", h)
		}
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(s)
		if err := unix.Bind(s, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 7}}); err != nil { // an automatic port of the range
			t.Fatal(err)
		}
		safedial.ForgetIdlePorts() // as a second's wait would
		if h := probe(); h.Bound != 1 || h.Free != 99 {
			t.Errorf("with a socket bound to 127.0.0.7:0: %+v, want Bound 1, Free 99", h)
		}
		if n := (family{src: src}).accepted(t, src, dst); n != 99 {
			t.Errorf("the kernel accepted %d, want 99", n)
		}
	})
}

// TestDialerHeadroomUnboundUDP: a Dialer without a source dials UDP from an
// unbound socket, whose port no UDP socket of the family may hold on any
// address (an IPv6 "udp" socket is dual-stack: IPv4 sockets count too;
// "udp6" is IPv6-only). Free must be what the kernel then accepts.
func TestDialerHeadroomUnboundUDP(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		// Ports held: by the IPv4 sockets, by those on IPv6 addresses,
		// and by [::]. (An IPv4 and an IPv6-only socket may share a port.)
		ports := map[string]map[int]bool{"v4": {}, "v6": {}, "wild": {}}
		for _, la := range []struct {
			network, addr, kind string
			n                   int
		}{{"udp4", "127.0.0.5:0", "v4", 5}, {"udp6", "[::1]:0", "v6", 3}, {"udp", "[::1]:0", "v6", 2}, {"udp", ":0", "wild", 1}} {
			for range la.n {
				c, err := net.ListenPacket(la.network, la.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				ports[la.kind][c.LocalAddr().(*net.UDPAddr).Port] = true
			}
		}
		held := func(kinds ...string) int {
			all := map[int]bool{}
			for _, k := range kinds {
				maps.Copy(all, ports[k])
			}
			return len(all)
		}
		// A bind to a specific IPv6 address makes the socket IPv6-only
		// (the kernel sets it), whatever the network: only [::] is
		// dual-stack here.
		for _, tc := range []struct {
			network, dst string
			free         int
		}{
			{"udp", "127.0.0.2:53", 100 - held("v4", "wild")},
			{"udp4", "127.0.0.2:53", 100 - held("v4", "wild")},
			{"udp", "[::1]:53", 100 - held("v4", "v6", "wild")}, // dual-stack: all
			{"udp6", "[::1]:53", 100 - held("v6", "wild")},
		} {
			hs, err := (&safedial.Dialer{}).Headroom(context.Background(), tc.network, tc.dst)
			if err != nil {
				t.Fatal(err)
			}
			if len(hs) != 1 || hs[0].Free != tc.free {
				t.Errorf("Headroom(%s, %s) = %+v, want Free %d", tc.network, tc.dst, hs, tc.free)
			}
			n := 0
			var conns []net.Conn
			for {
				c, err := net.Dial(tc.network, tc.dst)
				if err != nil {
					if !errors.Is(err, unix.EAGAIN) {
						t.Fatalf("dial %s %s: %v, want EAGAIN at the end", tc.network, tc.dst, err)
					}
					break
				}
				conns = append(conns, c)
				n++
			}
			for _, c := range conns {
				c.Close()
			}
			if len(hs) == 1 && n != hs[0].Free {
				t.Errorf("the kernel accepted %d unbound %s sockets to %s; Headroom said Free %d", n, tc.network, tc.dst, hs[0].Free)
			} else {
				t.Logf("unbound %s to %s: Headroom Free %d, the kernel accepted %d", tc.network, tc.dst, hs[0].Free, n)
			}
		}
	})
}
