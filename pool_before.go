package safedial

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// dialPoolBefore is the pool where the hook cannot bind (Windows, whose
// ConnectEx path binds after the hook) or has not been verified to (the
// BSDs): the source is chosen before the dial, by the family the network or
// an IP literal names (IPv4 for a name, when the pool has IPv4 sources), and
// net.Dialer dials from it as its LocalAddr. A source that is exhausted, or
// not local, is followed by a new dial from the next one, while the context
// lasts; a source not local is counted, and its error returned only when no
// source was exhausted.
func (d *Dialer) dialPoolBefore(ctx context.Context, network, address string, p *pool) outcome {
	v6, dst := beforeFamily(network, address, p)
	srcs, cursor := p.v4, &p.next4
	if v6 {
		srcs, cursor = p.v6, &p.next6
	}
	if len(srcs) == 0 {
		return outcome{err: beforeNoFamily(network, address, dst, p, v6)}
	}
	start := cursor.Add(1) - 1
	var (
		out      outcome
		tried    []netip.Addr
		exhaust  *outcome // the last exhausted dial's result
		notLocal *outcome // the first not-local dial's result
		ended    error    // the context's error, when it ended between steps
		prev     *source
		dest     net.Addr // the address the last step dialed
	)
	for i := range uint32(len(srcs)) {
		s := srcs[(start+i)%uint32(len(srcs))]
		if i > 0 {
			if ended = ctxDone(ctx); ended != nil {
				break
			}
			d.counters.failovers.Add(1)
		}
		prev = s
		r := d.dialFrom(ctx, network, address, s)
		out.refused |= r.refused
		out.events = append(out.events, r.events...)
		if op, ok := r.err.(*net.OpError); ok {
			dest = op.Addr
		}
		var ee *ExhaustedError
		switch {
		case r.err == nil:
			s.succeeded.Add(1)
			out.c, out.err = r.c, nil
			return out
		case errors.As(r.err, &ee):
			s.exhausted.Add(1)
			tried = append(tried, s.addr)
			if len(tried) > 1 {
				ee.Tried = tried
			}
			exhaust = &r
		case errors.Is(r.err, ErrSourceNotLocal):
			s.notLocal.Add(1)
			if notLocal == nil {
				notLocal = &r
			}
		default:
			out.err = r.err
			return out
		}
	}
	switch {
	case ended != nil:
		out.err = &net.OpError{Op: "dial", Net: network, Source: opAddr(network, netip.AddrPortFrom(prev.addr, 0)), Addr: dest, Err: netContextError(ended)}
	case exhaust != nil:
		out.err = exhaust.err
	case notLocal != nil:
		out.err = notLocal.err
	}
	return out
}

// beforeFamily returns the family of a dial through p (the network's, as
// tcp4 or udp6, an IP literal's, or for a name IPv4 when p has IPv4
// sources) and its destination when address is an IP literal.
func beforeFamily(network, address string, p *pool) (v6 bool, dst netip.AddrPort) {
	v6 = strings.HasSuffix(network, "6")
	if host, port, err := net.SplitHostPort(address); err == nil {
		if a, err := netip.ParseAddr(host); err == nil {
			v6 = a.Unmap().Is6()
			if n, err := strconv.ParseUint(port, 10, 16); err == nil {
				dst = netip.AddrPortFrom(a.Unmap(), uint16(n))
			}
		} else if !strings.HasSuffix(network, "4") && !v6 {
			v6 = len(p.v4) == 0
		}
	}
	return v6, dst
}

// beforeNoFamily is the error of a dial through p, which has no source of
// the family: the one the hook gives where it binds (on an IP literal,
// net.Dialer passes the hook the address).
func beforeNoFamily(network, address string, dst netip.AddrPort, p *pool, v6 bool) error {
	where := address // a name, on a network of the other family
	if dst.IsValid() {
		where = dst.String()
	}
	return &net.OpError{Op: "dial", Net: network, Addr: opAddr(network, dst), Err: p.noFamily(where, v6)}
}

// dialFrom is one step: net.Dialer with LocalAddr s and d's hook.
func (d *Dialer) dialFrom(ctx context.Context, network, address string, s *source) outcome {
	nd := d.Base
	nd.ControlContext = d.control(true)
	nd.LocalAddr = opAddr(network, netip.AddrPortFrom(s.addr, 0))
	s.dials.Add(1)
	c, err := nd.DialContext(ctx, network, address)
	return d.result(c, err, d.options(true), network)
}
