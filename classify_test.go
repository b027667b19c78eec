package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/safedial/safedial"
)

// Synthetic errors shaped exactly as Go's net package builds them, so that
// the rules for every system (Windows included) are checked on every system.
func opErr(network, syscallName string, errno syscall.Errno, src, dst string) *net.OpError {
	op := &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError(syscallName, errno)}
	addr := func(s string) net.Addr {
		ap := netip.MustParseAddrPort(s)
		if network[:3] == "udp" {
			return net.UDPAddrFromAddrPort(ap)
		}
		return net.TCPAddrFromAddrPort(ap)
	}
	if src != "" {
		op.Source = addr(src)
	}
	if dst != "" {
		op.Addr = addr(dst)
	}
	return op
}

func TestClassifyRules(t *testing.T) {
	const (
		wsaEADDRINUSE = syscall.Errno(10048) // windows.WSAEADDRINUSE
		wsaENOBUFS    = syscall.Errno(10055) // windows.WSAENOBUFS
	)
	for _, tc := range []struct {
		name string
		err  *net.OpError
		op   string // ExhaustedError.Syscall, or "" for not exhaustion
	}{
		{"bind EADDRINUSE port 0", opErr("tcp", "bind", syscall.EADDRINUSE, "127.0.0.1:0", "127.0.0.2:80"), "bind"},
		{"udp bind EADDRINUSE port 0", opErr("udp", "bind", syscall.EADDRINUSE, "127.0.0.1:0", "127.0.0.2:53"), "bind"},
		{"bind EADDRINUSE explicit port", opErr("tcp", "bind", syscall.EADDRINUSE, "127.0.0.1:4000", "127.0.0.2:80"), ""},
		{"bind EADDRNOTAVAIL", opErr("tcp", "bind", syscall.EADDRNOTAVAIL, "192.0.2.1:0", "127.0.0.2:80"), ""},
		{"tcp connect EADDRNOTAVAIL, no bind", opErr("tcp", "connect", syscall.EADDRNOTAVAIL, "", "127.0.0.2:80"), "connect"},
		{"tcp6 connect EADDRNOTAVAIL, port 0", opErr("tcp6", "connect", syscall.EADDRNOTAVAIL, "[::1]:0", "[::1]:80"), "connect"},
		{"tcp connect EADDRNOTAVAIL, explicit port", opErr("tcp", "connect", syscall.EADDRNOTAVAIL, "127.0.0.1:4000", "127.0.0.2:80"), ""},
		{"udp connect EAGAIN", opErr("udp", "connect", syscall.EAGAIN, "", "127.0.0.2:53"), "connect"},
		{"tcp connect EAGAIN", opErr("tcp", "connect", syscall.EAGAIN, "", "127.0.0.2:80"), ""},
		{"udp connect EADDRNOTAVAIL", opErr("udp", "connect", syscall.EADDRNOTAVAIL, "", "127.0.0.2:53"), ""},
		{"connect ECONNREFUSED", opErr("tcp", "connect", syscall.ECONNREFUSED, "", "127.0.0.2:80"), ""},
		{"connect ENETUNREACH", opErr("tcp", "connect", syscall.ENETUNREACH, "", "192.0.2.1:80"), ""},
		{"connect ETIMEDOUT", opErr("tcp", "connect", syscall.ETIMEDOUT, "", "192.0.2.1:80"), ""},
		{"windows bind WSAENOBUFS", opErr("tcp", "bind", wsaENOBUFS, "", "127.0.0.2:80"), "bind"},
		{"windows connectex WSAEADDRINUSE", opErr("tcp", "connectex", wsaEADDRINUSE, "", "127.0.0.2:80"), "connect"},
		{"windows connectex WSAEADDRINUSE, explicit port", opErr("tcp", "connectex", wsaEADDRINUSE, "127.0.0.1:4000", "127.0.0.2:80"), ""},
		{"udp connect EAGAIN, explicit port", opErr("udp", "connect", syscall.EAGAIN, "127.0.0.1:4000", "127.0.0.2:53"), ""},
		{"windows connectex WSAECONNREFUSED", opErr("tcp", "connectex", syscall.Errno(10061), "", "127.0.0.2:80"), ""},
		{"WSAEADDRINUSE from connect is not a Winsock call", opErr("tcp", "connect", wsaEADDRINUSE, "", "127.0.0.2:80"), ""},
		{"read EADDRNOTAVAIL is not a dial", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EADDRNOTAVAIL)}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := safedial.Classify(tc.err)
			if tc.op == "" {
				if got != error(tc.err) {
					t.Fatalf("Classify(%v) = %v, want it unchanged", tc.err, got)
				}
				return
			}
			op, ok := got.(*net.OpError)
			if !ok {
				t.Fatalf("Classify returned %T, want *net.OpError outermost", got)
			}
			if op.Op != tc.err.Op || op.Net != tc.err.Net || op.Source != tc.err.Source || op.Addr != tc.err.Addr {
				t.Errorf("Classify changed the OpError's fields: %+v, want %+v", op, tc.err)
			}
			var ee *safedial.ExhaustedError
			if !errors.As(got, &ee) || ee.Syscall != tc.op || ee.Err != tc.err.Err {
				t.Fatalf("Classify(%v) = %v, want ExhaustedError{Syscall: %q} wrapping the *os.SyscallError", tc.err, got, tc.op)
			}
			if !errors.Is(got, safedial.ErrEphemeralExhausted) || !errors.Is(got, tc.err.Err.(*os.SyscallError).Err) {
				t.Errorf("%v: want errors.Is ErrEphemeralExhausted and the errno", got)
			}
			// Temporary is net.Dialer's answer for the same error (true only
			// for UDP's EAGAIN); Timeout is false.
			if op.Temporary() != tc.err.Temporary() || ee.Timeout() || op.Timeout() {
				t.Errorf("Temporary/Timeout = %v/%v, want %v (net.Dialer's)/false", op.Temporary(), op.Timeout(), tc.err.Temporary())
			}
		})
	}
}

