package safedial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
type Dialer struct {
	// Base holds the usual dialing settings (Timeout, Deadline, LocalAddr,
	// KeepAlive, Resolver, Control, ControlContext, ...) with the meaning
	// they have in net.Dialer. Each dial works on a copy: Base is never
	// modified. A Base.ControlContext, or Base.Control when ControlContext
	// is nil, runs after safedial has set its options, with the same
	// arguments, and its error is returned unchanged inside the
	// *net.OpError.
	Base net.Dialer

	// DisableReuseAddr turns off SO_REUSEADDR on TCP sockets that bind a
	// source address. SO_REUSEADDR lets an explicit-port bind reuse a port
	// whose earlier connection is in TIME_WAIT.
	DisableReuseAddr bool

	// DisableBindNoPort turns off IP_BIND_ADDRESS_NO_PORT (Linux) on
	// sockets that bind a source address. Without it, bind(ip:0) must pick
	// the port before the destination is known, and the host is capped at
	// one connection per port of the range.
	DisableBindNoPort bool

	// Sources, when not empty, is a pool of source addresses: each dial
	// binds one of them (port 0, with the protections above), chosen in
	// turn among those of the destination's address family. A host name
	// is resolved with Base.Resolver; its addresses that have a source of
	// their family are tried one after another in the resolver's order
	// (without Happy Eyeballs racing), sharing Base.Timeout. When a source
	// has no port left toward the destination, the dial fails over to the
	// next source of that family; only when all are exhausted does it
	// return an error matching ErrEphemeralExhausted, naming every source
	// tried. A source that is not an address of this host fails the dial
	// that reaches it with an error matching ErrSourceNotLocal, naming it;
	// failover never continues past it, so a misconfiguration shows instead
	// of silently shrinking the pool. Sources and Base.LocalAddr are
	// mutually exclusive. Sources apply to the tcp and udp networks.
	Sources []netip.Addr

	// PortRange, when not zero, restricts the local ports of every socket
	// this Dialer makes to Lo..Hi (inclusive), with IP_LOCAL_PORT_RANGE
	// (Linux 6.3 and later). The kernel intersects it with the namespace's
	// net.ipv4.ip_local_port_range. Where it is not available the dial
	// fails with an error matching errors.ErrUnsupported: it is never
	// silently ignored, since processes relying on disjoint ranges would
	// then collide.
	PortRange PortRange

	// OnExhausted, when not nil, is called on the dialing goroutine for
	// every exhaustion event, including each failover step inside a pool,
	// before the dial returns. It must not block for long.
	OnExhausted func(*ExhaustedError)

	counters counters
	pool     atomic.Pointer[pool]
}

// PortRange is an inclusive range of local ports. The zero value means the
// namespace's net.ipv4.ip_local_port_range.
type PortRange struct {
	Lo, Hi uint16
}

// String formats r as "Lo-Hi".
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// validate reports a configuration error for an inverted or half-zero range,
// and an error matching errors.ErrUnsupported where ranges are not available.
func (r PortRange) validate() error {
	switch {
	case r == PortRange{}:
		return nil
	case r.Lo == 0 || r.Hi == 0:
		return errConfig("PortRange %v: set both Lo and Hi, or neither for the system range", r)
	case r.Lo > r.Hi:
		return errConfig("PortRange %v is inverted: Lo must not exceed Hi", r)
	case !portRangeSupported:
		return &unsupportedError{what: "PortRange needs per-socket port ranges (IP_LOCAL_PORT_RANGE), which only Linux 6.3 and later have"}
	}
	return nil
}

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
	c, err := d.dialContext(ctx, network, address)
	d.count(err)
	return c, err
}

func (d *Dialer) dialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if err := d.PortRange.validate(); err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	if len(d.Sources) > 0 {
		return d.dialPool(ctx, network, address, netip.AddrPort{})
	}
	nd := d.base(d.Base.LocalAddr != nil)
	c, err := nd.DialContext(ctx, network, address)
	if err != nil {
		_, err = d.classify(err)
		return nil, err
	}
	return c, nil
}

