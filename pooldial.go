package safedial

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// One pool dial: dialPool plans it (checks, the network net.Dialer dials),
// dialHooked hands it to net.Dialer with the pool's hook (poolDial.control,
// in poolhook.go), and finalError completes the error net.Dialer returns.

// dialPool dials address with the pool of Sources: net.Dialer dials, and the
// pool's hook binds a source in each attempt. la is the local address the
// call asked for besides (Base.LocalAddr for DialContext); p is the pool of
// Sources, or the one GetSources returned.
func (d *Dialer) dialPool(ctx context.Context, network, address string, la net.Addr, p *pool) outcome {
	fail := func(err error) outcome {
		return outcome{err: &net.OpError{Op: "dial", Net: network, Err: err}}
	}
	switch {
	case strings.HasPrefix(network, "unix"), strings.HasPrefix(network, "ip"):
		// Deliberately not net.Dialer's behaviour: a dial that cannot be
		// pinned must not pass for a pinned one.
		return fail(errConfig("Sources apply to the tcp and udp networks, not %q", network))
	case !noAddr(la):
		return fail(errConfig("Sources and Base.LocalAddr are both set: use one of them"))
	}
	if p.err != nil {
		return fail(p.err)
	}
	if d.ShareUDPPorts && strings.HasPrefix(network, "udp") && !shareSupported {
		return fail(errNoShare)
	}
	if !poolInHook {
		return d.dialPoolBefore(ctx, network, address, p)
	}
	return d.dialHooked(ctx, network, address, d.newPoolDial(p))
}

// noAddr reports whether a is no address: nil, or a typed nil pointer, which
// net.Dialer also treats as no LocalAddr.
func noAddr(a net.Addr) bool {
	switch a := a.(type) {
	case nil:
		return true
	case *net.TCPAddr:
		return a == nil
	case *net.UDPAddr:
		return a == nil
	case *net.IPAddr:
		return a == nil
	case *net.UnixAddr:
		return a == nil
	}
	return false
}

// dialNetwork is the network net.Dialer dials for a pool: for a pool of one
// family, a host name (or an empty host) is dialed on that family's network
// (tcp4, udp6), so that net.Dialer resolves and tries only addresses the
// pool can bind, as it does for a LocalAddr. finalError puts the caller's
// network back into errors.
func (p *pool) dialNetwork(network, address string) string {
	if p == nil || network != "tcp" && network != "udp" || len(p.v4) > 0 && len(p.v6) > 0 {
		return network
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return network // net.Dialer reports it
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return network // an IP literal: its family decides
	}
	switch {
	case network == "tcp" && len(p.v4) > 0:
		return "tcp4"
	case network == "tcp":
		return "tcp6"
	case len(p.v4) > 0:
		return "udp4"
	}
	return "udp6"
}

