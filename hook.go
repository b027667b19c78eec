package safedial

import (
	"context"
	"errors"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// This file holds what runs inside net.Dialer's Control hook: the options a
// dial sets, best-effort for the optional ones and strict for PortRange, and
// the hook that composes them with the user's. The pool's hook, which also
// binds a source, is in poolhook.go.

// options is the set of socket options one dial sets.
type options struct {
	reuseAddr  bool   // SO_REUSEADDR, TCP only (best-effort)
	bindNoPort bool   // IP_BIND_ADDRESS_NO_PORT, or SO_REUSE_UNICASTPORT on Windows (best-effort)
	portRange  uint32 // IP_LOCAL_PORT_RANGE: Hi<<16 | Lo; 0 for none (strict)
}

// options returns what a dial sets; bind tells whether it binds a source
// address, without which SO_REUSEADDR and IP_BIND_ADDRESS_NO_PORT do nothing
// and are skipped (on Windows, Go binds every socket).
func (d *Dialer) options(bind bool) options {
	var o options
	if bind || alwaysBinds {
		o.reuseAddr = reuseAddrSupported && !d.DisableReuseAddr
		o.bindNoPort = bindNoPortSupported && !d.DisableBindNoPort
	}
	o.portRange = uint32(d.PortRange.Hi)<<16 | uint32(d.PortRange.Lo)
	return o
}

// apply sets o on c, for tcp and udp networks only. Only PortRange can fail.
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

// userHook returns the user's hook as a ControlContext, with net.Dialer's
// rule that ControlContext wins over Control; nil when there is none.
func (d *Dialer) userHook() controlFunc {
	if d.Base.ControlContext != nil || d.Base.Control == nil {
		return d.Base.ControlContext
	}
	userCtl := d.Base.Control
	return func(_ context.Context, network, address string, c syscall.RawConn) error {
		return userCtl(network, address, c)
	}
}

// control returns the ControlContext for one dial: safedial's options, then
// the user's hook.
func (d *Dialer) control(bind bool) controlFunc {
	user := d.userHook()
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

// An optional is a socket option that only improves things, set
// best-effort: when the system refuses it, the dial goes on as net.Dialer's
// would, and the refusal is remembered so that later dials do not pay a
// failing system call. A refusal meaning the kernel lacks the option
// (ENOPROTOOPT, EOPNOTSUPP, EINVAL, anything but a permission error) is
// remembered for the life of the process; a permission error (EPERM,
// EACCES: a seccomp profile or security module, whose policy can change) is
// remembered for refusalRetry, after which the option is tried again.
type optional struct {
	bit   uint32
	name  string
	cost  string                       // what the dial loses without it
	until atomic.Int64                 // 0: not refused; forever; else skip until this monotonic time
	first atomic.Pointer[RefusedError] // the first refusal, for the messages
}

const forever = math.MaxInt64

// refusalRetry is how long a permission refusal is remembered.
const refusalRetry = time.Minute

var (
	reuseAddrOpt = &optional{bit: 1, name: "SO_REUSEADDR",
		cost: "a port chosen at bind time cannot be shared with connections in TIME_WAIT"}
	bindNoPortOpt = &optional{bit: 2, name: bindNoPortName,
		cost: "a bound source is capped at one connection per port"}
	optionals = [...]*optional{reuseAddrOpt, bindNoPortOpt}
)

// refused reports whether the option is currently known to be refused.
func (o *optional) refused() bool {
	u := o.until.Load()
	return u != 0 && (u == forever || nanotime() < u)
}

// refuse records that setsockopt refused the option with err.
func (o *optional) refuse(err error) {
	until := int64(forever)
	if errors.Is(err, os.ErrPermission) {
		until = nanotime() + int64(refusalRetry)
	}
	o.first.CompareAndSwap(nil, &RefusedError{Option: o.name, Consequence: o.cost, Err: os.NewSyscallError("setsockopt", err)})
	o.until.Store(until)
	refusedAny.Store(1)
}

// refusedAny is set once any optional option has been refused: until then a
// successful dial has nothing to look up.
var refusedAny atomic.Uint32

// refusedNow returns the optional options of o that the system refuses now,
// for a dial on network: those this dial went without.
func (o options) refusedNow(network string) (bits uint32) {
	if o.reuseAddr && strings.HasPrefix(network, "tcp") && reuseAddrOpt.refused() {
		bits |= reuseAddrOpt.bit
	}
	if o.bindNoPort && bindNoPortOpt.refused() {
		bits |= bindNoPortOpt.bit
	}
	return bits
}

// reportRefused calls OnRefused once per option for d.
func (d *Dialer) reportRefused(bits uint32) {
	if d.OnRefused == nil {
		return
	}
	for _, o := range optionals {
		if bits&o.bit != 0 && d.reported.Or(o.bit)&o.bit == 0 {
			if e := o.first.Load(); e != nil {
				d.OnRefused(e)
			}
		}
	}
}

// epoch anchors nanotime, a monotonic clock; tests may replace nanotime.
var epoch = time.Now()

var nanotime = func() int64 { return int64(time.Since(epoch)) }

// check reports a configuration error for an inverted or half-zero range, an
// error matching errors.ErrUnsupported where ranges are not available, and
// a configuration error for a range that does not intersect the namespace's
// (read at most once a second).
func (r PortRange) check() error {
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
	if ns, ok := namespaceRange(); ok && (r.Hi < ns.Lo || r.Lo > ns.Hi) {
		return errConfig("PortRange %v does not intersect this network namespace's net.ipv4.ip_local_port_range %v: the kernel would ignore it and pick any port of %v; choose a slice of %v", r, ns, ns, ns)
	}
	return nil
}

// inRange is the last guard against a kernel that ignored PortRange: a
// connection out.c whose local port is outside it is closed and becomes
// out's error.
func (d *Dialer) inRange(out *outcome, network string) {
	r, c := d.PortRange, out.c
	if r == (PortRange{}) || c == nil {
		return
	}
	p := addrPort(c.LocalAddr()).Port()
	if p >= r.Lo && p <= r.Hi {
		return
	}
	c.Close()
	ns, _ := namespaceRange()
	out.c, out.err = nil, &net.OpError{Op: "dial", Net: network, Source: c.LocalAddr(), Addr: c.RemoteAddr(),
		Err: errConfig("connection from local port %d, outside PortRange %v: the kernel ignored the range (namespace range %v); choose a slice of the namespace range", p, r, ns)}
}

// nsRange caches the namespace's ephemeral range for PortRange.check.
var nsRange atomic.Pointer[struct {
	r  PortRange
	at int64
}]

func namespaceRange() (PortRange, bool) {
	now := nanotime()
	if c := nsRange.Load(); c != nil && now-c.at < int64(time.Second) {
		return c.r, true
	}
	r, err := localPortRange()
	if err != nil {
		return PortRange{}, false
	}
	nsRange.Store(&struct {
		r  PortRange
		at int64
	}{r, now})
	return r, true
}

// ControlContext sets d's socket options (SO_REUSEADDR,
// IP_BIND_ADDRESS_NO_PORT and PortRange, as the platform and d's fields
// allow) on the socket c, for code that must keep its own net.Dialer:
//
//	nd := &net.Dialer{LocalAddr: src, ControlContext: sd.ControlContext}
//
// It cannot know whether the dial will bind, so it sets the options always.
// The optional ones are best-effort, as in a Dialer's own dials: a refusal is
// counted in [Stats.Refused] and reported to OnRefused, and the socket is
// used without them. PortRange is strict. It does not run d.Base's hooks; to
// combine it with a hook of your own, call it first from that hook. It leaves
// sockets of networks other than tcp and udp untouched. Errors from it are
// not classified: use [Classify] on the dial's error.
func (d *Dialer) ControlContext(ctx context.Context, network, address string, c syscall.RawConn) error {
	if err := d.PortRange.check(); err != nil {
		return err
	}
	o := d.options(true)
	if err := o.apply(network, c); err != nil {
		return err
	}
	if r := o.refusedNow(network); r != 0 {
		d.counters.refused.Add(1)
		d.reportRefused(r)
	}
	return nil
}
