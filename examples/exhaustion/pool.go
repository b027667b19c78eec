package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/safedial/safedial"
)

// poolFigures are the pool mode's measurements, in microseconds.
type poolFigures struct {
	// One source of two full toward the destination, against a pool of
	// the healthy source alone, in interleaved pairs.
	Pairs         int     `json:"pairs"`
	PoolMedianUS  float64 `json:"pool_median_us"`
	PoolMeanUS    float64 `json:"pool_mean_us"`
	PoolP99US     float64 `json:"pool_p99_us"`
	AloneMedianUS float64 `json:"alone_median_us"`
	AloneMeanUS   float64 `json:"alone_mean_us"`
	AloneP99US    float64 `json:"alone_p99_us"`
	PoolFailed    int     `json:"pool_failed"`
	// How often the pool asked the kernel about its full source during
	// the pairs, and how long the pairs took.
	FullAsked int     `json:"full_asked"`
	PairsMS   float64 `json:"pairs_ms"`
	// Every source full: the first exhausted dial, and the median of the
	// next ones.
	FirstExhaustedUS float64 `json:"first_exhausted_us"`
	LaterExhaustedUS float64 `json:"later_exhausted_us"`
	LaterExhausted   int     `json:"later_exhausted"`
	// Ports freed: time from the frees to the first successful dial.
	RecoveredUS float64 `json:"recovered_us"`
	Recovered   bool    `json:"recovered"`
}

// poolCost fills source A toward one destination with another dialer (as
// another process would), then measures a pool {A, B} against a pool {B}.
func poolCost(c config) (poolFigures, error) {
	var f poolFigures
	dests, err := listen(1, 1)
	if err != nil {
		return f, err
	}
	dst := dests[0]
	a, b := netip.MustParseAddr("127.0.1.1"), netip.MustParseAddr("127.0.1.2")
	fill := func(src netip.Addr) ([]net.Conn, error) {
		d := &safedial.Dialer{Base: net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))}}
		var held []net.Conn
		for {
			conn, err := d.DialContext(context.Background(), "tcp", dst)
			if errors.Is(err, safedial.ErrEphemeralExhausted) {
				return held, nil
			} else if err != nil {
				return held, err
			}
			held = append(held, conn)
		}
	}
	heldA, err := fill(a)
	if err != nil {
		return f, fmt.Errorf("filling %v: %w", a, err)
	}
	defer closeAll(heldA)

	pool := &safedial.Dialer{Sources: []netip.Addr{a, b}}
	alone := &safedial.Dialer{Sources: []netip.Addr{b}}
	dialClose := func(d *safedial.Dialer) (time.Duration, error) {
		start := time.Now()
		conn, err := d.DialContext(context.Background(), "tcp", dst)
		elapsed := time.Since(start)
		if err != nil {
			return elapsed, err
		}
		conn.(*net.TCPConn).SetLinger(0) // RST: no TIME_WAIT, the fill stays constant
		conn.Close()
		return elapsed, nil
	}
	for range 50 { // warm up
		dialClose(alone)
		dialClose(pool)
	}
	var tPool, tAlone []time.Duration
	asked0, began := pool.Stats().Sources[0].Attempts, time.Now()
	for i := range c.Pairs {
		first, second := pool, alone
		if i%2 == 1 {
			first, second = alone, pool
		}
		t1, err1 := dialClose(first)
		t2, err2 := dialClose(second)
		if i%2 == 1 {
			t1, t2, err1, err2 = t2, t1, err2, err1
		}
		if err1 != nil {
			f.PoolFailed++
		}
		if err2 != nil {
			return f, fmt.Errorf("healthy pool: %w", err2)
		}
		tPool, tAlone = append(tPool, t1), append(tAlone, t2)
	}
	f.Pairs = c.Pairs
	f.FullAsked, f.PairsMS = int(pool.Stats().Sources[0].Attempts-asked0), float64(time.Since(began).Microseconds())/1e3
	f.PoolMedianUS, f.PoolMeanUS, f.PoolP99US = quantile(tPool, 0.5), mean(tPool), quantile(tPool, 0.99)
	f.AloneMedianUS, f.AloneMeanUS, f.AloneP99US = quantile(tAlone, 0.5), mean(tAlone), quantile(tAlone, 0.99)

	// Every source full.
	heldB, err := fill(b)
	if err != nil {
		return f, fmt.Errorf("filling %v: %w", b, err)
	}
	defer func() { closeAll(heldB) }()
	exhausted := &safedial.Dialer{Sources: []netip.Addr{a, b}}
	t0, err := dialClose(exhausted)
	if !errors.Is(err, safedial.ErrEphemeralExhausted) {
		return f, fmt.Errorf("every source full: %v, want exhaustion", err)
	}
	f.FirstExhaustedUS = float64(t0.Nanoseconds()) / 1e3
	var later []time.Duration
	for range 100 {
		t, err := dialClose(exhausted)
		if !errors.Is(err, safedial.ErrEphemeralExhausted) {
			break
		}
		later = append(later, t)
	}
	f.LaterExhausted = len(later)
	f.LaterExhaustedUS = quantile(later, 0.5)

	// Ports come free: close 10 of B's connections abortively (no
	// TIME_WAIT), then dial until one succeeds, for at most 3 s.
	for _, conn := range heldB[:10] {
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	heldB = heldB[10:]
	freed := time.Now()
	for time.Since(freed) < 3*time.Second {
		conn, err := exhausted.DialContext(context.Background(), "tcp", dst)
		if err == nil {
			f.RecoveredUS, f.Recovered = float64(time.Since(freed).Nanoseconds())/1e3, true
			conn.Close()
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return f, nil
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

func mean(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return float64(sum.Nanoseconds()) / float64(len(ds)) / 1e3
}

func printPool(w io.Writer, c config, f poolFigures) {
	fmt.Fprintf(w, "pool with uneven sources: range %d ports, one destination, %d interleaved dial pairs\n\n", c.PoolPorts, f.Pairs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "dial\tmedian µs\tmean µs\tp99 µs\t")
	fmt.Fprintf(tw, "pool {full, healthy}\t%.1f\t%.1f\t%.1f\t\n", f.PoolMedianUS, f.PoolMeanUS, f.PoolP99US)
	fmt.Fprintf(tw, "pool {healthy}\t%.1f\t%.1f\t%.1f\t\n", f.AloneMedianUS, f.AloneMeanUS, f.AloneP99US)
	fmt.Fprintf(tw, "ratio\t%.2fx\t%.2fx\t%.2fx\t\n", f.PoolMedianUS/f.AloneMedianUS, f.PoolMeanUS/f.AloneMeanUS, f.PoolP99US/f.AloneP99US)
	tw.Flush()
	fmt.Fprintf(w, "\nthe full source was asked %d times in the %d pairs (%.0f ms)\n", f.FullAsked, f.Pairs, f.PairsMS)
	fmt.Fprintf(w, "every source full: first exhausted dial %.0f µs, later ones (median of %d) %.1f µs: %.3fx\n",
		f.FirstExhaustedUS, f.LaterExhausted, f.LaterExhaustedUS, f.LaterExhaustedUS/f.FirstExhaustedUS)
	if f.Recovered {
		fmt.Fprintf(w, "ports freed: first successful dial after %.0f ms\n", f.RecoveredUS/1e3)
	} else {
		fmt.Fprintln(w, "ports freed: no successful dial within 3 s")
	}
}
