package safedial

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
)

// Dialer dials like [net.Dialer], with the socket options that keep a bound
// source address from exhausting ephemeral ports, exhaustion classified into
// [ErrEphemeralExhausted], optional pools of source addresses, per-socket port
// ranges, and statistics.
//
// The zero value is ready to use and safe: every protection is on. A Dialer is
// safe for concurrent use by multiple goroutines. Its fields may be changed
// between dials but not during them, as with net.Dialer. A Dialer holds
// statistics, so it must not be copied after first use; share a pointer.
//
// Every dial is made by a copy of Base (a net.Dialer): resolution, Happy
// Eyeballs, partial deadlines per address, cancellation, httptrace hooks and
// error shapes are net.Dialer's own. safedial works inside net.Dialer's
// Control hook, which runs once per connection attempt.
type Dialer struct {
	// Base holds the usual dialing settings (Timeout, Deadline, LocalAddr,
	// FallbackDelay, KeepAlive, Resolver, Control, ...) with their
	// net.Dialer meaning; each dial works on a copy, and Base is never
	// modified. Base.ControlContext (or Base.Control) runs after safedial's
	// options, before the socket is bound or connected, on the descriptor
	// the connection keeps; with Sources or ShareUDPPorts it runs again on
	// each fresh socket of a failover step.
	Base net.Dialer

	// DisableReuseAddr turns off SO_REUSEADDR on TCP sockets that bind a
	// source address. SO_REUSEADDR adds capacity only where the port is
	// chosen at bind time (an explicit port, DisableBindNoPort, systems
	// without IP_BIND_ADDRESS_NO_PORT), and while the connection lives it
	// lets any local socket that also sets it bind, and listen on, the same
	// address and port.
	DisableReuseAddr bool

	// DisableBindNoPort turns off the option that chooses the port at
	// connect time: IP_BIND_ADDRESS_NO_PORT on Linux, SO_REUSE_UNICASTPORT
	// on Windows. Without it, bind(ip:0) picks the port before the
	// destination is known, and a source is capped at one connection per
	// port of the range.
	DisableBindNoPort bool

	// Sources, when not empty, is a pool of source addresses: each
	// connection attempt binds one source of its family (port 0), taking
	// them in turn, and fails over to the next when a source has no port
	// left toward the destination; only when every source is exhausted does
	// it fail with ErrEphemeralExhausted, naming the sources tried. A
	// source found full or not local is tried after the others until it
	// gets a port again, never refused. Every source must be a unicast
	// address of this host. Sources and Base.LocalAddr are mutually
	// exclusive; to change Sources while Stats may be read, use SetSources.
	// See the package doc's "Source pools".
	Sources []netip.Addr

	// GetSources, when not nil, chooses the sources of each dial from its
	// context, network and address (as given to DialContext: before
	// resolution): the pool it returns is used as Sources would be, with
	// the same failover, memory of full sources and errors; a nil pool
	// dials from the source the kernel's routing picks, and an error fails
	// the dial, returned inside the *net.OpError. It runs once per dial on
	// the dialing goroutine, before any socket is made, and must be safe
	// for concurrent use. Build each *SourcePool once (NewSourcePool checks
	// it as SetSources does) and return it for every dial that shares it:
	// a dial then costs what a Sources dial costs. GetSources and Sources
	// are mutually exclusive; Stats().Sources stays nil: see
	// SourcePool.Stats. [Follower.GetSources] fits here.
	GetSources func(ctx context.Context, network, address string) (*SourcePool, error)

	// PortRange, when not zero, restricts the local ports of every socket
	// this Dialer makes to Lo..Hi (inclusive), with IP_LOCAL_PORT_RANGE
	// (Linux 6.3 and later). It is never silently ignored, since processes
	// relying on disjoint ranges would then collide: where the system does
	// not have or refuses the option the dial fails with an error matching
	// errors.ErrUnsupported, and a range that does not intersect the
	// namespace's net.ipv4.ip_local_port_range (where the kernel would
	// fall back to the whole namespace range) fails with ErrInvalidConfig.
	// No connection with a local port outside PortRange is ever returned.
	PortRange PortRange

	// ShareUDPPorts, when set, lets UDP dials share a local port between
	// destinations, as TCP connections do: each dial picks its own port
	// (Cloudflare's "connectx" scheme, checked with sock_diag), so capacity
	// is the ports of the range times the destinations. No two safedial
	// sockets share a 4-tuple, but a socket of the same user that sets
	// SO_REUSEPORT can join a shared port and take its replies: use a
	// dedicated user where that matters. Each dial walks the kernel's
	// host-wide UDP table once, so it costs more on a host with many UDP
	// sockets. Where it cannot be honoured the dial fails with an error
	// matching errors.ErrUnsupported.
	ShareUDPPorts bool

	// OnExhausted, when not nil, is called on the dialing goroutine, before
	// the dial returns, for every exhaustion the kernel reported: the one a
	// failing dial returns and, with Sources on Linux, each source found
	// full in any attempt, even when the dial connected. It must not block
	// for long.
	OnExhausted func(*ExhaustedError)

	// OnRefused, when not nil, is called once per option for this Dialer,
	// the first time a dial goes on without an optional socket option
	// because the system refused it (see [RefusedError]). It runs on the
	// dialing goroutine (inside the Control hook for code that uses
	// [Dialer.ControlContext] directly), and must not block for long.
	OnRefused func(*RefusedError)

	counters counters
	pool     atomic.Pointer[pool] // of Sources
	shared   atomic.Pointer[pool] // of Base.LocalAddr, for ShareUDPPorts
	reported atomic.Uint32        // options whose refusal OnRefused has seen
}

