package safedial

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// SourcePool is a pool of source addresses prepared for [Dialer.GetSources]:
// checked once, when it is made, and then shared by every dial it is returned
// for, with the failover, the memory of full sources and the per-source
// counters of a Sources pool. Build one per set of sources (one per upstream,
// per tenant) and return the same *SourcePool for each dial that should
// share it. A SourcePool is safe for concurrent use.
type SourcePool struct {
	p *pool
}

// NewSourcePool checks srcs as [Dialer.SetSources] does and returns them as
// a pool: a source that cannot be one is an error matching ErrInvalidConfig,
// and on Linux one that is not an address of this host an error matching
// ErrSourceNotLocal, naming it. srcs must not be empty.
func NewSourcePool(srcs []netip.Addr) (*SourcePool, error) {
	if len(srcs) == 0 {
		return nil, errConfig("NewSourcePool needs at least one source address")
	}
	p := newPool(srcs)
	if p.err != nil {
		return nil, p.err
	}
	for i := range p.srcs {
		if err := checkLocal(&p.srcs[i]); err != nil {
			return nil, err
		}
	}
	return &SourcePool{p: p}, nil
}

// Addrs returns the pool's sources, as given to NewSourcePool.
func (sp *SourcePool) Addrs() []netip.Addr {
	if sp == nil || sp.p == nil {
		return nil
	}
	return slices.Clone(sp.p.addrs)
}

// String lists the pool's sources, comma-separated.
func (sp *SourcePool) String() string { return joinAddrs(sp.Addrs()) }

// Stats returns the counters of each source of the pool, in order, counted
// over every dial the pool was returned for: what [Stats].Sources holds for a
// Dialer with Sources.
func (sp *SourcePool) Stats() []SourceStats {
	if sp == nil || sp.p == nil {
		return nil
	}
	return sp.p.stats()
}

// dialChosen dials with the pool d.GetSources returns for this dial.
func (d *Dialer) dialChosen(ctx context.Context, network, address string, la net.Addr) outcome {
	if d.pool.Load() != nil && len(d.Sources) == 0 {
		d.pool.Store(nil) // Sources was emptied: Stats describes no pool
	}
	p, err := d.chosenPool(ctx, network, address, la)
	switch {
	case err != nil:
		return outcome{err: &net.OpError{Op: "dial", Net: network, Err: err}}
	case p == nil:
		return d.dialUnpooled(ctx, network, address, la)
	}
	return d.dialPool(ctx, network, address, la, p)
}

// chosenPool checks d's configuration beside GetSources and returns the
// pool it chooses for a dial of network to address from la (Base.LocalAddr):
// nil for the source the routing picks. Dials and Headroom share it.
func (d *Dialer) chosenPool(ctx context.Context, network, address string, la net.Addr) (*pool, error) {
	switch {
	case len(d.Sources) > 0:
		return nil, errConfig("Sources and GetSources are both set: use one of them")
	case !strings.HasPrefix(network, "tcp") && !strings.HasPrefix(network, "udp"):
		// As with Sources: a dial that cannot be pinned must not pass
		// for a pinned one, whatever the function would say.
		return nil, errConfig("GetSources applies to the tcp and udp networks, not %q", network)
	case !noAddr(la):
		return nil, errConfig("GetSources and Base.LocalAddr are both set: use one of them")
	}
	sp, err := d.GetSources(ctx, network, address)
	switch {
	case err != nil:
		return nil, err
	case sp == nil:
		return nil, nil
	case sp.p == nil:
		return nil, errConfig("GetSources returned a zero SourcePool: make pools with NewSourcePool")
	}
	return sp.p, nil
}
