//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// The seed experiment: a range of 100 ports, 3 destination addresses x 2
// ports. A bound source caps net.Dialer at the range (100), with or without
// SO_REUSEADDR; safedial reaches the 4-tuple limit (600) and then reports
// exhaustion from connect.
func TestSeedExperiment(t *testing.T) {
	const lo, hi = 40000, 40099
	dests := func(t *testing.T) []string {
		return servers(t, "tcp", []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}, []int{8080, 8081})
	}
	src := tcpAddr("127.0.0.1:0")

	t.Run("net.Dialer", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			n, err := fill(t, (&net.Dialer{}).DialContext, "tcp", dests(t), 700)
			if n != 600 || err == nil {
				t.Fatalf("net.Dialer without LocalAddr: %d connections, error %v; want 600 and an error", n, err)
			}
		})
	})
	t.Run("net.Dialer+LocalAddr", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			n, err := fill(t, (&net.Dialer{LocalAddr: src}).DialContext, "tcp", dests(t), 700)
			if n != 100 {
				t.Errorf("connections = %d, want 100 (one per port)", n)
			}
			if diff := cmp.Diff(plainChain("tcp", "bind", "EADDRINUSE"), chain(err)); diff != "" {
				t.Errorf("error chain (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(exhaustedChain("tcp", "bind", "EADDRINUSE"), chain(safedial.Classify(err))); diff != "" {
				t.Errorf("Classify chain (-want +got):\n%s", diff)
			}
		})
	})
	t.Run("net.Dialer+LocalAddr+SO_REUSEADDR", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			nd := &net.Dialer{LocalAddr: src, Control: reuseAddrOnly}
			n, err := fill(t, nd.DialContext, "tcp", dests(t), 700)
			if n != 100 {
				t.Errorf("connections = %d, want 100: SO_REUSEADDR does not let bind(ip:0) share ports", n)
			}
			if diff := cmp.Diff(plainChain("tcp", "bind", "EADDRINUSE"), chain(err)); diff != "" {
				t.Errorf("error chain (-want +got):\n%s", diff)
			}
		})
	})
	t.Run("safedial+LocalAddr", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			d := &safedial.Dialer{Base: net.Dialer{LocalAddr: src}}
			n, err := fill(t, d.DialContext, "tcp", dests(t), 700)
			if n != 600 {
				t.Errorf("connections = %d, want 600 (100 ports x 6 destinations)", n)
			}
			if diff := cmp.Diff(exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), chain(err)); diff != "" {
				t.Errorf("601st dial: error chain (-want +got):\n%s", diff)
			}
			if !errors.Is(err, safedial.ErrEphemeralExhausted) || !errors.Is(err, syscall.EADDRNOTAVAIL) {
				t.Errorf("601st dial: %v; want errors.Is ErrEphemeralExhausted and EADDRNOTAVAIL", err)
			}
			var ee *safedial.ExhaustedError
			if !errors.As(err, &ee) {
				t.Fatalf("601st dial: %v is not an *ExhaustedError", err)
			}
			want := safedial.ExhaustedError{Syscall: "connect", Net: "tcp", Source: src.AddrPort().Addr(), Dest: ee.Dest, Range: safedial.PortRange{Lo: lo, Hi: hi}}
			got := *ee
			got.Err = nil
			if diff := cmp.Diff(want, got, netipCmp); diff != "" {
				t.Errorf("ExhaustedError (-want +got):\n%s", diff)
			}
			wantMsg := "dial tcp 127.0.0.1:0->" + ee.Dest.String() + ": ephemeral ports exhausted (connect: cannot assign requested address); local port range 40000-40099 is full for this destination"
			if msg := err.Error(); len(msg) < len(wantMsg) || msg[:len(wantMsg)] != wantMsg {
				t.Errorf("message:\n got %q\nwant prefix %q", msg, wantMsg)
			}
			if st := d.Stats(); st.Dials != 601 || st.Succeeded != 600 || st.Exhausted != 1 {
				t.Errorf("Stats = %+v, want 601 dials, 600 succeeded, 1 exhausted", st)
			}
		})
	})
}