func TestClassifyWrapping(t *testing.T) {
	exhaustion := opErr("tcp", "connect", syscall.EADDRNOTAVAIL, "", "127.0.0.2:80")
	refused := opErr("tcp", "connect", syscall.ECONNREFUSED, "", "127.0.0.2:80")

	if safedial.Classify(nil) != nil {
		t.Error("Classify(nil) != nil")
	}
	plain := errors.New("boom")
	if safedial.Classify(plain) != plain {
		t.Error("Classify changed an unrelated error")
	}

	ue := &url.Error{Op: "Get", URL: "http://127.0.0.2/", Err: exhaustion}
	got := safedial.Classify(ue)
	if gu, ok := got.(*url.Error); !ok || gu.Op != "Get" || gu.URL != ue.URL || !errors.Is(got, safedial.ErrEphemeralExhausted) {
		t.Errorf("Classify(*url.Error) = %#v, want a *url.Error matching ErrEphemeralExhausted", got)
	}
	if safedial.Classify(&url.Error{Op: "Get", URL: "x", Err: refused}).(*url.Error).Err != refused {
		t.Error("Classify rebuilt a *url.Error that is not exhaustion")
	}

	wrapped := fmt.Errorf("pool: %w", exhaustion)
	got = safedial.Classify(wrapped)
	var op *net.OpError
	if !errors.Is(got, safedial.ErrEphemeralExhausted) || !errors.Is(got, wrapped) || !errors.As(got, &op) || op != exhaustion {
		t.Errorf("Classify(fmt.Errorf(%%w)) = %v: want ErrEphemeralExhausted, the original chain kept", got)
	}
	if safedial.Classify(got) != got {
		t.Error("Classify of a classified error is not the same error")
	}
	// The wrapped error's message gains the explanation and the advice,
	// not the system call's error a second time.
	msg := got.Error()
	if want := "pool: dial tcp 127.0.0.2:80: connect: cannot assign requested address: ephemeral ports exhausted; "; !strings.HasPrefix(msg, want) || strings.Count(msg, "cannot assign requested address") != 1 || !strings.Contains(msg, "add source addresses") {
		t.Errorf("Classify(fmt.Errorf(%%w)).Error() = %q: want it to start %q, then say what to do", msg, want)
	}
	if w := fmt.Errorf("pool: %w", refused); safedial.Classify(w) != w {
		t.Error("Classify changed a wrapped non-exhaustion error")
	}

	// The message says what happened and what to do.
	msg = safedial.Classify(opErr("tcp", "bind", syscall.EADDRINUSE, "127.0.0.1:0", "127.0.0.2:80")).Error()
	for _, want := range []string{"dial tcp 127.0.0.1:0->127.0.0.2:80: ephemeral ports exhausted (bind: ", "bound on 127.0.0.1", "IP_BIND_ADDRESS_NO_PORT"} {
		if !strings.Contains(msg, want) {
			t.Errorf("bind exhaustion message %q lacks %q", msg, want)
		}
	}
}

