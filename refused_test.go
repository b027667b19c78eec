//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// refuseSockopt installs a seccomp filter on every thread of this process
// (the test's namespace child: the filter dies with it) that makes
// setsockopt(level, opt) fail with errno, as a sandbox or an old kernel
// would. Other system calls and options are untouched. amd64 and arm64 only:
// elsewhere the test skips, or fails with CI=true.
func refuseSockopt(t *testing.T, level, opt int, errno syscall.Errno) {
	t.Helper()
	var arch uint32
	switch runtime.GOARCH {
	case "amd64":
		arch = unix.AUDIT_ARCH_X86_64
	case "arm64":
		arch = unix.AUDIT_ARCH_AARCH64
	default:
		if os.Getenv("CI") == "true" {
			t.Fatalf("no seccomp filter for GOARCH=%s (CI=true, so this fails instead of skipping)", runtime.GOARCH)
		}
		t.Skipf("no seccomp filter for GOARCH=%s", runtime.GOARCH)
	}
	// struct seccomp_data: nr at 0, arch at 4, args[i] at 16+8i (the low
	// 32 bits first on these little-endian systems).
	const (
		ld  = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret = unix.BPF_RET | unix.BPF_K
	)
	prog := []unix.SockFilter{
		{Code: ld, K: 4},
		{Code: jeq, K: arch, Jf: 7},
		{Code: ld, K: 0},
		{Code: jeq, K: unix.SYS_SETSOCKOPT, Jf: 5},
		{Code: ld, K: 16 + 8*1},
		{Code: jeq, K: uint32(level), Jf: 3},
		{Code: ld, K: 16 + 8*2},
		{Code: jeq, K: uint32(opt), Jf: 1},
		{Code: ret, K: unix.SECCOMP_RET_ERRNO | uint32(errno)},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		t.Fatalf("prctl(PR_SET_NO_NEW_PRIVS): %v", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		t.Fatalf("seccomp(SET_MODE_FILTER, TSYNC): %v", e)
	}
	// The filter works: the option is refused now.
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.SetsockoptInt(s, level, opt, 1); err != errno {
		t.Fatalf("setsockopt under the filter: %v, want %v", err, errno)
	}
}

// TestRefusedBindNoPort: with IP_BIND_ADDRESS_NO_PORT refused (ENOPROTOOPT,
// as from a kernel before 4.2), every kind of bound dial goes on as
// net.Dialer's would: a bound source holds exactly what net.Dialer's does
// (100, not 0), the exhaustion says why, the refusal is counted and reported
// once.
func TestRefusedBindNoPort(t *testing.T) {
	const lo, hi = 40000, 40099
	dests := func(t *testing.T) []string {
		return servers(t, "tcp", []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, []int{8080, 8081})
	}
	src := tcpAddr("127.0.0.1:0")
	t.Run("capacity", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			refuseSockopt(t, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, unix.ENOPROTOOPT)
			dsts := dests(t)
			var refusals []string
			d := &safedial.Dialer{Base: net.Dialer{LocalAddr: src}, OnRefused: func(e *safedial.RefusedError) {
				refusals = append(refusals, e.Error())
			}}
			n, err := fill(t, d.DialContext, "tcp", dsts, 700)
			if n != 100 {
				t.Errorf("connections = %d, want 100, as net.Dialer{LocalAddr} holds", n)
			}
			if diff := cmp.Diff(exhaustedChain("tcp", "bind", "EADDRINUSE"), chain(err)); diff != "" {
				t.Errorf("101st dial: error chain (-want +got):\n%s", diff)
			}
			want := "IP_BIND_ADDRESS_NO_PORT was refused by this system (setsockopt: protocol not available): a bound source is capped at one connection per port"
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("101st dial: %v\nwant it to say %q", err, want)
			}
			var ee *safedial.ExhaustedError
			if errors.As(err, &ee) && (ee.Refused == nil || ee.Refused.Option != "IP_BIND_ADDRESS_NO_PORT" || !errors.Is(ee.Refused, syscall.ENOPROTOOPT)) {
				t.Errorf("ExhaustedError.Refused = %v, want the ENOPROTOOPT refusal", ee.Refused)
			}
			if diff := cmp.Diff([]string{want}, refusals); diff != "" {
				t.Errorf("OnRefused calls (-want +got):\n%s", diff)
			}
			if st := d.Stats(); st.Dials != 101 || st.Succeeded != 100 || st.Exhausted != 1 || st.Refused != 101 {
				t.Errorf("Stats = %+v, want 101 dials, 100 succeeded, 1 exhausted, 101 refused", st)
			}

			// net.Dialer in the same process, for comparison, in a fresh
			// range of destinations: it also holds 100 per source.
			nd := &net.Dialer{LocalAddr: tcpAddr("127.0.0.4:0")}
			if n, err := fill(t, nd.DialContext, "tcp", dsts, 700); n != 100 {
				t.Errorf("net.Dialer from 127.0.0.4: %d connections (%v), want 100", n, err)
			}
		})
	})
	t.Run("every bound path", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			refuseSockopt(t, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, unix.ENOPROTOOPT)
			dst := dests(t)[0]
			sd := &safedial.Dialer{}
			for _, tc := range []struct {
				name string
				dial func() (net.Conn, error)
			}{
				{"Base.LocalAddr", func() (net.Conn, error) { return (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}}).Dial("tcp", dst) }},
				{"Sources", func() (net.Conn, error) { return (&safedial.Dialer{Sources: mustAddrs("127.0.0.1")}).Dial("tcp", dst) }},
				{"DialTCP", func() (net.Conn, error) {
					return (&safedial.Dialer{}).DialTCP(context.Background(), "tcp", src.AddrPort(), netip.MustParseAddrPort(dst))
				}},
				{"udp Base.LocalAddr", func() (net.Conn, error) {
					return (&safedial.Dialer{Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}).Dial("udp", "127.0.0.2:9999")
				}},
				{"udp Sources", func() (net.Conn, error) {
					return (&safedial.Dialer{Sources: mustAddrs("127.0.0.1")}).Dial("udp", "127.0.0.2:9999")
				}},
				{"exported ControlContext, no local address", func() (net.Conn, error) {
					return (&net.Dialer{ControlContext: sd.ControlContext}).Dial("tcp", dst)
				}},
				{"exported ControlContext, local address", func() (net.Conn, error) {
					return (&net.Dialer{LocalAddr: src, ControlContext: sd.ControlContext}).Dial("tcp", dst)
				}},
			} {
				c, err := tc.dial()
				if err != nil {
					t.Errorf("%s: %v, want a connection as net.Dialer makes", tc.name, err)
					continue
				}
				c.Close()
			}
			if st := sd.Stats(); st.Refused != 2 {
				t.Errorf("exported ControlContext: Stats.Refused = %d, want 2", st.Refused)
			}
		})
	})
}