// TestClassifyKernel checks the classification rules against errors made by
// the real kernel, positive and negative, level by level.
func TestClassifyKernel(t *testing.T) {
	const lo, hi = 40000, 40009 // 10 ports
	src := tcpAddr("127.0.0.1:0")
	udpSrc := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	dial := func(nd *net.Dialer) func(context.Context, string, string) (net.Conn, error) { return nd.DialContext }

	// Cases that fill the range first, each in its own namespace.
	for _, tc := range []struct {
		name    string
		network string
		dial    func(context.Context, string, string) (net.Conn, error)
		n       int    // connections before the failure
		raw     []link // the chain as the dialer returned it
		want    []link // the chain after Classify
	}{
		{"safedial bind: connect EADDRNOTAVAIL", "tcp", (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}}).DialContext, 10,
			exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), exhaustedChain("tcp", "connect", "EADDRNOTAVAIL")},
		{"safedial no bind: connect EADDRNOTAVAIL", "tcp", (&safedial.Dialer{}).DialContext, 10,
			exhaustedChain("tcp", "connect", "EADDRNOTAVAIL"), exhaustedChain("tcp", "connect", "EADDRNOTAVAIL")},
		{"net.Dialer no bind: connect EADDRNOTAVAIL", "tcp", dial(&net.Dialer{}), 10,
			plainChain("tcp", "connect", "EADDRNOTAVAIL"), exhaustedChain("tcp", "connect", "EADDRNOTAVAIL")},
		{"net.Dialer bind: bind EADDRINUSE port 0", "tcp", dial(&net.Dialer{LocalAddr: src}), 10,
			plainChain("tcp", "bind", "EADDRINUSE"), exhaustedChain("tcp", "bind", "EADDRINUSE")},
		{"safedial DisableBindNoPort: bind EADDRINUSE port 0", "tcp", (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}, DisableBindNoPort: true}).DialContext, 10,
			exhaustedChain("tcp", "bind", "EADDRINUSE"), exhaustedChain("tcp", "bind", "EADDRINUSE")},
		{"safedial udp bind: connect EAGAIN", "udp", (&safedial.Dialer{Base: net.Dialer{LocalAddr: udpSrc}}).DialContext, 10,
			exhaustedChain("udp", "connect", "EAGAIN"), exhaustedChain("udp", "connect", "EAGAIN")},
		{"net.Dialer udp: connect EAGAIN", "udp", dial(&net.Dialer{}), 10,
			plainChain("udp", "connect", "EAGAIN"), exhaustedChain("udp", "connect", "EAGAIN")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			inNamespace(t, lo, hi, func(t *testing.T) {
				dst := "127.0.0.2:9999" // UDP needs no listener
				if tc.network == "tcp" {
					dst = servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
				}
				n, err := fill(t, tc.dial, tc.network, []string{dst}, 100)
				if n != tc.n {
					t.Errorf("connections = %d, want %d", n, tc.n)
				}
				if diff := cmp.Diff(tc.raw, chain(err)); diff != "" {
					t.Errorf("dial error chain (-want +got):\n%s", diff)
				}
				cerr := safedial.Classify(err)
				if diff := cmp.Diff(tc.want, chain(cerr)); diff != "" {
					t.Errorf("Classify chain (-want +got):\n%s", diff)
				}
				if !errors.Is(cerr, safedial.ErrEphemeralExhausted) {
					t.Errorf("Classify(%v) does not match ErrEphemeralExhausted", err)
				}
				if again := safedial.Classify(cerr); again != cerr {
					t.Errorf("Classify is not idempotent: %v became %v", cerr, again)
				}
			})
		})
	}

	// Negative cases: none of these is exhaustion.
	t.Run("not exhaustion", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			dst := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
			canceled, cancel := context.WithCancel(context.Background())
			cancel()
			for _, tc := range []struct {
				name string
				d    *safedial.Dialer
				ctx  context.Context
				dst  string
				want []link
				is   error // the error must also match this
			}{
				{"bind EADDRNOTAVAIL: source not local", &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("192.0.2.1:0")}}, nil, dst,
					[]link{{"*net.OpError", "dial tcp"}, {"*safedial.sourceError", ""}, {"*os.SyscallError", "bind"}, {"syscall.Errno", "EADDRNOTAVAIL"}},
					safedial.ErrSourceNotLocal},
				{"bind EADDRINUSE on an explicit port", &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr(dst)}}, nil, "127.0.0.3:1",
					plainChain("tcp", "bind", "EADDRINUSE"), syscall.EADDRINUSE},
				{"connection refused", &safedial.Dialer{Base: net.Dialer{LocalAddr: src}}, nil, "127.0.0.3:1",
					plainChain("tcp", "connect", "ECONNREFUSED"), syscall.ECONNREFUSED},
				{"network unreachable", &safedial.Dialer{}, nil, "192.0.2.1:80",
					plainChain("tcp", "connect", "ENETUNREACH"), syscall.ENETUNREACH},
				{"canceled", &safedial.Dialer{}, canceled, dst, nil, context.Canceled},
				{"timeout", &safedial.Dialer{Base: net.Dialer{Timeout: 1}}, nil, dst, nil, context.DeadlineExceeded},
			} {
				t.Run(tc.name, func(t *testing.T) {
					ctx := tc.ctx
					if ctx == nil {
						ctx = context.Background()
					}
					c, err := tc.d.DialContext(ctx, "tcp", tc.dst)
					if err == nil {
						c.Close()
						t.Fatal("dial succeeded")
					}
					if ne, ok := err.(net.Error); ok && ne.Timeout() != (tc.is == context.DeadlineExceeded) {
						t.Errorf("Timeout() = %v for %v", ne.Timeout(), err)
					}
					if tc.want != nil {
						if diff := cmp.Diff(tc.want, chain(err)); diff != "" {
							t.Errorf("error chain (-want +got):\n%s", diff)
						}
					}
					if !errors.Is(err, tc.is) {
						t.Errorf("%v does not match %v", err, tc.is)
					}
					if errors.Is(err, safedial.ErrEphemeralExhausted) || errors.Is(safedial.Classify(err), safedial.ErrEphemeralExhausted) {
						t.Errorf("%v classified as exhaustion", err)
					}
					if got := safedial.Classify(err); got != err {
						t.Errorf("Classify changed a non-exhaustion error: %v", got)
					}
					var op *net.OpError
					if !errors.As(err, &op) || op != err {
						t.Errorf("*net.OpError is not outermost: %T", err)
					}
				})
			}

			t.Run("source not local: message", func(t *testing.T) {
				_, err := (&safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("192.0.2.1:0")}}).Dial("tcp", dst)
				want := "dial tcp 192.0.2.1:0->127.0.0.2:8080: source address 192.0.2.1 is not an address of this host (bind: cannot assign requested address)"
				if err == nil || !strings.HasPrefix(err.Error(), want) {
					t.Errorf("got %v\nwant prefix %q", err, want)
				}
			})

			t.Run("connect EADDRNOTAVAIL after an explicit-port bind", func(t *testing.T) {
				d := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:40005")}}
				c, err := d.Dial("tcp", dst)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				// Same 4-tuple again: SO_REUSEADDR lets the bind through,
				// and connect finds the tuple in use: a conflict.
				_, err = d.Dial("tcp", dst)
				if diff := cmp.Diff(plainChain("tcp", "connect", "EADDRNOTAVAIL"), chain(err)); diff != "" {
					t.Errorf("error chain (-want +got):\n%s", diff)
				}
				if errors.Is(safedial.Classify(err), safedial.ErrEphemeralExhausted) {
					t.Errorf("explicit-port conflict classified as exhaustion: %v", err)
				}
			})
		})
	})

	t.Run("http.Client", func(t *testing.T) {
		t.Parallel()
		inNamespace(t, lo, hi, func(t *testing.T) {
			srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
			ln, err := net.Listen("tcp", "127.0.0.2:80")
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ln)
			defer srv.Close()
			// Fill the range toward the server with raw connections.
			if n, err := fill(t, (&net.Dialer{}).DialContext, "tcp", []string{"127.0.0.2:80"}, 100); n != 10 {
				t.Fatalf("filled %d connections (%v), want 10", n, err)
			}
			client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{}).DialContext}}
			_, err = client.Get("http://127.0.0.2/")
			cerr := safedial.Classify(err)
			var ue *url.Error
			if !errors.As(cerr, &ue) || ue != cerr {
				t.Errorf("Classify(%v) = %T, want the *url.Error outermost", err, cerr)
			}
			var ee *safedial.ExhaustedError
			if !errors.Is(cerr, safedial.ErrEphemeralExhausted) || !errors.As(cerr, &ee) || ee.Syscall != "connect" {
				t.Errorf("Classify(%v) = %v, want exhaustion from connect", err, cerr)
			}
			if !errors.Is(cerr, syscall.EADDRNOTAVAIL) {
				t.Errorf("Classify lost EADDRNOTAVAIL from the chain: %v", cerr)
			}
		})
	})
}

