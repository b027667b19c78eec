//go:build linux

package safedial_test

import (
	"errors"
	"net"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
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
			want := safedial.ExhaustedError{Op: "connect", Net: "tcp", Source: src.AddrPort(), Dest: ee.Dest, Range: safedial.PortRange{Lo: lo, Hi: hi}}
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
