package safedial

import (
	"context"
	"net/netip"
	"slices"
	"sync/atomic"
)

// FollowConfig says which of the host's addresses a [Follower] keeps as
// sources. Every field narrows the set; an address must pass them all.
type FollowConfig struct {
	// Interface, when not empty, keeps only the addresses of the network
	// interface with this name (eth0), as it is named now: it may appear
	// later, and an interface renamed to it or away from it (link events)
	// brings or takes its addresses.
	Interface string

	// Prefixes, when not empty, keeps only the addresses within one of
	// them (10.1.0.0/16, 2001:db8::/64).
	Prefixes []netip.Prefix

	// Network is "ip" (or empty) for both families, "ip4" or "ip6".
	Network string

	// OnChange, when not nil, is called on the follower's goroutine after
	// each change of its sources is in effect (the first set included):
	// every dial that asks after that gets the new set. It must not block
	// for long: events wait meanwhile.
	OnChange func(srcs []netip.Addr)
}

// ErrFollowUnsupported is the error of [FollowConfig.Follow] on systems
// other than Linux, where it cannot watch the host's addresses. It matches
// errors.ErrUnsupported.
var ErrFollowUnsupported error = &unsupportedError{what: "following the host's addresses needs Linux (rtnetlink address events)"}

// Follower keeps a [SourcePool] equal to the host's addresses that match a
// FollowConfig, from the kernel's address events, until the context given
// to Follow ends. Its GetSources method fits [Dialer.GetSources]:
//
//	f, err := (&safedial.FollowConfig{Interface: "eth0"}).Follow(ctx)
//	...
//	d := &safedial.Dialer{GetSources: f.GetSources}
//
// An IPv6 address joins once duplicate address detection has passed (never
// while tentative or after it failed); a deprecated address (its preferred
// lifetime over) is left out while an address of its family that is not
// deprecated matches. Loopback addresses are left out unless Interface or
// Prefixes select them; IPv6 link-local addresses are always left out.
type Follower struct {
	cfg    FollowConfig
	pool   atomic.Pointer[SourcePool]
	done   chan struct{}
	err    error         // why it stopped, once done is closed
	relist atomic.Uint64 // re-lists after lost events, for tests
}

// hostAddr is one address of the host, as the kernel's address events
// describe it.
type hostAddr struct {
	index      int // interface index
	addr       netip.Addr
	tentative  bool // IPv6 DAD not done, or failed
	deprecated bool
	// link marks an interface's event (renamed, deleted), not an
	// address's: index and name (its name now) only.
	link bool
	name string
}

type hostKey struct {
	index int
	addr  netip.Addr
}

// addrWatch is the system's side of a Follower (follow_linux.go).
type addrWatch interface {
	list() ([]hostAddr, error)
	// read passes queued events (waiting for one) to fn; errLost after
	// lost events.
	read(fn func(a hostAddr, added bool)) error
	close()
}

// Follow lists the host's addresses, makes those that match c the
// follower's sources, and keeps them current on a goroutine of its own
// until ctx ends; it returns once the first set is in place. An invalid c is
// an error matching ErrInvalidConfig; on systems other than Linux the error
// is ErrFollowUnsupported.
func (c *FollowConfig) Follow(ctx context.Context) (*Follower, error) {
	f := &Follower{cfg: *c, done: make(chan struct{})}
	f.cfg.Prefixes = slices.Clone(c.Prefixes)
	switch c.Network {
	case "", "ip", "ip4", "ip6":
	default:
		return nil, errConfig("FollowConfig.Network %q: use ip, ip4 or ip6", c.Network)
	}
	for _, p := range c.Prefixes {
		if !p.IsValid() {
			return nil, errConfig("FollowConfig.Prefixes holds an invalid prefix %v", p)
		}
	}
	w, err := watchAddrs()
	if err != nil {
		return nil, err
	}
	s := &followState{f: f, w: w, names: map[int]string{}}
	if err := s.relist(); err != nil {
		w.close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, w.close)
	go func() {
		defer close(f.done)
		defer stop()
		err := s.run()
		w.close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		f.err = err
	}()
	return f, nil
}