// TestHooks checks that the user's hooks run after safedial's options, see
// the dial's context, and return their errors unchanged, and that Base is
// never modified.
func TestHooks(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})[0]
		type key struct{}
		ctx := context.WithValue(context.Background(), key{}, "v")
		src := tcpAddr("127.0.0.1:0")
		var calls []string
		seen := func(name, network, address string, c syscall.RawConn) {
			var reuse, noport int
			c.Control(func(fd uintptr) {
				reuse, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR)
				noport, _ = unix.GetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT)
			})
			calls = append(calls, fmt.Sprintf("%s %s %s reuse=%d noport=%d", name, network, address, reuse, noport))
		}
		userErr := errors.New("user hook says no")
		for _, tc := range []struct {
			name      string
			base      net.Dialer
			wantCalls []string
			wantErr   error
		}{
			{"ControlContext", net.Dialer{LocalAddr: src, ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
				if ctx.Value(key{}) != "v" {
					t.Error("ControlContext does not see the dial's context")
				}
				seen("ControlContext", network, address, c)
				return nil
			}}, []string{"ControlContext tcp4 " + dst + " reuse=1 noport=1"}, nil},
			{"Control", net.Dialer{LocalAddr: src, Control: func(network, address string, c syscall.RawConn) error {
				seen("Control", network, address, c)
				return nil
			}}, []string{"Control tcp4 " + dst + " reuse=1 noport=1"}, nil},
			{"both: ControlContext wins", net.Dialer{LocalAddr: src,
				Control: func(network, address string, c syscall.RawConn) error {
					seen("Control", network, address, c)
					return nil
				},
				ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
					seen("ControlContext", network, address, c)
					return nil
				}}, []string{"ControlContext tcp4 " + dst + " reuse=1 noport=1"}, nil},
			{"no bind: hook still runs", net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
				seen("Control", network, address, c)
				return nil
			}}, []string{"Control tcp4 " + dst + " reuse=0 noport=0"}, nil},
			{"error propagates", net.Dialer{LocalAddr: src, ControlContext: func(ctx context.Context, network, address string, c syscall.RawConn) error {
				seen("ControlContext", network, address, c)
				return userErr
			}}, []string{"ControlContext tcp4 " + dst + " reuse=1 noport=1"}, userErr},
		} {
			t.Run(tc.name, func(t *testing.T) {
				calls = nil
				d := &safedial.Dialer{Base: tc.base}
				before := tc.base
				c, err := d.DialContext(ctx, "tcp", dst)
				if c != nil {
					c.Close()
				}
				if diff := cmp.Diff(tc.wantCalls, calls); diff != "" {
					t.Errorf("hook calls (-want +got):\n%s", diff)
				}
				if tc.wantErr == nil && err != nil {
					t.Fatal(err)
				}
				if tc.wantErr != nil {
					want := []link{{"*net.OpError", "dial tcp"}, {"*errors.errorString", ""}}
					if diff := cmp.Diff(want, chain(err)); diff != "" || !errors.Is(err, userErr) {
						t.Errorf("error %v: chain (-want +got):\n%s", err, diff)
					}
				}
				if diff := cmp.Diff(before, d.Base, dialerCmp); diff != "" {
					t.Errorf("Base changed by a dial (-before +after):\n%s", diff)
				}
			})
		}
	})
}

