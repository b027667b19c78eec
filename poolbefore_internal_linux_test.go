package safedial

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
)

// TestPoolBefore runs the pool of systems where the hook cannot bind
// (dialPoolBefore: Windows, the BSDs) against Linux's kernel, which binds a
// net.Dialer's LocalAddr as theirs do: failover from a full source and past
// one that is not local, and the context between steps, with errors shaped
// as net.Dialer{LocalAddr: the source used}'s.
func TestPoolBefore(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40003}, func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.1.1:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 16)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					close(accepted)
					return
				}
				accepted <- c // held open until the test ends
			}
		}()
		defer func() {
			ln.Close()
			for c := range accepted {
				c.Close()
			}
		}()
		dst := ln.Addr().String()
		dial := func(d *Dialer, ctx context.Context) (net.Conn, error) {
			return d.finish(d.dialPoolBefore(ctx, "tcp", dst, d.sourcePool()))
		}
		// Fill 127.0.0.1 toward dst (4 ports).
		full := &Dialer{Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		for i := range 4 {
			c, err := full.Dial("tcp", dst)
			if err != nil {
				t.Fatalf("fill %d: %v", i, err)
			}
			defer c.Close()
		}
		src := func(c net.Conn) netip.Addr { return c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap() }

		d := &Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}}
		c, err := dial(d, context.Background())
		if err != nil || src(c) != netip.MustParseAddr("127.0.0.2") {
			t.Fatalf("failover from the full source: %v, %v; want a connection from 127.0.0.2", c, err)
		}
		c.Close()

		d = &Dialer{Sources: []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("127.0.0.2")}}
		c, err = dial(d, context.Background())
		if err != nil || src(c) != netip.MustParseAddr("127.0.0.2") {
			t.Fatalf("failover past the source not local: %v, %v; want a connection from 127.0.0.2", c, err)
		}
		c.Close()

		// The context ends during the first step (from the full source):
		// the dial stops before the second, with net.Dialer's error from
		// the source last used.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		d = &Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")},
			Base: net.Dialer{Control: func(string, string, syscall.RawConn) error { cancel(); return nil }}}
		_, err = dial(d, ctx)
		ended, cancelEnded := context.WithCancel(context.Background())
		cancelEnded()
		_, want := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}).DialContext(ended, "tcp", dst)
		if !errors.Is(err, context.Canceled) || err.Error() != want.Error() {
			t.Errorf("cancelled between steps: %v, want %v", err, want)
		}
		if st := d.Stats(); st.Failovers != 0 {
			t.Errorf("Stats().Failovers = %d after a dial stopped before its second step, want 0", st.Failovers)
		}

		// Both sources full: exhaustion from the last, naming both.
		full2 := &Dialer{Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
		for {
			c, err := full2.Dial("tcp", dst)
			if err != nil {
				break
			}
			defer c.Close()
		}
		d = &Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")}}
		_, err = dial(d, context.Background())
		var ee *ExhaustedError
		if !errors.As(err, &ee) || len(ee.Tried) != 2 || ee.Source != netip.MustParseAddr("127.0.0.2") {
			t.Errorf("both full: %v, want exhaustion from 127.0.0.2 naming both sources", err)
		}
	})
}

// TestPoolBeforeFamily: an IP literal of a family the pool has no source of
// is the configuration error the hook gives on Linux, naming the family to
// add, from either family's side.
func TestPoolBeforeFamily(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		for _, tc := range []struct{ src, dst, fam string }{
			{"::1", "127.0.1.1:8080", "IPv4"},
			{"127.0.0.1", "[::1]:8080", "IPv6"},
		} {
			d := &Dialer{Sources: []netip.Addr{netip.MustParseAddr(tc.src)}}
			_, err := d.finish(d.dialPoolBefore(context.Background(), "tcp", tc.dst, d.sourcePool()))
			_, hook := d.Dial("tcp", tc.dst)
			if !errors.Is(err, ErrInvalidConfig) || err.Error() != hook.Error() {
				t.Errorf("Sources %s, dial %s: %v; want the hook's %v", tc.src, tc.dst, err, hook)
			}
			if !strings.Contains(err.Error(), "add an "+tc.fam+" source") {
				t.Errorf("Sources %s, dial %s: %v; want it to name the family to add (%s)", tc.src, tc.dst, err, tc.fam)
			}
		}
	})
}
