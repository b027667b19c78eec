package safedialprom

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/safedial/safedial"
)

// SetProbes replaces the probes c calls; nil leaves one as it is.
func SetProbes(c *HeadroomCollector,
	all func(ctx context.Context, network string) ([]safedial.Headroom, error),
	one func(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort) (safedial.Headroom, error)) {
	if all != nil {
		c.probeAll = all
	}
	if one != nil {
		c.probe = one
	}
}

// SetClock replaces the clock c reads to decide whether to probe.
func SetClock(c *HeadroomCollector, now func() time.Time) { c.now = now }

// SetDialerHeadroom replaces the Dialer.Headroom c calls.
func SetDialerHeadroom(c *DialerCollector, fn func(ctx context.Context, network, address string) ([]safedial.Headroom, error)) {
	c.headroom = fn
}

// SetDialerClock replaces the clock c reads to decide whether to probe.
func SetDialerClock(c *DialerCollector, now func() time.Time) { c.now = now }

// Locked reports whether c's lock is held (by anyone) now.
func Locked(c prometheus.Collector) bool {
	var mu *sync.Mutex
	switch c := c.(type) {
	case *HeadroomCollector:
		mu = &c.mu
	case *DialerCollector:
		mu = &c.mu
	}
	if mu.TryLock() {
		mu.Unlock()
		return false
	}
	return true
}
