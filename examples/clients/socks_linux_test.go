package clients

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"

	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/net/proxy"
)

// holdServer accepts TCP connections on addr and holds them open until the
// test ends.
func holdServer(t *testing.T, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		held []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	return ln.Addr().String()
}

// TestSOCKS5Exhaustion: x/net/proxy's SOCKS5 client wraps the error of its
// forward dialer (the dial to the proxy) in a *net.OpError of its own, Op
// "socks connect". In a namespace with a 10-port range, once every port
// toward the proxy is held: through a safedial forward dialer the typed
// error survives the wrapping; through a net.Dialer{LocalAddr} forward
// dialer, whose bind fails, Classify finds the inner *net.OpError and
// classifies it, the SOCKS error staying outermost.
func TestSOCKS5Exhaustion(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40009}, func(t *testing.T) {
		ctx := context.Background()
		proxyAddr := holdServer(t, "127.0.0.2:1080")
		for _, tc := range []struct {
			name    string
			forward interface {
				proxy.Dialer
				proxy.ContextDialer
			}
			syscall string // ExhaustedError.Syscall
		}{
			{"safedial", &safedial.Dialer{Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}}, "connect"},
			{"net.Dialer+LocalAddr", &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}}, "bind"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var conns []net.Conn
				t.Cleanup(func() {
					for _, c := range conns {
						c.Close()
					}
				})
				for range 10 {
					c, err := tc.forward.DialContext(ctx, "tcp", proxyAddr)
					if err != nil {
						t.Fatalf("after %d connections to the proxy: %v", len(conns), err)
					}
					conns = append(conns, c)
				}
				socks, err := proxy.SOCKS5("tcp", proxyAddr, nil, tc.forward)
				if err != nil {
					t.Fatal(err)
				}
				_, err = socks.(proxy.ContextDialer).DialContext(ctx, "tcp", "127.0.0.4:80")
				var op *net.OpError
				if !errors.As(err, &op) || op.Op != "socks connect" {
					t.Fatalf("SOCKS5 dial: %v, want a *net.OpError with Op \"socks connect\" outermost", err)
				}
				if _, ok := tc.forward.(*safedial.Dialer); !ok && errors.Is(err, safedial.ErrEphemeralExhausted) {
					t.Fatalf("net.Dialer's error already matches ErrEphemeralExhausted: %v", err)
				}
				got := safedial.Classify(err)
				var ee *safedial.ExhaustedError
				if !errors.Is(got, safedial.ErrEphemeralExhausted) || !errors.As(got, &ee) || ee.Syscall != tc.syscall {
					t.Fatalf("Classify(%v) = %v, want ErrEphemeralExhausted from %s", err, got, tc.syscall)
				}
				if !errors.As(got, &op) || op.Op != "socks connect" {
					t.Errorf("Classify(%v) = %v, want the SOCKS *net.OpError outermost", err, got)
				}
				t.Logf("%v", got)
			})
		}
	})
}