// TestClassifyInnerOpError: the dialer's *net.OpError is found anywhere in
// the chain, also under another *net.OpError (x/net/proxy's SOCKS5 client
// wraps it in one whose Op is "socks connect"; examples/clients runs that
// through the real client), which stays outermost.
func TestClassifyInnerOpError(t *testing.T) {
	inner := opErr("tcp", "bind", syscall.EADDRINUSE, "127.0.0.1:0", "127.0.0.9:1080")
	socks := &net.OpError{Op: "socks connect", Net: "tcp", Source: inner.Addr, Addr: inner.Addr, Err: inner}
	got := safedial.Classify(socks)
	op, ok := got.(*net.OpError)
	if !ok || op.Op != "socks connect" {
		t.Fatalf("Classify(socks) = %#v, want the SOCKS *net.OpError outermost", got)
	}
	var ee *safedial.ExhaustedError
	if !errors.Is(got, safedial.ErrEphemeralExhausted) || !errors.As(got, &ee) || ee.Syscall != "bind" || !errors.Is(got, syscall.EADDRINUSE) {
		t.Fatalf("Classify(socks) = %v: want ErrEphemeralExhausted with the bind ExhaustedError and its errno", got)
	}

	// The first *net.OpError of a chain need not be the one that reports
	// exhaustion: here a refused dial joined before an exhausted one.
	refused := opErr("tcp", "connect", syscall.ECONNREFUSED, "", "127.0.0.2:80")
	joined := fmt.Errorf("all dials failed: %w", errors.Join(refused, socks))
	got = safedial.Classify(joined)
	if !errors.Is(got, safedial.ErrEphemeralExhausted) || !errors.Is(got, joined) {
		t.Errorf("Classify(joined) = %v: want ErrEphemeralExhausted, the original chain kept", got)
	}
	notExhausted := &net.OpError{Op: "socks connect", Net: "tcp", Err: refused}
	if safedial.Classify(notExhausted) != error(notExhausted) {
		t.Error("Classify changed a SOCKS error that is not exhaustion")
	}
}