// PortRange is an inclusive range of local ports. The zero value means the
// namespace's net.ipv4.ip_local_port_range.
type PortRange struct {
	// Lo is the lowest port of the range; 0 only in the zero PortRange.
	Lo uint16 `json:"lo"`
	// Hi is the highest port of the range, at least Lo; 0 only in the zero
	// PortRange.
	Hi uint16 `json:"hi"`
}

// String formats r as "Lo-Hi".
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// Dial connects to the address on the named network, like
// [net.Dialer.Dial].
func (d *Dialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

// DialContext connects to the address on the named network using the
// provided context, like [net.Dialer.DialContext], with the protections and
// options of d. Its method value fits http.Transport.DialContext, pgx's and
// go-redis's dial functions and x/net/proxy.ContextDialer, and gRPC's
// WithContextDialer through a one-line adapter that passes "tcp".
//
// Errors are *net.OpError as from net.Dialer. Exhaustion errors match
// [ErrEphemeralExhausted] and wrap an [*ExhaustedError]; a source that is not
// local matches [ErrSourceNotLocal]; configuration errors match
// [ErrInvalidConfig].
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if len(d.Sources) == 0 && d.PortRange == (PortRange{}) && !d.ShareUDPPorts && d.GetSources == nil && d.pool.Load() == nil {
		// The common case, kept short (it measurably matters): nothing to
		// check before the dial and, on success with no option refused,
		// nothing to report. dial is the general path; its last lines
		// repeat these three on purpose: moving them into a shared helper
		// cost 0.2-0.5 points of BenchmarkDialRatio here.
		bind := d.Base.LocalAddr != nil && !noAddr(d.Base.LocalAddr)
		nd := d.Base
		nd.ControlContext = d.control(bind)
		c, err := nd.DialContext(ctx, network, address)
		if err == nil && (!bind || refusedAny.Load() == 0) {
			d.counters.succeeded.Add(1)
			return c, nil
		}
		return d.finish(d.result(c, err, d.options(bind), network))
	}
	return d.finish(d.dial(ctx, network, address, d.Base.LocalAddr))
}

