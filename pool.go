package safedial

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// pool is the state a Dialer derives from its Sources: the addresses split by
// family, the round-robin cursors and the per-source counters. It is built on
// the first dial with a given Sources and replaced when Sources changes.
type pool struct {
	addrs        []netip.Addr // Sources as configured, to detect a change
	srcs         []source
	v4, v6       []*source
	next4, next6 atomic.Uint32
	err          error // configuration error in Sources
}

type source struct {
	addr netip.Addr
	udp  *net.UDPAddr // LocalAddr for udp dials; TCP dials pass addr directly
	sourceCounters
}

func newPool(addrs []netip.Addr) *pool {
	p := &pool{addrs: append([]netip.Addr(nil), addrs...), srcs: make([]source, len(addrs))}
	for i, a := range addrs {
		if !a.IsValid() {
			p.err = errConfig("Sources[%d] is the zero netip.Addr: every source must be an IP address of this host", i)
			return p
		}
		a = a.Unmap()
		p.srcs[i] = source{addr: a, udp: net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0))}
	}
	for i := range p.srcs {
		if s := &p.srcs[i]; s.addr.Is4() {
			p.v4 = append(p.v4, s)
		} else {
			p.v6 = append(p.v6, s)
		}
	}
	return p
}

func (p *pool) matches(addrs []netip.Addr) bool {
	if len(addrs) != len(p.addrs) {
		return false
	}
	for i := range addrs {
		if addrs[i] != p.addrs[i] {
			return false
		}
	}
	return true
}

// family returns the sources for dst's family and the cursor to start from.
func (p *pool) family(dst netip.Addr) ([]*source, *atomic.Uint32) {
	if dst.Is4() {
		return p.v4, &p.next4
	}
	return p.v6, &p.next6
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

// dialPool dials address (or raddr, when valid) from the pool of Sources.
func (d *Dialer) dialPool(ctx context.Context, network, address string, raddr netip.AddrPort) (net.Conn, error) {
	fail := func(dst net.Addr, err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: dst, Err: err}
	}
	tcp := strings.HasPrefix(network, "tcp")
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return nil, fail(nil, errConfig("Sources apply to the tcp and udp networks, not %q", network))
	}
	if d.Base.LocalAddr != nil {
		return nil, fail(nil, errConfig("Sources and Base.LocalAddr are both set: use one of them"))
	}
	p := d.sourcePool()
	if p.err != nil {
		return nil, fail(nil, p.err)
	}

	deadline := d.Base.Deadline
	if d.Base.Timeout > 0 {
		if t := time.Now().Add(d.Base.Timeout); deadline.IsZero() || t.Before(deadline) {
			deadline = t
		}
	}
	dests, err := d.destinations(ctx, network, address, raddr, p)
	if err != nil {
		return nil, err
	}

	var first error
	for _, dst := range dests {
		c, err := d.dialFrom(ctx, network, tcp, deadline, p, dst)
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil || (!deadline.IsZero() && !time.Now().Before(deadline)) {
			break
		}
	}
	return nil, first
}

// destinations resolves the destination to the addresses the pool has a
// source for, in the resolver's order.
func (d *Dialer) destinations(ctx context.Context, network, address string, raddr netip.AddrPort, p *pool) ([]netip.AddrPort, error) {
	fail := func(err error) error {
		return &net.OpError{Op: "dial", Net: network, Addr: opAddr(network, raddr), Err: err}
	}
	var (
		ips  []netip.Addr
		port uint16
	)
	if raddr.IsValid() {
		ips, port = []netip.Addr{raddr.Addr()}, raddr.Port()
	} else {
		host, service, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fail(err)
		}
		r := d.Base.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		if n, err := strconv.ParseUint(service, 10, 16); err == nil {
			port = uint16(n)
		} else if n, err := r.LookupPort(ctx, network, service); err == nil {
			port = uint16(n)
		} else {
			return nil, fail(err)
		}
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = r.LookupNetIP(ctx, ipNetwork(network), host); err != nil {
			return nil, fail(err)
		}
	}

	dests := make([]netip.AddrPort, 0, len(ips))
	var have4, have6 bool
	for _, ip := range ips {
		ip = ip.Unmap()
		have4, have6 = have4 || ip.Is4(), have6 || ip.Is6()
		if ip.Is4() && strings.HasSuffix(network, "6") || ip.Is6() && strings.HasSuffix(network, "4") {
			continue
		}
		if srcs, _ := p.family(ip); len(srcs) > 0 {
			dests = append(dests, netip.AddrPortFrom(ip, port))
		}
	}
	if len(dests) == 0 {
		fam := "IPv4"
		if have6 && !have4 {
			fam = "IPv6"
		} else if have4 && have6 {
			fam = "IPv4 or IPv6"
		}
		if len(ips) == 1 {
			raddr = netip.AddrPortFrom(ips[0].Unmap(), port)
		}
		return nil, fail(errConfig("no source address of the destination's family for %s %s: Sources holds %s; add a source of that family",
			network, describe(address, raddr, fam), joinAddrs(p.addrs)))
	}
	return dests, nil
}

func describe(address string, raddr netip.AddrPort, fam string) string {
	if raddr.IsValid() {
		return raddr.String() + " (" + fam + ")"
	}
	return address + " (" + fam + ")"
}

func ipNetwork(network string) string {
	switch {
	case strings.HasSuffix(network, "4"):
		return "ip4"
	case strings.HasSuffix(network, "6"):
		return "ip6"
	}
	return "ip"
}

func opAddr(network string, ap netip.AddrPort) net.Addr {
	switch {
	case !ap.IsValid():
		return nil
	case strings.HasPrefix(network, "udp"):
		return net.UDPAddrFromAddrPort(ap)
	}
	return net.TCPAddrFromAddrPort(ap)
}

// dialFrom dials dst from the sources of its family, starting at the next in
// turn and failing over to the others while they are exhausted.
func (d *Dialer) dialFrom(ctx context.Context, network string, tcp bool, deadline time.Time, p *pool, dst netip.AddrPort) (net.Conn, error) {
	srcs, cursor := p.family(dst.Addr())
	start := int((cursor.Add(1) - 1) % uint32(len(srcs))) // unsigned: no negative index on 32-bit systems
	nd := d.base(true)
	nd.Timeout, nd.Deadline = 0, deadline

	var (
		tried []netip.Addr
		last  error
		lastE *ExhaustedError
	)
	for i := range srcs {
		s := srcs[(start+i)%len(srcs)]
		if i > 0 {
			d.counters.failovers.Add(1)
		}
		s.dials.Add(1)
		var (
			c   net.Conn
			err error
		)
		if tcp {
			c, err = nd.DialTCP(ctx, network, netip.AddrPortFrom(s.addr, 0), dst)
		} else {
			nd.LocalAddr = s.udp
			c, err = nd.DialContext(ctx, network, dst.String())
		}
		if err == nil {
			s.succeeded.Add(1)
			return c, nil
		}
		ee, err := d.classify(err)
		if ee == nil {
			return nil, err // not a matter of ports: another source would not help
		}
		s.exhausted.Add(1)
		tried = append(tried, s.addr)
		last, lastE = err, ee
	}
	final := *lastE
	final.Tried = tried
	return nil, withErr(last.(*net.OpError), &final)
}