// DialTCP connects to raddr from laddr on a TCP network, like
// [net.Dialer.DialTCP]. A zero laddr means no local address: unlike
// net.Dialer.DialTCP, which then binds the wildcard address, the socket is not
// bound before connect, so the kernel picks the source port knowing the
// destination. With Sources, laddr must be zero.
func (d *Dialer) DialTCP(ctx context.Context, network string, laddr, raddr netip.AddrPort) (*net.TCPConn, error) {
	c, err := d.dialTCP(ctx, network, laddr, raddr)
	d.count(err)
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func (d *Dialer) dialTCP(ctx context.Context, network string, laddr, raddr netip.AddrPort) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network)}
	}
	switch {
	case !raddr.IsValid():
		return nil, &net.OpError{Op: "dial", Net: network, Source: opAddr(network, laddr), Err: &net.AddrError{Err: "missing address"}}
	case !laddr.IsValid():
		// No local address: connect without binding (or from the pool).
		return d.dialContext(ctx, network, raddr.String())
	case len(d.Sources) > 0:
		return nil, &net.OpError{Op: "dial", Net: network, Source: opAddr(network, laddr), Addr: opAddr(network, raddr),
			Err: errConfig("Sources and a local address are both set: use one of them")}
	}
	if err := d.PortRange.validate(); err != nil {
		return nil, &net.OpError{Op: "dial", Net: network, Err: err}
	}
	nd := d.base(true)
	c, err := nd.DialTCP(ctx, network, laddr, raddr)
	if err != nil {
		_, err = d.classify(err)
		return nil, err
	}
	return c, nil
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

// base returns the net.Dialer for one dial: a copy of Base with safedial's
// hook; bind tells whether the dial binds a source address.
func (d *Dialer) base(bind bool) net.Dialer {
	nd := d.Base
	nd.ControlContext = d.control(bind)
	return nd
}

// ControlContext sets d's socket options (SO_REUSEADDR,
// IP_BIND_ADDRESS_NO_PORT and PortRange, as the platform and d's fields
// allow) on the socket c, for code that must keep its own net.Dialer:
//
//	nd := &net.Dialer{LocalAddr: src, ControlContext: sd.ControlContext}
//
// It cannot know whether the dial will bind, so it sets the options always.
// It does not run d.Base's hooks; to combine it with a hook of your own, call
// it first from that hook. It leaves sockets of networks other than tcp and
// udp untouched. Errors from it are not classified: use [Classify] on the
// dial's error.
func (d *Dialer) ControlContext(ctx context.Context, network, address string, c syscall.RawConn) error {
	if err := d.PortRange.validate(); err != nil {
		return err
	}
	return d.options(true).apply(network, c)
}

// options is the set of socket options one dial sets.
type options struct {
	reuseAddr  bool   // SO_REUSEADDR, TCP only
	bindNoPort bool   // IP_BIND_ADDRESS_NO_PORT
	portRange  uint32 // IP_LOCAL_PORT_RANGE: Hi<<16 | Lo; 0 for none
}

// options returns what a dial sets; bind tells whether it binds a source
// address, without which SO_REUSEADDR and IP_BIND_ADDRESS_NO_PORT do nothing
// and are skipped.
func (d *Dialer) options(bind bool) options {
	var o options
	if bind {
		o.reuseAddr = reuseAddrSupported && !d.DisableReuseAddr
		o.bindNoPort = bindNoPortSupported && !d.DisableBindNoPort
	}
	o.portRange = uint32(d.PortRange.Hi)<<16 | uint32(d.PortRange.Lo)
	return o
}

