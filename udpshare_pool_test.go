//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// stuckClaim leaves on src:port what a shared claim stuck in flight leaves:
// a marked socket, bound, never connected.
func stuckClaim(t *testing.T, src [4]byte, port int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR_RFC4884, 1); err != nil {
		t.Skipf("the kernel refuses IP_RECVERR_RFC4884 (before 5.9): %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src, Port: port}); err != nil {
		t.Fatal(err)
	}
}

// poolInFlightDialer shares the one port 40000 of 127.0.0.1 and 127.0.0.5.
func poolInFlightDialer() *safedial.Dialer {
	return &safedial.Dialer{ShareUDPPorts: true, PortRange: safedial.PortRange{Lo: 40000, Hi: 40000},
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.5")}}
}

// dialSharedFrom dials dst n times with a 300 ms deadline each and requires every
// connection to leave from want, closing it.
func dialSharedFrom(t *testing.T, d *safedial.Dialer, dst string, n int, want netip.AddrPort) {
	t.Helper()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		c, err := d.DialContext(ctx, "udp", dst)
		cancel()
		if err != nil {
			t.Fatalf("dial %d of %d toward %s: %v, want a connection from %v", i+1, n, dst, err, want)
		}
		if got := addrPortOf(c.LocalAddr()); got != want {
			t.Errorf("dial %d of %d toward %s: from %v, want %v", i+1, n, dst, got, want)
		}
		c.Close()
	}
}

