package safedial

import (
	"context"
	"net"
	"net/netip"
)

// DialTCP connects to raddr from laddr on a TCP network, like
// [net.Dialer.DialTCP]: only laddr is used, never Base.LocalAddr. A zero
// laddr means no local address: unlike net.Dialer.DialTCP, which then binds
// the wildcard address, the socket is not bound before connect, so the
// kernel picks the source port knowing the destination (or binds a source of
// the pool). With Sources, laddr must be zero. A zero raddr is an error ("missing address"), where net.Dialer.DialTCP
// would dial the wildcard address.
func (d *Dialer) DialTCP(ctx context.Context, network string, laddr, raddr netip.AddrPort) (*net.TCPConn, error) {
	c, err := d.finish(d.dialTCP(ctx, network, laddr, raddr))
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func (d *Dialer) dialTCP(ctx context.Context, network string, laddr, raddr netip.AddrPort) outcome {
	fail := func(err error) outcome {
		return outcome{err: &net.OpError{Op: "dial", Net: network, Source: opAddr(network, laddr), Addr: opAddr(network, raddr), Err: err}}
	}
	switch {
	case !raddr.IsValid() && (network == "tcp" || network == "tcp4" || network == "tcp6"):
		return fail(&net.AddrError{Err: "missing address"})
	case !laddr.IsValid() && !familyMismatch(network, raddr.Addr()):
		// No local address: connect without binding (whatever
		// Base.LocalAddr holds, as net.Dialer.DialTCP), or from the pool.
		return d.dial(ctx, network, raddr.String(), nil)
	case laddr.IsValid() && len(d.Sources) > 0:
		return fail(errConfig("Sources and a local address are both set: use one of them"))
	case laddr.IsValid() && d.GetSources != nil:
		return fail(errConfig("GetSources and a local address are both set: use one of them"))
	}
	// A local address, or an input net.Dialer.DialTCP rejects with its own
	// error (an unknown network, an address of the other family): let it.
	if err := d.PortRange.check(); err != nil {
		return fail(err)
	}
	nd := d.Base
	nd.ControlContext = d.control(true)
	c, err := nd.DialTCP(ctx, network, laddr, raddr)
	if err != nil {
		return d.result(nil, err, d.options(true), network)
	}
	return d.result(c, nil, d.options(true), network)
}

// familyMismatch reports a destination of the other family than a tcp4 or
// tcp6 network names.
func familyMismatch(network string, a netip.Addr) bool {
	switch network {
	case "tcp4":
		return a.Is6() && !a.Is4In6()
	case "tcp6":
		return a.Is4()
	case "tcp":
		return false
	}
	return true // not a TCP network: net.Dialer.DialTCP says so
}
