package safedial

import (
	"net/netip"
	"sync/atomic"
)

// Stats counts what a [Dialer] has done since it was made. It marshals to
// JSON with lower-case keys, ready for expvar. Counters only grow, and count
// calls that have returned: a dial in flight is not counted yet.
type Stats struct {
	// Dials counts calls to Dial, DialContext and DialTCP that have
	// returned (a call may make several attempts; see SourceStats).
	Dials uint64 `json:"dials"`
	// Succeeded counts calls that returned a connection.
	Succeeded uint64 `json:"succeeded"`
	// Exhausted counts calls that returned an error matching
	// ErrEphemeralExhausted (after every failover step failed).
	Exhausted uint64 `json:"exhausted"`
	// Failovers counts moves from one source of a Sources pool to the next
	// within an attempt: from a source found exhausted or not local, or
	// passed over because every source was known full.
	Failovers uint64 `json:"failovers"`
	// Refused counts calls that went on without an optional socket option
	// (IP_BIND_ADDRESS_NO_PORT, SO_REUSEADDR, Windows'
	// SO_REUSE_UNICASTPORT) because the system refused it
	// (see RefusedError). Such dials are unprotected: a non-zero count on
	// a host that binds source addresses deserves attention. Left out of
	// the JSON while zero, so that the JSON of a healthy Dialer is as it
	// was before the field existed.
	Refused uint64 `json:"refused,omitempty"`
	// Sources has one entry per address of the pool the next dial uses
	// (Sources as of the last dial or SetSources), in order, counted since
	// that pool was made; nil without Sources.
	Sources []SourceStats `json:"sources,omitempty"`
}

// SourceStats counts the attempts made from one source address of a pool.
type SourceStats struct {
	// Addr is the source address as configured in Sources (an
	// IPv4-mapped IPv6 address stays mapped, though it binds as IPv4). An
	// address given twice has two entries, each counting its own attempts.
	Addr netip.Addr `json:"addr"`
	// Attempts counts attempts from this source, failover steps included
	// (one call to Dial may make several; Stats.Dials counts calls).
	Attempts uint64 `json:"attempts"`
	// Succeeded counts attempts that returned a connection.
	Succeeded uint64 `json:"succeeded"`
	// Exhausted counts attempts that found no free port toward the
	// destination.
	Exhausted uint64 `json:"exhausted"`
	// Skipped counts attempts that passed this source over without a
	// system call: every source of the pool was known full toward the
	// destination, and the kernel, asked about the one found full longest
	// ago, confirmed it. Left out of the JSON while zero.
	Skipped uint64 `json:"skipped,omitempty"`
	// NotLocal counts attempts that found this source not (or no longer)
	// an address of this host (bind answered EADDRNOTAVAIL); the attempt
	// failed over to the next source. Left out of the JSON while zero.
	NotLocal uint64 `json:"not_local,omitempty"`
}

// counters sit on cache lines of their own, so that dials updating them
// from many cores do not keep invalidating the Dialer's configuration, which
// every dial reads. A successful dial adds to succeeded only; Dials is
// derived.
type counters struct {
	_                                                [64]byte
	succeeded, failed, exhausted, failovers, refused atomic.Uint64
	_                                                [64]byte
}

type sourceCounters struct {
	dials, succeeded, exhausted, skipped, notLocal atomic.Uint64
}

// Stats returns a snapshot of d's counters. It is safe to call while dials
// are in flight, and while Sources changes between dials: it reads no field
// of d, only the counters and the pool the dials built.
func (d *Dialer) Stats() Stats {
	// Exhausted first, then failed, so that Succeeded+Exhausted never
	// exceeds Dials in a snapshot.
	s := Stats{
		Exhausted: d.counters.exhausted.Load(),
		Failovers: d.counters.failovers.Load(),
		Refused:   d.counters.refused.Load(),
	}
	failed := d.counters.failed.Load()
	s.Succeeded = d.counters.succeeded.Load()
	s.Dials = s.Succeeded + failed
	if p := d.pool.Load(); p != nil && p.err == nil && len(p.srcs) > 0 {
		s.Sources = p.stats()
	}
	return s
}

// stats returns the counters of each of p's sources, in order.
func (p *pool) stats() []SourceStats {
	s := make([]SourceStats, len(p.srcs))
	for i := range p.srcs {
		src := &p.srcs[i]
		s[i] = SourceStats{Addr: src.conf, Attempts: src.dials.Load(), Succeeded: src.succeeded.Load(),
			Exhausted: src.exhausted.Load(), Skipped: src.skipped.Load(), NotLocal: src.notLocal.Load()}
	}
	return s
}