// TestShareUDPPortsPoolInFlight (issue 24, item 1, in pools): a pool source
// whose candidates only claims in flight hold is passed over, without a
// wait, for a source that can take the dial now (every second dial waited
// for the claim and failed with its 300 ms deadline while 127.0.0.5 was
// free); such a source is neither counted nor remembered as full. When
// claims in flight hold every source's candidates, the dial waits for them
// under its context, and reports exhaustion only once they count as held.
func TestShareUDPPortsPoolInFlight(t *testing.T) {
	from5 := netip.MustParseAddrPort("127.0.0.5:40000")
	t.Run("stuck", func(t *testing.T) {
		inNamespace(t, 40000, 40031, func(t *testing.T) {
			dst := udpEcho(t, "127.0.0.2:9000")[0]
			stuckClaim(t, [4]byte{127, 0, 0, 1}, 40000)
			d := poolInFlightDialer()
			dialSharedFrom(t, d, dst, 20, from5)
			st := d.Stats()
			if a, b := st.Sources[0], st.Sources[1]; a.Succeeded != 0 || b.Succeeded != 20 || b.Exhausted != 0 {
				t.Errorf("Stats: %+v and %+v, want 0 and 20 succeeded", a, b)
			}
		})
	})
	t.Run("paused", func(t *testing.T) {
		inNamespace(t, 40000, 40031, func(t *testing.T) {
			dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
			d := poolInFlightDialer()
			paused, resume := pauseOneClaim(t)
			first := dialAsync(d, dsts[0]) // its turn starts at 127.0.0.1
			<-paused
			dialSharedFrom(t, d, dsts[1], 10, from5)
			st := d.Stats()
			if a := st.Sources[0]; a.Exhausted != 0 || a.Skipped != 0 {
				t.Errorf("Stats of 127.0.0.1 while a claim was in flight on it: %+v, want none exhausted or skipped", a)
			}
			close(resume)
			a := <-first
			if a.err != nil {
				t.Fatalf("the paused dial: %v", a.err)
			}
			defer a.c.Close()
			if got := addrPortOf(a.c.LocalAddr()); got != netip.MustParseAddrPort("127.0.0.1:40000") {
				t.Errorf("the paused dial: from %v, want 127.0.0.1:40000", got)
			}
		})
	})
	t.Run("stuck then paused", func(t *testing.T) {
		// Both sources' candidates are held by claims in flight: a stuck
		// one on 127.0.0.1, a paused one on 127.0.0.5 that connects while
		// the dial waits. The dial takes 127.0.0.5 (it waited for the
		// stuck claim, first in its turn, until its deadline).
		inNamespace(t, 40000, 40031, func(t *testing.T) {
			dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
			stuckClaim(t, [4]byte{127, 0, 0, 1}, 40000)
			d := poolInFlightDialer()
			paused, resume := pauseOneClaim(t)
			var armed atomic.Bool
			var waits atomic.Int32
			var resumed sync.Once
			defer safedial.ShareWaiting(func() {
				// The third wait of the last dial: it found both
				// sources held, and asks again.
				if armed.Load() && waits.Add(1) == 3 {
					resumed.Do(func() { close(resume) })
				}
			})()
			first := dialAsync(d, dsts[0]) // turn 0: passes 127.0.0.1 over, claims on 127.0.0.5
			<-paused
			// Turn 1, held everywhere until its deadline: the next dial's
			// turn starts at 127.0.0.1.
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			if c, err := d.DialContext(ctx, "udp", dsts[1]); err == nil {
				c.Close()
				t.Fatalf("a dial while claims in flight hold both sources: from %v, want its deadline's error", c.LocalAddr())
			}
			cancel()
			armed.Store(true)
			dialSharedFrom(t, d, dsts[1], 1, from5)
			resumed.Do(func() { close(resume) })
			a := <-first
			if a.err != nil {
				t.Fatalf("the paused dial: %v", a.err)
			}
			a.c.Close()
			// Attempts: one a dial and source, whatever ends it (the
			// passes that found claims in flight, then a connection or
			// the deadline): three dials, three attempts from each; two
			// connections from 127.0.0.5, each after claims in flight.
			if a, b := d.Stats().Sources[0], d.Stats().Sources[1]; a.Attempts != 3 || a.Succeeded != 0 || a.Exhausted != 0 || b.Attempts != 3 || b.Succeeded != 2 || b.Exhausted != 0 {
				t.Errorf("Stats: %+v and %+v, want 3 attempts from each, 2 succeeded from 127.0.0.5, none exhausted", a, b)
			}
		})
	})
	t.Run("all held", func(t *testing.T) {
		inNamespace(t, 40000, 40031, func(t *testing.T) {
			dst := udpEcho(t, "127.0.0.2:9000")[0]
			stuckClaim(t, [4]byte{127, 0, 0, 1}, 40000)
			stuckClaim(t, [4]byte{127, 0, 0, 5}, 40000)
			var waits atomic.Int32
			defer safedial.ShareWaiting(func() { waits.Add(1) })()
			d := poolInFlightDialer()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err := d.DialContext(ctx, "udp", dst)
			cancel()
			var ne net.Error
			if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Errorf("dial while fresh claims in flight hold both sources: %v, want its deadline's error (Timeout), not exhaustion", err)
			}
			if st := d.Stats(); st.Sources[0].Exhausted != 0 || st.Sources[1].Exhausted != 0 || st.Sources[0].Attempts != 1 || st.Sources[1].Attempts != 1 {
				t.Errorf("Stats after claims in flight only: %+v, want one attempt each (the passes that find claims in flight count once a dial), none exhausted", st.Sources)
			}
			ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
			_, err = d.DialContext(ctx, "udp", dst)
			cancel()
			var ee *safedial.ExhaustedError
			want := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.5")}
			if !errors.As(err, &ee) || ee.Held == nil || ee.Held.Bound != 1 || !slices.Equal(slices.SortedFunc(slices.Values(ee.Tried), netip.Addr.Compare), want) {
				t.Errorf("dial while the claims stay in flight past a second: %v, want exhaustion naming both sources, the port held (Bound 1)", err)
			}
			if waits.Load() == 0 {
				t.Error("no dial waited for the claims in flight")
			}
		})
	})
}

// pauseOneClaim pauses the first shared claim once it is bound, until
// resume is closed; the other claims go on (pauseFirstClaim's sync.Once
// would hold them back too).
func pauseOneClaim(t *testing.T) (paused, resume chan struct{}) {
	paused, resume = make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	t.Cleanup(safedial.BeforeSharedConnect(func(int, uint16) {
		if once.CompareAndSwap(false, true) {
			close(paused)
			<-resume
		}
	}))
	return paused, resume
}