// TestRefusedReuseAddr: SO_REUSEADDR refused with EPERM (a seccomp profile)
// does not fail a dial either; IP_BIND_ADDRESS_NO_PORT still works, so the
// capacity is the 4-tuple limit.
func TestRefusedReuseAddr(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		// The listeners first: net.Listen sets SO_REUSEADDR too.
		dsts := servers(t, "tcp", []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, []int{8080, 8081})
		refuseSockopt(t, unix.SOL_SOCKET, unix.SO_REUSEADDR, unix.EPERM)
		var refusals []*safedial.RefusedError
		d := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}, OnRefused: func(e *safedial.RefusedError) {
			refusals = append(refusals, e)
		}}
		n, err := fill(t, d.DialContext, "tcp", dsts, 700)
		if n != 600 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Errorf("%d connections, then %v; want 600, then exhaustion", n, err)
		}
		if len(refusals) != 1 || refusals[0].Option != "SO_REUSEADDR" || !errors.Is(refusals[0], os.ErrPermission) {
			t.Errorf("OnRefused calls = %v, want one, for SO_REUSEADDR, EPERM", refusals)
		}
		if st := d.Stats(); st.Refused != 601 {
			t.Errorf("Stats.Refused = %d, want 601", st.Refused)
		}
	})
}

// TestPortRangeRefused: PortRange was asked for explicitly, so a refusal of
// IP_LOCAL_PORT_RANGE (EPERM from a sandbox) fails the dial, naming PortRange
// and the option, matching errors.ErrUnsupported.
func TestPortRangeRefused(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		refuseSockopt(t, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, unix.EPERM)
		dst := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
		for _, d := range []*safedial.Dialer{
			{PortRange: safedial.PortRange{Lo: 40000, Hi: 40049}},
			{PortRange: safedial.PortRange{Lo: 40000, Hi: 40049}, Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}},
			{PortRange: safedial.PortRange{Lo: 40000, Hi: 40049}, Sources: mustAddrs("127.0.0.1")},
		} {
			c, err := d.Dial("tcp", dst)
			if err == nil {
				c.Close()
				t.Errorf("dial with a refused PortRange succeeded")
				continue
			}
			if !errors.Is(err, errors.ErrUnsupported) || !errors.Is(err, syscall.EPERM) || errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Errorf("err = %v, want errors.ErrUnsupported and EPERM", err)
			}
			for _, s := range []string{"PortRange", "IP_LOCAL_PORT_RANGE", "operation not permitted"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q lacks %q", err, s)
				}
			}
		}
	})
}

// TestPortRangeOutside: a PortRange that does not intersect the namespace's
// range would be silently replaced by the whole range by the kernel: the dial
// fails instead, naming both ranges, for TCP and UDP, bound or not.
func TestPortRangeOutside(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
		for _, r := range []safedial.PortRange{{Lo: 30000, Hi: 30009}, {Lo: 50000, Hi: 50009}, {Lo: 1, Hi: 1}, {Lo: 65535, Hi: 65535}} {
			for _, tc := range []struct {
				network, dst string
				base         net.Dialer
			}{
				{"tcp", dst, net.Dialer{}},
				{"tcp", dst, net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}},
				{"udp", "127.0.0.2:9999", net.Dialer{}},
				{"udp", "127.0.0.2:9999", net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}},
			} {
				d := &safedial.Dialer{Base: tc.base, PortRange: r}
				c, err := d.Dial(tc.network, tc.dst)
				if err == nil {
					t.Errorf("%v %s (local %v): connected from %v, want an error", r, tc.network, tc.base.LocalAddr, c.LocalAddr())
					c.Close()
					continue
				}
				if !errors.Is(err, safedial.ErrInvalidConfig) {
					t.Errorf("%v %s: err = %v, want ErrInvalidConfig", r, tc.network, err)
				}
				for _, s := range []string{"PortRange " + r.String(), "ip_local_port_range 40000-40099"} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("message %q lacks %q", err, s)
					}
				}
			}
		}
		// A range that overlaps the namespace's is used: ports stay inside
		// both.
		d := &safedial.Dialer{PortRange: safedial.PortRange{Lo: 40090, Hi: 40199}}
		conns, err := fillConns(t, d.DialContext, "tcp", []string{dst}, 20)
		if len(conns) != 10 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Errorf("overlapping range: %d connections, then %v; want 10 (40090-40099), then exhaustion", len(conns), err)
		}
		for _, c := range conns {
			if p := localAddr(c).Port(); p < 40090 || p > 40099 {
				t.Errorf("local port %d outside 40090-40099", p)
			}
		}
	})
}