// outcome is what one dial leaves for finish: the connection or error, and
// the events to report on the dialing goroutine.
type outcome struct {
	c       net.Conn
	err     error
	events  []*ExhaustedError // exhaustion reported by the kernel, in order
	refused uint32            // optional options this dial went without
}

// finish reports o's events, counts the call once and returns its result.
func (d *Dialer) finish(o outcome) (net.Conn, error) {
	if o.refused != 0 || len(o.events) > 0 {
		return d.report(o)
	}
	d.count(o.err)
	return o.c, o.err
}

// report calls the hooks for o's events; one that panics still leaves the
// call counted (as failed) and the connection closed.
func (d *Dialer) report(o outcome) (net.Conn, error) {
	done := false
	defer func() {
		if !done {
			d.counters.failed.Add(1)
			if o.c != nil {
				o.c.Close()
			}
		}
	}()
	if o.refused != 0 {
		d.counters.refused.Add(1)
		d.reportRefused(o.refused)
	}
	if d.OnExhausted != nil {
		for _, e := range o.events {
			d.OnExhausted(e)
		}
	}
	done = true
	d.count(o.err)
	return o.c, o.err
}

// dial is the general path: la is the local address the call asks for
// (Base.LocalAddr, or none for DialTCP with a zero laddr).
func (d *Dialer) dial(ctx context.Context, network, address string, la net.Addr) outcome {
	if err := d.PortRange.check(); err != nil {
		return outcome{err: &net.OpError{Op: "dial", Net: network, Err: err}}
	}
	if d.GetSources != nil {
		return d.dialChosen(ctx, network, address, la)
	}
	if len(d.Sources) > 0 {
		return d.dialPool(ctx, network, address, la, d.sourcePool())
	}
	if d.pool.Load() != nil {
		d.pool.Store(nil) // Sources was emptied: Stats describes no pool
	}
	return d.dialUnpooled(ctx, network, address, la)
}

// dialUnpooled dials without a pool of sources: from la, if any, or from
// the source the kernel's routing picks.
func (d *Dialer) dialUnpooled(ctx context.Context, network, address string, la net.Addr) outcome {
	if d.ShareUDPPorts && strings.HasPrefix(network, "udp") && sharesLocal(la) {
		return d.dialShared(ctx, network, address, la)
	}
	bind := !noAddr(la) // a typed nil is no address, as for net.Dialer
	nd := d.Base
	nd.LocalAddr = la
	nd.ControlContext = d.control(bind)
	c, err := nd.DialContext(ctx, network, address)
	return d.result(c, err, d.options(bind), network)
}

// result turns what net.Dialer returned into an outcome: the error
// classified, the connection checked against PortRange, and the options the
// system refused.
func (d *Dialer) result(c net.Conn, err error, o options, network string) outcome {
	out := outcome{c: c, refused: o.refusedNow(network)}
	if err != nil {
		ee, err := d.classify(err, out.refused)
		if ee != nil {
			out.events = []*ExhaustedError{ee}
		}
		out.err = err
		return out
	}
	d.inRange(&out, network)
	return out
}

// sharesLocal reports whether a UDP dial from la can share ports: not when
// la names an explicit port, nor when it is not a *net.UDPAddr (net.Dialer
// then reports the mismatch).
func sharesLocal(la net.Addr) bool {
	if noAddr(la) {
		return true
	}
	u, ok := la.(*net.UDPAddr)
	return ok && u.Port == 0
}

// count records the outcome of one call: one atomic add on success.
func (d *Dialer) count(err error) {
	if err == nil {
		d.counters.succeeded.Add(1)
		return
	}
	d.counters.failed.Add(1)
	if op, ok := err.(*net.OpError); ok {
		if _, ok := op.Err.(*ExhaustedError); ok {
			d.counters.exhausted.Add(1)
		}
	}
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