// apply sets o on c, for tcp and udp networks only.
func (o options) apply(network string, c syscall.RawConn) error {
	tcp := strings.HasPrefix(network, "tcp")
	if !tcp && !strings.HasPrefix(network, "udp") {
		return nil
	}
	// RawConn.Control takes a func that escapes; a pooled setter with its
	// method value made once keeps the dial path free of allocations.
	s := setters.Get().(*setter)
	s.o, s.tcp = o, tcp
	cerr := c.Control(s.fn)
	err := s.err
	s.err = nil
	setters.Put(s)
	if cerr != nil {
		return cerr
	}
	return err
}

type setter struct {
	o   options
	tcp bool
	err error
	fn  func(fd uintptr) // s.set, bound once
}

func (s *setter) set(fd uintptr) { s.err = setOptions(fd, s.tcp, s.o) }

var setters = sync.Pool{New: func() any {
	s := new(setter)
	s.fn = s.set
	return s
}}

type controlFunc = func(ctx context.Context, network, address string, c syscall.RawConn) error

// fixedHooks are the hooks for dials that set only boolean options and have
// no user hook: the common case costs no allocation.
var fixedHooks = func() (h [4]controlFunc) {
	for i := range h {
		o := options{reuseAddr: i&1 != 0, bindNoPort: i&2 != 0}
		h[i] = func(_ context.Context, network, _ string, c syscall.RawConn) error {
			return o.apply(network, c)
		}
	}
	return h
}()

// control returns the ControlContext for one dial: safedial's options, then
// the user's hook, with net.Dialer's rule that ControlContext wins over
// Control.
func (d *Dialer) control(bind bool) controlFunc {
	user := d.Base.ControlContext
	if user == nil && d.Base.Control != nil {
		userCtl := d.Base.Control
		user = func(_ context.Context, network, address string, c syscall.RawConn) error {
			return userCtl(network, address, c)
		}
	}
	o := d.options(bind)
	switch {
	case o == options{}:
		return user
	case user == nil && o.portRange == 0:
		i := 0
		if o.reuseAddr {
			i |= 1
		}
		if o.bindNoPort {
			i |= 2
		}
		return fixedHooks[i]
	}
	return func(ctx context.Context, network, address string, c syscall.RawConn) error {
		if err := o.apply(network, c); err != nil {
			return err
		}
		if user != nil {
			return user(ctx, network, address, c)
		}
		return nil
	}
}

// classify turns the error of one dial attempt into safedial's: exhaustion
// is reported to OnExhausted and returned as an *ExhaustedError inside the
// *net.OpError (and as ee), a source that is not local as a sourceError.
// Other errors come back unchanged.
func (d *Dialer) classify(err error) (ee *ExhaustedError, _ error) {
	op, ok := err.(*net.OpError)
	if !ok {
		return nil, err
	}
	if ee = exhausted(op, d.PortRange); ee != nil {
		if d.OnExhausted != nil {
			d.OnExhausted(ee)
		}
		return ee, withErr(op, ee)
	}
	if se := notLocal(op); se != nil {
		return nil, withErr(op, se)
	}
	return nil, err
}

// notLocal returns the sourceError for a bind that failed with
// EADDRNOTAVAIL, or nil.
func notLocal(op *net.OpError) *sourceError {
	sc, ok := op.Err.(*os.SyscallError)
	if ok && sc.Syscall == "bind" && errors.Is(sc.Err, syscall.EADDRNOTAVAIL) {
		return &sourceError{src: addrPort(op.Source).Addr(), err: sc}
	}
	return nil
}

// unsupportedError reports a feature this system lacks; it matches
// errors.ErrUnsupported and wraps the system's answer, if any.
type unsupportedError struct {
	what string
	err  error
}

func (e *unsupportedError) Error() string {
	if e.err == nil {
		return "safedial: " + e.what
	}
	return fmt.Sprintf("safedial: %s (%v)", e.what, e.err)
}

func (e *unsupportedError) Unwrap() []error {
	if e.err == nil {
		return []error{errors.ErrUnsupported}
	}
	return []error{errors.ErrUnsupported, e.err}
}
