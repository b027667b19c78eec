//go:build linux

package safedial_test

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// The dial benchmarks dial a loopback listener and close each connection
// abortively (SO_LINGER 0, so an RST): neither side keeps the 4-tuple in
// TIME_WAIT, so any number of iterations runs without exhausting the host's
// ports, and both dialers pay the same for the close.

type dialFunc = func(ctx context.Context, network, address string) (net.Conn, error)

func benchListener(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	b.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func dialClose(b *testing.B, dial dialFunc, addr string) {
	c, err := dial(context.Background(), "tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
}

// floorHook is the least any library can do to protect a bound dial: the two
// setsockopt calls, inline, in a net.Dialer Control hook. Merely having a
// hook costs net.Dialer 4 allocations per dial (the RawConn, the network
// and address strings it passes), so this is the floor to compare with.
func floorHook(_, _ string, c syscall.RawConn) error {
	var err1, err2 error
	err := c.Control(func(fd uintptr) {
		err1 = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		err2 = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	if err1 != nil {
		return err1
	}
	return err2
}

// benchDialers are the dialers compared: net.Dialer and safedial, without
// and with a pinned source address, and the floor for a protected bind.
func benchDialers() []struct {
	name string
	dial dialFunc
} {
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	return []struct {
		name string
		dial dialFunc
	}{
		{"netdialer", (&net.Dialer{}).DialContext},
		{"netdialer-bind", (&net.Dialer{LocalAddr: src}).DialContext},
		{"safedial", (&safedial.Dialer{}).DialContext},
		{"safedial-bind", (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}}).DialContext},
		{"floor-bind", (&net.Dialer{LocalAddr: src, Control: floorHook}).DialContext},
		{"safedial-pool", (&safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}).DialContext},
		{"safedial-getsources", (&safedial.Dialer{GetSources: func(context.Context, string, string) (*safedial.SourcePool, error) {
			return benchPool, nil
		}}).DialContext},
	}
}

// benchPool is the pool safedial-getsources returns for every dial: one
// source, as safedial-pool's.
var benchPool = func() *safedial.SourcePool {
	p, err := safedial.NewSourcePool([]netip.Addr{netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		panic(err)
	}
	return p
}()

// BenchmarkDial measures dial + close for each dialer in turn.
func BenchmarkDial(b *testing.B) {
	addr := benchListener(b)
	for _, d := range benchDialers() {
		b.Run(d.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				dialClose(b, d.dial, addr)
			}
		})
	}
}

// BenchmarkDialRatio measures one dialer against another in interleaved
// pairs: each iteration dials once with each, alternating which goes first,
// and the metric is the median of the per-pair time ratios, whose unit names
// the two dialers of benchDialers it divides (safedial-bind/netdialer-bind is
// a safedial dial's time over a net.Dialer dial's). nobind and bind measure
// safedial against net.Dialer. floor-bind pairs net.Dialer with floorHook
// instead of safedial: it measures, in the same run, what the two setsockopt
// calls and net's hook machinery cost by themselves; bind-vs-floor pairs
// safedial with that floor, which leaves safedial's own cost. pool-vs-bind
// pairs a dial through a healthy one-source pool with a safedial dial from
// the same address as Base.LocalAddr; getsources-vs-pool pairs a dial whose
// GetSources returns a prebuilt one-source pool with a Sources dial. Machine noise hits both halves of a
// pair alike, so the ratio is far steadier than comparing sequential
// benchmarks.
//
// The ratio is reported only from minPairs pairs on: a median of a handful of
// pairs (as in CI's single iteration) would look like a result and be noise.
func BenchmarkDialRatio(b *testing.B) {
	addr := benchListener(b)
	ds := benchDialers()
	for _, pair := range []struct {
		name     string
		num, den int // the ratio is benchDialers()[num]'s time over [den]'s
	}{
		{"nobind", 2, 0},
		{"bind", 3, 1},
		{"floor-bind", 4, 1},         // the best any hook can do
		{"bind-vs-floor", 3, 4},      // safedial's own share
		{"pool-vs-bind", 5, 3},       // the pool's hook against Base.LocalAddr
		{"getsources-vs-pool", 6, 5}, // a pool chosen per dial against Sources
	} {
		num, den := ds[pair.num], ds[pair.den]
		unit := num.name + "/" + den.name
		b.Run(pair.name, func(b *testing.B) {
			var ratios []float64
			i := 0
			for b.Loop() {
				var tNum, tDen time.Duration
				if i%2 == 0 {
					tDen = timed(b, den.dial, addr)
					tNum = timed(b, num.dial, addr)
				} else {
					tNum = timed(b, num.dial, addr)
					tDen = timed(b, den.dial, addr)
				}
				ratios = append(ratios, float64(tNum)/float64(tDen))
				i++
			}
			if len(ratios) < minPairs {
				return
			}
			slices.Sort(ratios)
			b.ReportMetric(ratios[len(ratios)/2], unit)
		})
	}
}

// minPairs is the fewest pairs whose median ratio BenchmarkDialRatio reports.
const minPairs = 1000

func timed(b *testing.B, dial dialFunc, addr string) time.Duration {
	start := time.Now()
	dialClose(b, dial, addr)
	return time.Since(start)
}