// TestConfigErrors: bad configuration is reported before any socket is made.
func TestConfigErrors(t *testing.T) {
	hookRan := false
	hook := func(context.Context, string, string, syscall.RawConn) error { hookRan = true; return nil }
	base := net.Dialer{ControlContext: hook}
	for _, tc := range []struct {
		name string
		d    *safedial.Dialer
		is   error
		msg  string
	}{
		{"inverted PortRange", &safedial.Dialer{Base: base, PortRange: safedial.PortRange{Lo: 45009, Hi: 45000}}, safedial.ErrInvalidConfig, "PortRange 45009-45000 is inverted"},
		{"PortRange without Hi", &safedial.Dialer{Base: base, PortRange: safedial.PortRange{Lo: 45000}}, safedial.ErrInvalidConfig, "set both Lo and Hi"},
		{"PortRange without Lo", &safedial.Dialer{Base: base, PortRange: safedial.PortRange{Hi: 45000}}, safedial.ErrInvalidConfig, "set both Lo and Hi"},
		{"Sources with LocalAddr", &safedial.Dialer{Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, ControlContext: hook}, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, safedial.ErrInvalidConfig, "Sources and Base.LocalAddr are both set"},
		{"zero source", &safedial.Dialer{Base: base, Sources: []netip.Addr{{}}}, safedial.ErrInvalidConfig, "Sources[0] is the zero netip.Addr"},
		{"IPv6 destination, IPv4 sources", &safedial.Dialer{Base: base, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, safedial.ErrInvalidConfig, "no source address of the destination's family"},
		{"Sources on a unix network", &safedial.Dialer{Base: base, Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}, safedial.ErrInvalidConfig, `not "unix"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			network, addr := "tcp", "127.0.0.1:1"
			switch tc.name {
			case "IPv6 destination, IPv4 sources":
				addr = "[::1]:1"
			case "Sources on a unix network":
				network, addr = "unix", "/nonexistent"
			}
			hookRan = false
			_, err := tc.d.DialContext(context.Background(), network, addr)
			if !errors.Is(err, tc.is) || errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("err = %v, want %v and not exhaustion", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("message %q lacks %q", err, tc.msg)
			}
			if _, ok := err.(*net.OpError); !ok {
				t.Errorf("err is %T, want *net.OpError", err)
			}
			if hookRan {
				t.Error("a socket was made before the configuration was checked")
			}
		})
	}
}

// FuzzClassify: whatever shape a dial error has, Classify does not panic,
// keeps the original errno and *net.OpError reachable, and is idempotent.
func FuzzClassify(f *testing.F) {
	f.Add("tcp", "connect", uint32(syscall.EADDRNOTAVAIL), uint16(0), true)
	f.Add("tcp6", "bind", uint32(syscall.EADDRINUSE), uint16(0), true)
	f.Add("udp4", "connect", uint32(syscall.EAGAIN), uint16(0), false)
	f.Add("tcp", "connectex", uint32(10048), uint16(0), false)
	f.Add("tcp", "bind", uint32(syscall.EADDRINUSE), uint16(4000), true)
	f.Fuzz(func(t *testing.T, network, syscallName string, errno uint32, port uint16, withSource bool) {
		op := &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError(syscallName, syscall.Errno(errno)),
			Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 80}}
		if withSource {
			op.Source = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
		}
		got := safedial.Classify(op)
		if got == nil {
			t.Fatal("Classify returned nil for an error")
		}
		if !errors.Is(got, syscall.Errno(errno)) {
			t.Errorf("Classify lost the errno: %v", got)
		}
		var gop *net.OpError
		if !errors.As(got, &gop) || gop.Op != "dial" || gop.Net != network {
			t.Errorf("Classify lost the *net.OpError: %#v", got)
		}
		if again := safedial.Classify(got); again != got {
			t.Errorf("Classify is not idempotent")
		}
		if errors.Is(got, safedial.ErrEphemeralExhausted) {
			_ = got.Error() // the message must format
			if withSource && port != 0 {
				t.Errorf("explicit local port %d classified as exhaustion: %v", port, got)
			}
		}
	})
}

// TestDialTCPErrors: DialTCP's own checks, made before any socket.
func TestDialTCPErrors(t *testing.T) {
	pool := &safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	local := netip.MustParseAddrPort("127.0.0.1:0")
	remote := netip.MustParseAddrPort("127.0.0.1:1")
	for _, tc := range []struct {
		name         string
		d            *safedial.Dialer
		network      string
		laddr, raddr netip.AddrPort
		msg          string
		is           error
	}{
		{"udp", &safedial.Dialer{}, "udp", local, remote, "unknown network udp", nil},
		{"no remote address", &safedial.Dialer{}, "tcp", local, netip.AddrPort{}, "missing address", nil},
		{"no remote address, pool", pool, "tcp", netip.AddrPort{}, netip.AddrPort{}, "missing address", nil},
		{"pool and a local address", pool, "tcp", local, remote, "Sources and a local address are both set", safedial.ErrInvalidConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.d.DialTCP(context.Background(), tc.network, tc.laddr, tc.raddr)
			if err == nil || c != nil {
				t.Fatalf("DialTCP = %v, %v; want an error", c, err)
			}
			if _, ok := err.(*net.OpError); !ok || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v (%T), want a *net.OpError saying %q", err, err, tc.msg)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want it to match %v", err, tc.is)
			}
			if st := tc.d.Stats(); st.Dials == 0 || st.Succeeded != 0 || st.Exhausted != 0 {
				t.Errorf("Stats = %+v, want the failed call counted", st)
			}
		})
	}
}
