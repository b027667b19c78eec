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
	// FallbackDelay, KeepAlive, Resolver, Control, ControlContext, ...) with
	// the meaning they have in net.Dialer. Each dial works on a copy: Base
	// is never modified. A Base.ControlContext, or Base.Control when
	// ControlContext is nil, runs after safedial has set its options and
	// before the socket is bound or connected, and its error is returned
	// unchanged inside the *net.OpError. With Sources or ShareUDPPorts (on
	// Linux) it runs once per socket rather than once per attempt: again
	// on the fresh socket of each failover step between sources, and of
	// each shared UDP port given up for another, always through the
	// RawConn of the descriptor the connection keeps.
	Base net.Dialer

	// DisableReuseAddr turns off SO_REUSEADDR on TCP sockets that bind a
	// source address.
	//
	// SO_REUSEADDR adds capacity only where a port is chosen at bind time:
	// binds to an explicit local port (which may then reuse a port whose
	// earlier connection is in TIME_WAIT), dials with DisableBindNoPort,
	// and systems without IP_BIND_ADDRESS_NO_PORT. With
	// IP_BIND_ADDRESS_NO_PORT (the Linux default) it changes nothing. Its
	// cost: while the connection lives, any local socket that also sets
	// SO_REUSEADDR (of any user) may bind, and listen on, the same source
	// address and port; the connection itself and its 4-tuple cannot be
	// taken. Set DisableReuseAddr where that matters more than the
	// capacity above.
	DisableReuseAddr bool

	// DisableBindNoPort turns off IP_BIND_ADDRESS_NO_PORT (Linux), and
	// SO_REUSE_UNICASTPORT (Windows), on sockets that bind a source
	// address. Without it, bind(ip:0) must pick the port before the
	// destination is known, and the host is capped at one connection per
	// port of the range.
	DisableBindNoPort bool

	// Sources, when not empty, is a pool of source addresses. In every
	// connection attempt net.Dialer makes (each resolved address, each
	// Happy Eyeballs racer), safedial's hook binds one source of the
	// attempt's address family (port 0, with the protections above),
	// taking them in turn. When a source has no port left toward the
	// destination, the attempt fails over to the next source of that
	// family; only when all are exhausted does the attempt fail with an
	// error matching ErrEphemeralExhausted, naming every source tried.
	// Before each failover step the context is checked: a dial whose
	// context ended returns net.Dialer's error for it, from the source
	// last used. Errors name the source used, as those of
	// net.Dialer{LocalAddr: that source} do.
	//
	// A source found full toward a destination (per protocol: TCP and UDP
	// ports are separate) is remembered, in a bounded table, until a
	// connection through it gets a port. The memory only orders sources,
	// it never refuses one: an attempt tries the sources not known full
	// first, in turn, then those known full, found full longest ago
	// first. When every source is known full, the attempt asks the kernel
	// about that one source only, so a failing dial costs one scan of the
	// range, as net.Dialer's does, and a port freed on any source is found
	// within one pass over the sources. (On Windows and the BSDs, where
	// the hook cannot bind, the source is chosen before each dial and a
	// full one is followed by a new dial from the next, without memory.)
	//
	// When every source is of one family, a host name is resolved and
	// dialed for that family only (tcp4 or tcp6, visible as such in
	// httptrace's ConnectStart), as net.Dialer does with a LocalAddr;
	// errors keep the network as written. An IP literal of the other
	// family is a configuration error naming the missing family.
	//
	// Every source must be a unicast address of this host. An unspecified,
	// multicast or broadcast address (the limited broadcast, or one of this
	// host's, such as lo's 127.255.255.255, found with the kernel's routing
	// on Linux), or an IPv6 link-local address without a zone
	// (fe80::1%eth0: the zone is the interface's name or index) or with an
	// unknown one, is a configuration error (ErrInvalidConfig) before any
	// socket is made; should the kernel still choose another source for a
	// connection, the dial fails with ErrInvalidConfig, saying so (checked
	// once per source). SetSources also checks, on Linux, that every
	// source is an address of this host. An address that is not (or no longer, as when
	// a secondary address is removed) is treated like a full source: the
	// attempt fails over to the others, later attempts try it last, and
	// Stats counts it as NotLocal; a dial fails with ErrSourceNotLocal,
	// naming it, only when no source was exhausted (every source tried
	// was not local).
	//
	// Sources and Base.LocalAddr are mutually exclusive (a typed nil
	// Base.LocalAddr is no address, as for net.Dialer). Sources apply to
	// the tcp and udp networks; with Sources, the unix and ip networks are
	// a configuration error instead of an unpinned dial. To change Sources
	// while Stats may be read concurrently, use SetSources.
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

	// ShareUDPPorts, when set, lets UDP dials (udp, udp4, udp6: with
	// Base.LocalAddr, with Sources, or from the source the kernel's routing
	// picks) share local ports between destinations, as TCP connections
	// do: each dial chooses its local port itself so that a port serves
	// one connected socket per destination, and the capacity is the ports
	// of the range times the destinations instead of the range. Without
	// it, connect(2) gives a UDP socket a port no other UDP socket uses,
	// whatever the destination.
	//
	// Each dial follows Cloudflare's "connectx" scheme: bind a candidate
	// port with SO_REUSEPORT, turn it off (no other socket can join the
	// port), check with sock_diag that this socket alone would receive
	// from the destination, connect, list the sockets connected to the
	// same 4-tuple and back out if another is there, discard what was
	// queued before the connect, and turn SO_REUSEPORT on again. Every
	// check uses the peer the kernel connects to: this host for an
	// unspecified destination such as ":53".
	//
	// The trust boundary: no two safedial sockets share a 4-tuple, across
	// goroutines and processes; a same-user SO_REUSEPORT socket can. A
	// shared port must keep SO_REUSEPORT on, and the kernel lets any
	// socket of the same user that sets SO_REUSEPORT join it; connected to
	// the same peer, the newest socket takes the replies. That needs no
	// intent: a program of the same user that sets SO_REUSEPORT on client
	// sockets and connects without binding can be given a shared port.
	// Another user is always refused (SO_REUSEADDR, which would let any
	// user join, is never set). Run ShareUDPPorts under a dedicated user
	// where that matters. Shared sockets also carry IP_RECVERR_RFC4884
	// (which does nothing without IP_RECVERR), the mark by which other
	// shared dials, in any process, tell them from sockets that do not
	// share.
	//
	// Ports come from PortRange when set, else from the namespace's range,
	// less net.ipv4.ip_local_reserved_ports and ports outside the namespace
	// range: the ports the kernel hands out. A port held by a socket a
	// shared port cannot join (a plain UDP socket, another user's, a
	// wildcard bind) is taken for every destination. When no port is left
	// the dial fails with an *ExhaustedError (Op "connect", Shared set,
	// Held saying what holds the ports). A dial waits only for other dials
	// of this process from the same source to the same peer, and under its
	// context; no lock is held while the user's hooks run.
	//
	// Cost: besides a few lookups, each dial walks the kernel's UDP table
	// once (a sock_diag dump; the table is host-wide, every namespace's
	// sockets included), so a shared dial costs more as the host holds
	// more UDP sockets: the README has the table and the command that
	// measures it. It was asked for explicitly, so where sock_diag or
	// SO_REUSEPORT is not available the dial fails with an error matching
	// errors.ErrUnsupported instead of silently capping. A Base.LocalAddr
	// with an explicit port is bound as is.
	ShareUDPPorts bool

	// OnExhausted, when not nil, is called on the dialing goroutine, before
	// the dial returns, for the exhaustion a failing dial returns and, with
	// Sources (on Linux), for every source the kernel found full in any of
	// the dial's attempts: each failover step, including those of an
	// attempt toward an address net.Dialer then moved past, even when the
	// dial connected. Without Sources, net.Dialer keeps the errors of the
	// addresses it moved past to itself, so only the returned one is seen.
	// It must not block for long.
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
