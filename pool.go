package safedial

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
)

// This file holds a pool's state, built from Sources, and SetSources. One
// pool dial reads top to bottom in pooldial.go (the plan, net.Dialer with
// the pool's hook, the result), poolhook.go (what runs in the hook) and
// fullmemory.go (the memory of full sources that orders them); systems
// where the hook cannot bind dial with pool_before.go.

// pool is the state a Dialer derives from its Sources: the addresses split by
// family, the round-robin cursors, the per-source counters and the memory of
// sources found full. It is built on the first dial with a given Sources (or
// by SetSources) and replaced when Sources changes.
type pool struct {
	addrs        []netip.Addr // Sources as configured, to detect a change
	srcs         []source
	v4, v6       []*source
	next4, next6 atomic.Uint32
	err          error // configuration error in Sources
	full         fullMemory
}

type source struct {
	addr   netip.Addr // unmapped, zone included: what is bound
	conf   netip.Addr // as configured, for Stats
	zone   uint32     // interface index of a link-local IPv6 address
	fam    int        // index in its family's slice (p.v4 or p.v6)
	pinned atomic.Bool
	sourceCounters
}

func newPool(addrs []netip.Addr) *pool {
	p := &pool{addrs: slices.Clone(addrs), srcs: make([]source, len(addrs))}
	for i, a := range addrs {
		addr, zone, err := checkSource(i, a)
		if err != nil {
			p.err = err
			return p
		}
		p.srcs[i].addr, p.srcs[i].conf, p.srcs[i].zone = addr, a, zone
	}
	for i := range p.srcs {
		if s := &p.srcs[i]; s.addr.Is4() {
			s.fam = len(p.v4)
			p.v4 = append(p.v4, s)
		} else {
			s.fam = len(p.v6)
			p.v6 = append(p.v6, s)
		}
	}
	return p
}

// checkSource checks that a (Sources[i]) can be a unicast source address of
// this host, as far as that is known without a socket, and returns it
// unmapped, with the interface index of its zone.
func checkSource(i int, a netip.Addr) (netip.Addr, uint32, error) {
	bad := func(why string) (netip.Addr, uint32, error) {
		return a, 0, errConfig("Sources[%d] %v %s", i, a, why)
	}
	if !a.IsValid() {
		return a, 0, errConfig("Sources[%d] is the zero netip.Addr: every source must be an IP address of this host", i)
	}
	a = a.Unmap()
	switch {
	case a.IsUnspecified():
		return bad("is the unspecified address: the kernel would pick the source from the route, pinning nothing; use a unicast address of this host")
	case a.IsMulticast():
		return bad("is a multicast address, which cannot be a connection's source; use a unicast address of this host")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return bad("is the limited broadcast address, which cannot be a connection's source; use a unicast address of this host")
	case a.Is6() && a.IsLinkLocalUnicast() && a.Zone() == "":
		return bad("is an IPv6 link-local address without a zone: name the interface, as in fe80::1%eth0")
	case localBroadcast(a):
		return bad("is a broadcast address of this host, which cannot be a connection's source (the kernel would pick the source from the route, pinning nothing); use a unicast address of this host")
	}
	zone, err := zoneIndex(a.Zone())
	if err != nil {
		return bad("has zone " + strconv.Quote(a.Zone()) + ", which is not an interface of this host (" + err.Error() + ")")
	}
	return a, zone, nil
}

// zoneIndex returns the interface index an IPv6 zone names: an index, or an
// interface's name; 0 for no zone.
func zoneIndex(zone string) (uint32, error) {
	if zone == "" {
		return 0, nil
	}
	if n, err := strconv.ParseUint(zone, 10, 32); err == nil {
		return uint32(n), nil
	}
	ifi, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, err
	}
	return uint32(ifi.Index), nil
}

func (p *pool) matches(addrs []netip.Addr) bool { return slices.Equal(addrs, p.addrs) }

// noFamily is the configuration error of a dial to address (the address
// the hook is given, or a name) whose family (IPv6 when v6) the pool has
// no source of.
func (p *pool) noFamily(address string, v6 bool) error {
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	return errConfig("no source address of the destination's family for %s (%s): Sources holds %s; add an %s source",
		address, fam, joinAddrs(p.addrs), fam)
}

// sourcePool returns the pool for the current Sources.
func (d *Dialer) sourcePool() *pool {
	for {
		p := d.pool.Load()
		if p != nil && p.matches(d.Sources) {
			return p
		}
		if np := newPool(d.Sources); d.pool.CompareAndSwap(p, np) {
			return np
		}
	}
}

// SetSources checks srcs and makes them the pool of d, as assigning
// d.Sources does, but at once: Stats describes the new pool from now on, and
// a configuration error is returned here rather than from the next dial.
// On Linux every source is also checked to be an address of this host (a
// bind of a throwaway socket, which takes no port): one that is not gives an
// error matching ErrSourceNotLocal, naming it. The same address may appear more
// than once (Stats then counts each entry's own attempts). Like any change
// of d's fields, it must not run during a dial.
func (d *Dialer) SetSources(srcs []netip.Addr) error {
	p := newPool(srcs)
	if p.err != nil {
		return p.err
	}
	for i := range p.srcs {
		if err := checkLocal(&p.srcs[i]); err != nil {
			return err
		}
	}
	d.Sources = slices.Clone(srcs) // not the pool's own copy, which detects changes
	if len(srcs) == 0 {
		p = nil
	}
	d.pool.Store(p)
	return nil
}