// GetSources returns the follower's current pool; it has the signature of
// [Dialer.GetSources]. When no address matches, the error says so and
// matches ErrSourceNotLocal. After the follower stopped it keeps returning
// the last pool.
func (f *Follower) GetSources(ctx context.Context, network, address string) (*SourcePool, error) {
	if p := f.pool.Load(); p != nil {
		return p, nil
	}
	return nil, &noMatchError{what: f.cfg.describe()}
}

// Pool returns the current pool, nil while no address matches.
func (f *Follower) Pool() *SourcePool { return f.pool.Load() }

// Done is closed when the follower has stopped: its context ended, or
// reading the kernel's events failed. Its goroutine and socket are gone then.
func (f *Follower) Done() <-chan struct{} { return f.done }

// Err returns why the follower stopped (the context's error, or the system's)
// once Done is closed, and nil before.
func (f *Follower) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}

// followState is the follower goroutine's own: the host's addresses and the
// interface names seen.
type followState struct {
	f     *Follower
	w     addrWatch
	addrs map[hostKey]hostAddr
	names map[int]string
}

func (s *followState) run() error {
	for {
		err := s.w.read(func(a hostAddr, added bool) {
			switch {
			case a.link && added && a.name != "":
				s.names[a.index] = a.name // renamed, or a new interface
			case a.link && added:
				delete(s.names, a.index) // look it up when needed
			case a.link:
				s.names[a.index] = "" // deleted
			case added:
				s.addrs[hostKey{a.index, a.addr}] = a
			default:
				delete(s.addrs, hostKey{a.index, a.addr})
			}
		})
		switch {
		case err == errLost:
			s.f.relist.Add(1)
			if err := s.relist(); err != nil {
				return err
			}
			continue
		case err != nil:
			return err
		}
		s.publish()
	}
}

// relist replaces what s knows by a fresh listing, after the subscription
// is open: events read later only repeat or follow it.
func (s *followState) relist() error {
	list, err := s.w.list()
	if err != nil {
		return err
	}
	s.addrs = make(map[hostKey]hostAddr, len(list))
	for _, a := range list {
		s.addrs[hostKey{a.index, a.addr}] = a
	}
	clear(s.names) // interfaces may have been renamed
	s.publish()
	return nil
}

// publish makes the matching addresses the follower's pool, if they changed.
func (s *followState) publish() {
	srcs := s.matching()
	old := s.f.pool.Load()
	if old == nil && len(srcs) == 0 || old != nil && slices.Equal(old.p.addrs, srcs) {
		return
	}
	var sp *SourcePool
	if len(srcs) > 0 {
		// Not NewSourcePool: the kernel just listed these addresses,
		// and one removed meanwhile is failed over like a full source.
		p := newPool(srcs)
		if p.err != nil {
			return // cannot happen: matching keeps valid unicast addresses
		}
		if old != nil {
			carryCounts(old.p, p)
		}
		sp = &SourcePool{p: p}
	}
	s.f.pool.Store(sp)
	if s.f.cfg.OnChange != nil {
		s.f.cfg.OnChange(slices.Clone(srcs))
	}
}

// carryCounts starts the counters of each source of p kept from old where
// old's left them, so that a source's Stats go on across changes (counts of
// dials still running on old when it was replaced are lost).
func carryCounts(old, p *pool) {
	by := make(map[netip.Addr]*source, len(old.srcs))
	for i := range old.srcs {
		by[old.srcs[i].conf] = &old.srcs[i]
	}
	for i := range p.srcs {
		o := by[p.srcs[i].conf]
		if o == nil {
			continue
		}
		n := &p.srcs[i]
		n.dials.Store(o.dials.Load())
		n.succeeded.Store(o.succeeded.Load())
		n.exhausted.Store(o.exhausted.Load())
		n.skipped.Store(o.skipped.Load())
		n.notLocal.Store(o.notLocal.Load())
	}
}