// dialerCmp compares net.Dialer values, funcs by identity.
var dialerCmp = cmp.Options{
	cmpopts.IgnoreUnexported(net.Dialer{}),
	cmp.Comparer(func(a, b func(string, string, syscall.RawConn) error) bool {
		return reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer()
	}),
	cmp.Comparer(func(a, b func(context.Context, string, string, syscall.RawConn) error) bool {
		return reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer()
	}),
}

// TestIPv6 repeats the capacity experiment from [::1].
func TestIPv6(t *testing.T) {
	ports := []int{8080, 8081, 8082, 8083, 8084, 8085}
	src := tcpAddr("[::1]:0")
	for _, tc := range []struct {
		name string
		dial func(context.Context, string, string) (net.Conn, error)
		n    int
		want []link
	}{
		{"net.Dialer+LocalAddr", (&net.Dialer{LocalAddr: src}).DialContext, 100, plainChain("tcp", "bind", "EADDRINUSE")},
		{"safedial+LocalAddr", (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}}).DialContext, 600, exhaustedChain("tcp", "connect", "EADDRNOTAVAIL")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			inNamespace(t, 40000, 40099, func(t *testing.T) {
				needIPv6(t)
				n, err := fill(t, tc.dial, "tcp", servers(t, "tcp", []string{"::1"}, ports), 700)
				if n != tc.n {
					t.Errorf("connections = %d, want %d", n, tc.n)
				}
				if diff := cmp.Diff(tc.want, chain(err)); diff != "" {
					t.Errorf("error chain (-want +got):\n%s", diff)
				}
			})
		})
	}
}