// dialName dials a host name for a pool of one family (netw is that
// family's network) as net.Dialer{LocalAddr: a source} does: one lookup of
// both families under the dial's one deadline, then the addresses of the
// pool's family in turn, each with its share of the time left (net.Dialer's
// partial deadlines), the first error returned. A name with addresses of the
// other family only gives net.Dialer's "address SRC:0: no suitable address
// found". An empty host (this host) needs no lookup: net.Dialer dials it.
func (p *pool) dialName(ctx context.Context, nd *net.Dialer, network, netw, address string) (net.Conn, error) {
	host, port, _ := net.SplitHostPort(address) // dialNetwork split it
	if host == "" {
		return nd.DialContext(ctx, netw, address)
	}
	one := *nd // the deadline moves to ctx: Timeout counts from now, once
	one.Timeout, one.Deadline = 0, time.Time{}
	if dl := dialDeadline(ctx, nd); !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	r := nd.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	addrs, err := lookupAddrs(ctx, r, "ip", host)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	v4 := len(p.v4) > 0
	fam := addrs[:0]
	for _, a := range addrs {
		if a.Unmap().Is4() == v4 {
			fam = append(fam, a.Unmap())
		}
	}
	if len(fam) == 0 {
		srcs := p.v4
		if !v4 {
			srcs = p.v6
		}
		hint := opAddr(network, netip.AddrPortFrom(srcs[0].addr, 0))
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "no suitable address found", Addr: hint.String()}}
	}
	var first error
	for i, a := range fam {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok {
			actx, cancel = context.WithDeadline(ctx, partialDeadline(time.Now(), dl, len(fam)-i))
		}
		c, err := one.DialContext(actx, netw, net.JoinHostPort(a.String(), port))
		cancel()
		if err == nil {
			return c, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// lookupAddrs is r.LookupNetIP(ctx, fam, host) keeping each IPv6 address's
// zone, as net.Dialer does: LookupNetIP drops it, so a hosts-file entry
// "fe80::2%eth0 name" came back as fe80::2, which has no link. IPv4 lookups
// go through LookupNetIP, which asks for A records only.
func lookupAddrs(ctx context.Context, r *net.Resolver, fam, host string) ([]netip.Addr, error) {
	if fam == "ip4" {
		return r.LookupNetIP(ctx, fam, host)
	}
	ias, err := r.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	for _, ia := range ias {
		a, ok := netip.AddrFromSlice(ia.IP)
		if a = a.Unmap(); !ok || fam == "ip6" && !a.Is6() {
			continue
		}
		if a.Is6() && ia.Zone != "" {
			a = a.WithZone(ia.Zone)
		}
		addrs = append(addrs, a)
	}
	if len(addrs) == 0 {
		return nil, &net.DNSError{Err: "no suitable address found", Name: host, IsNotFound: true}
	}
	return addrs, nil
}

// dialDeadline is the earliest of ctx's deadline, nd.Deadline and now plus
// nd.Timeout, as net.Dialer computes it; zero for none.
func dialDeadline(ctx context.Context, nd *net.Dialer) time.Time {
	dl := nd.Deadline
	if nd.Timeout > 0 {
		if t := time.Now().Add(nd.Timeout); dl.IsZero() || t.Before(dl) {
			dl = t
		}
	}
	if t, ok := ctx.Deadline(); ok && (dl.IsZero() || t.Before(dl)) {
		dl = t
	}
	return dl
}

// partialDeadline is net.Dialer's share of the time left until deadline for
// one of addrsRemaining addresses: an equal share, but at least 2 s (or all
// that is left).
func partialDeadline(now, deadline time.Time, addrsRemaining int) time.Time {
	left := deadline.Sub(now)
	share := left / time.Duration(addrsRemaining)
	const saneMinimum = 2 * time.Second
	if share < saneMinimum {
		share = min(left, saneMinimum)
	}
	return now.Add(share)
}

func (d *Dialer) newPoolDial(p *pool) *poolDial {
	pd := &poolDial{d: d, p: p, o: d.options(true), user: d.userHook(), share: d.ShareUDPPorts}
	pd.recs = pd.recBuf[:0]
	if pd.share {
		// Zero: the namespace's range as shareRange reads it at the
		// dial, not through namespaceRange's one-second cache.
		pd.shareRange = d.PortRange
	}
	return pd
}

// dialShared is a UDP dial with ShareUDPPorts and no Sources: from la's
// address (Base.LocalAddr), or from the source the kernel's routing picks
// for each destination.
func (d *Dialer) dialShared(ctx context.Context, network, address string, la net.Addr) outcome {
	var p *pool // a pool of one: its memory of full destinations lasts across dials
	if la, ok := la.(*net.UDPAddr); ok && la != nil && !la.AddrPort().Addr().Unmap().IsUnspecified() && len(la.IP) > 0 {
		a, _ := netip.AddrFromSlice(la.IP)
		src := [1]netip.Addr{a.Unmap().WithZone(la.Zone)}
		if p = d.shared.Load(); p == nil || !p.matches(src[:]) {
			if p = newPool(src[:]); p.err != nil {
				return outcome{err: &net.OpError{Op: "dial", Net: network, Source: la, Err: p.err}}
			}
			d.shared.Store(p)
		}
	}
	if !shareSupported {
		return outcome{err: &net.OpError{Op: "dial", Net: network, Source: la, Err: errNoShare}}
	}
	return notPool(d.dialHooked(ctx, network, address, d.newPoolDial(p)))
}

// errNoShare is the error of ShareUDPPorts where it cannot be honoured.
var errNoShare = &unsupportedError{what: "ShareUDPPorts needs Linux (sock_diag and SO_REUSEPORT)"}

// dialHooked dials with pd's hook, which binds every attempt.
func (d *Dialer) dialHooked(ctx context.Context, network, address string, pd *poolDial) outcome {
	nd := d.Base
	nd.LocalAddr = nil // the hook binds
	nd.ControlContext = pd.control
	netw := pd.p.dialNetwork(network, address)
	var (
		c   net.Conn
		err error
	)
	if netw != network {
		c, err = pd.p.dialName(ctx, &nd, network, netw, address)
	} else {
		c, err = nd.DialContext(ctx, netw, address)
	}
	pd.mu.Lock()
	pd.done = true
	out := outcome{c: c, events: pd.events, refused: pd.o.refusedNow(network)}
	pd.mu.Unlock()
	for i, e := range out.events {
		// The attempts' network is net.Dialer's (tcp4, udp6); the
		// events carry the dial's, as its error does. A copy: a racer
		// that lost may still read e.
		if e.Net != network {
			ev := *e
			ev.Net = network
			out.events[i] = &ev
		}
	}
	if err != nil {
		out.err = pd.finalError(err, network, out.refused)
		return out
	}
	if s := pd.used(c); s != nil {
		s.succeeded.Add(1)
	}
	d.inRange(&out, network)
	return out
}

// finalError completes the error net.Dialer returned for a pool dial: the
// caller's network, the source used (net.Dialer saw no LocalAddr), as
// net.Dialer{LocalAddr: that source} would give it, and for an exhaustion
// why, when an option was refused.
func (pd *poolDial) finalError(err error, network string, refused uint32) error {
	op, ok := err.(*net.OpError)
	if !ok {
		return err
	}
	op = withErr(op, op.Err)
	op.Net = network
	switch e := op.Err.(type) {
	case *ExhaustedError:
		e.Net = network
		e.noteRefused(refused)
		op.Source = opAddr(network, netip.AddrPortFrom(e.Source, 0))
	case *sourceError:
		op.Source = opAddr(network, netip.AddrPortFrom(e.src, 0))
	default:
		if op.Source == nil && op.Addr != nil {
			if s := pd.sourceFor(addrPort(op.Addr)); s != nil {
				op.Source = opAddr(network, netip.AddrPortFrom(s.addr, 0))
			}
		}
	}
	return op
}

// sourceFor returns the source of the last attempt toward dst; when there was
// none (the dial ended before it), the source of dst's family, if the pool
// has exactly one. A dial from the routed source (no pool) names none, as
// net.Dialer without a LocalAddr.
func (pd *poolDial) sourceFor(dst netip.AddrPort) *source {
	if pd.p == nil {
		return nil
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	pd.mu.Lock()
	defer pd.mu.Unlock()
	for i := len(pd.recs) - 1; i >= 0; i-- {
		if pd.recs[i].dst == dst {
			return pd.recs[i].src
		}
	}
	srcs := pd.p.v4
	if dst.Addr().Is6() {
		srcs = pd.p.v6
	}
	if len(srcs) == 1 {
		return srcs[0]
	}
	return nil
}

// used returns the source connection c was made from: the one whose attempt
// got a port toward c's peer.
func (pd *poolDial) used(c net.Conn) *source {
	if pd.p == nil {
		return nil
	}
	peer := addrPort(c.RemoteAddr())
	pd.mu.Lock()
	defer pd.mu.Unlock()
	var only *source
	n := 0
	for _, r := range pd.recs {
		if !r.ok {
			continue
		}
		if r.dst == peer {
			return r.src
		}
		only, n = r.src, n+1
	}
	if n == 1 {
		return only // a dial to the unspecified address: the peer is this host
	}
	local := addrPort(c.LocalAddr()).Addr().WithZone("")
	for i := range pd.p.srcs {
		if s := &pd.p.srcs[i]; s.addr.WithZone("") == local {
			return s
		}
	}
	return nil
}

// netContextError returns the error net.Dialer gives for a context that
// ended (context.Canceled or DeadlineExceeded): its own, taken from a dial
// with such a context, which makes no socket. It matches err with errors.Is,
// and a deadline's is a timeout.
func netContextError(err error) error {
	canceled, timeout := netContextErrors()
	switch {
	case err == context.Canceled && canceled != nil:
		return canceled
	case err == context.DeadlineExceeded && timeout != nil:
		return timeout
	}
	return err
}

var netContextErrors = sync.OnceValues(func() (canceled, timeout error) {
	get := func(ctx context.Context, want error) error {
		_, err := (&net.Dialer{}).DialContext(ctx, "tcp", "127.0.0.1:9")
		var op *net.OpError
		if errors.As(err, &op) && errors.Is(op.Err, want) {
			return op.Err
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	canceled = get(ctx, context.Canceled)
	ctx, cancel = context.WithDeadline(context.Background(), time.Unix(1, 0))
	defer cancel()
	timeout = get(ctx, context.DeadlineExceeded)
	return canceled, timeout
})
