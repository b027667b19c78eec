//go:build linux

package safedial_test

import (
	"context"
	"net"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// sockopts is what getsockopt reads back from a connection: the equivalent of
// checking the setsockopt calls with strace.
type sockopts struct {
	ReuseAddr, BindNoPort, ReusePort int
	PortRange                        uint32
}

func readOpts(t *testing.T, c net.Conn) sockopts {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var o sockopts
	var errs [4]error
	err = rc.Control(func(fd uintptr) {
		s := int(fd)
		o.ReuseAddr, errs[0] = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR)
		o.BindNoPort, errs[1] = unix.GetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT)
		o.ReusePort, errs[2] = unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT)
		var pr int
		pr, errs[3] = unix.GetsockoptInt(s, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE)
		o.PortRange = uint32(pr)
	})
	for _, e := range append(errs[:], err) {
		if e != nil {
			t.Fatalf("getsockopt: %v", e)
		}
	}
	return o
}

// TestOptions reads the options back from dialed connections.
func TestOptions(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		tcpDst := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
		udpDst := "127.0.0.2:9999" // UDP connect needs no listener
		src := tcpAddr("127.0.0.1:0")
		udpSrc := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		for _, tc := range []struct {
			name    string
			d       *safedial.Dialer
			network string
			want    sockopts
		}{
			{"bind", &safedial.Dialer{Base: net.Dialer{LocalAddr: src}}, "tcp", sockopts{ReuseAddr: 1, BindNoPort: 1}},
			{"bind,DisableReuseAddr", &safedial.Dialer{Base: net.Dialer{LocalAddr: src}, DisableReuseAddr: true}, "tcp", sockopts{BindNoPort: 1}},
			{"bind,DisableBindNoPort", &safedial.Dialer{Base: net.Dialer{LocalAddr: src}, DisableBindNoPort: true}, "tcp", sockopts{ReuseAddr: 1}},
			{"bind,both disabled", &safedial.Dialer{Base: net.Dialer{LocalAddr: src}, DisableReuseAddr: true, DisableBindNoPort: true}, "tcp", sockopts{}},
			{"no bind: options skipped", &safedial.Dialer{}, "tcp", sockopts{}},
			{"bind,PortRange", &safedial.Dialer{Base: net.Dialer{LocalAddr: src}, PortRange: safedial.PortRange{Lo: 40010, Hi: 40019}}, "tcp", sockopts{ReuseAddr: 1, BindNoPort: 1, PortRange: 40019<<16 | 40010}},
			{"no bind,PortRange", &safedial.Dialer{PortRange: safedial.PortRange{Lo: 40010, Hi: 40019}}, "tcp", sockopts{PortRange: 40019<<16 | 40010}},
			{"udp bind: no SO_REUSEADDR", &safedial.Dialer{Base: net.Dialer{LocalAddr: udpSrc}}, "udp", sockopts{BindNoPort: 1}},
			{"udp no bind", &safedial.Dialer{}, "udp", sockopts{}},
			// A typed nil LocalAddr is no address, as for net.Dialer: no
			// bind, so no options (SO_REUSEADDR would only expose the
			// connection's port to other sockets).
			{"typed nil LocalAddr", &safedial.Dialer{Base: net.Dialer{LocalAddr: (*net.TCPAddr)(nil)}}, "tcp", sockopts{}},
			{"udp typed nil LocalAddr", &safedial.Dialer{Base: net.Dialer{LocalAddr: (*net.UDPAddr)(nil)}}, "udp", sockopts{}},
			{"udp typed nil LocalAddr,ShareUDPPorts", &safedial.Dialer{Base: net.Dialer{LocalAddr: (*net.UDPAddr)(nil)}, ShareUDPPorts: true}, "udp", sockopts{BindNoPort: 1, ReusePort: 1}}, // the routed source, bound by the shared dial
		} {
			t.Run(tc.name, func(t *testing.T) {
				dst := tcpDst
				if tc.network == "udp" {
					dst = udpDst
				}
				c, err := tc.d.DialContext(context.Background(), tc.network, dst)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if diff := cmp.Diff(tc.want, readOpts(t, c)); diff != "" {
					t.Errorf("socket options (-want +got):\n%s", diff)
				}
			})
		}

		t.Run("ControlContext in a plain net.Dialer", func(t *testing.T) {
			// The exported hook cannot know whether the dial binds: it
			// sets the options always.
			sd := &safedial.Dialer{}
			c, err := (&net.Dialer{ControlContext: sd.ControlContext}).Dial("tcp", tcpDst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if diff := cmp.Diff(sockopts{ReuseAddr: 1, BindNoPort: 1}, readOpts(t, c)); diff != "" {
				t.Errorf("socket options (-want +got):\n%s", diff)
			}
		})
		t.Run("DialTCP", func(t *testing.T) {
			d := &safedial.Dialer{}
			c, err := d.DialTCP(context.Background(), "tcp", src.AddrPort(), tcpAddr(tcpDst).AddrPort())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if diff := cmp.Diff(sockopts{ReuseAddr: 1, BindNoPort: 1}, readOpts(t, c)); diff != "" {
				t.Errorf("socket options (-want +got):\n%s", diff)
			}
		})
	})
}

// TestDisableCapacity: without IP_BIND_ADDRESS_NO_PORT the capacity falls
// back to the range (bind exhaustion); without SO_REUSEADDR it does not
// change on this kernel.
func TestDisableCapacity(t *testing.T) {
	src := tcpAddr("127.0.0.1:0")
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	t.Run("DisableBindNoPort", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, 40000, 40099, func(t *testing.T) {
			d := &safedial.Dialer{Base: net.Dialer{LocalAddr: src}, DisableBindNoPort: true}
			n, err := fill(t, d.DialContext, "tcp", servers(t, "tcp", hosts, []int{8080, 8081}), 700)
			if n != 100 {
				t.Errorf("connections = %d, want 100", n)
			}
			if diff := cmp.Diff(exhaustedChain("tcp", "bind", "EADDRINUSE"), chain(err)); diff != "" {
				t.Errorf("error chain (-want +got):\n%s", diff)
			}
		})
	})
	t.Run("DisableReuseAddr", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, 40000, 40099, func(t *testing.T) {
			d := &safedial.Dialer{Base: net.Dialer{LocalAddr: src}, DisableReuseAddr: true}
			n, err := fill(t, d.DialContext, "tcp", servers(t, "tcp", hosts, []int{8080, 8081}), 700)
			if n != 600 {
				t.Errorf("connections = %d, want 600", n)
			}
			if diff := cmp.Diff(exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), chain(err)); diff != "" {
				t.Errorf("error chain (-want +got):\n%s", diff)
			}
		})
	})
}
