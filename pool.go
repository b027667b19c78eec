package safedial

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

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
	addr   netip.Addr // as configured (unmapped), zone included
	zone   uint32     // interface index of a link-local IPv6 address
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
		p.srcs[i].addr, p.srcs[i].zone = addr, zone
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

// family returns the sources for a hook's network (tcp4, udp6, ...) and the
// cursor to start from.
func (p *pool) family(network string) ([]*source, *atomic.Uint32) {
	if strings.HasSuffix(network, "6") {
		return p.v6, &p.next6
	}
	return p.v4, &p.next4
}

// byAddr returns the source a connection's local address belongs to.
func (p *pool) byAddr(a netip.Addr) *source {
	for i := range p.srcs {
		if s := &p.srcs[i]; s.addr.WithZone("") == a.WithZone("") {
			return s
		}
	}
	return nil
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
// Like any change of d's fields, it must not run during a dial.
func (d *Dialer) SetSources(srcs []netip.Addr) error {
	p := newPool(srcs)
	if p.err != nil {
		return p.err
	}
	d.Sources = slices.Clone(srcs) // not the pool's own copy, which detects changes
	if len(srcs) == 0 {
		p = nil
	}
	d.pool.Store(p)
	return nil
}

// dialPool dials address with the pool of Sources: net.Dialer dials, and the
// pool's hook binds a source in each attempt.
func (d *Dialer) dialPool(ctx context.Context, network, address string) outcome {
	fail := func(err error) outcome {
		return outcome{err: &net.OpError{Op: "dial", Net: network, Err: err}}
	}
	switch {
	case strings.HasPrefix(network, "unix"), strings.HasPrefix(network, "ip"):
		// Deliberately not net.Dialer's behaviour: a dial that cannot be
		// pinned must not pass for a pinned one.
		return fail(errConfig("Sources apply to the tcp and udp networks, not %q", network))
	case d.Base.LocalAddr != nil:
		return fail(errConfig("Sources and Base.LocalAddr are both set: use one of them"))
	}
	p := d.sourcePool()
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

func (d *Dialer) newPoolDial(p *pool) *poolDial {
	pd := &poolDial{d: d, p: p, o: d.options(true), user: d.userHook(), share: d.ShareUDPPorts}
	if pd.share {
		pd.shareRange = d.PortRange
		if pd.shareRange == (PortRange{}) {
			pd.shareRange, _ = namespaceRange()
		}
	}
	return pd
}

// dialShared is a UDP dial with ShareUDPPorts and no Sources: from
// Base.LocalAddr's address, or from the source the kernel's routing picks for
// each destination.
func (d *Dialer) dialShared(ctx context.Context, network, address string) outcome {
	var p *pool // a pool of one: its memory of full destinations lasts across dials
	if la, ok := d.Base.LocalAddr.(*net.UDPAddr); ok && la != nil && !la.AddrPort().Addr().Unmap().IsUnspecified() && len(la.IP) > 0 {
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
		return outcome{err: &net.OpError{Op: "dial", Net: network, Source: d.Base.LocalAddr, Err: errNoShare}}
	}
	return notPool(d.dialHooked(ctx, network, address, d.newPoolDial(p.forOneDial())))
}

// errNoShare is the error of ShareUDPPorts where it cannot be honoured.
var errNoShare = &unsupportedError{what: "ShareUDPPorts needs Linux (sock_diag and SO_REUSEPORT)"}

// dialHooked dials with pd's hook, which binds every attempt.
func (d *Dialer) dialHooked(ctx context.Context, network, address string, pd *poolDial) outcome {
	p := pd.p
	nd := d.Base
	nd.LocalAddr = nil // the hook binds
	nd.ControlContext = pd.control
	c, err := nd.DialContext(ctx, network, address)
	pd.mu.Lock()
	pd.done = true
	out := outcome{c: c, events: pd.events, refused: pd.o.refusedNow(network)}
	pd.mu.Unlock()
	if err != nil {
		out.err = pd.finalError(err, out.refused)
		return out
	}
	if p != nil {
		if s := p.byAddr(addrPort(c.LocalAddr()).Addr()); s != nil {
			s.succeeded.Add(1)
		}
	}
	d.inRange(&out, network)
	return out
}

// poolDial is one dial through the pool; its control method is the
// net.Dialer hook, called once per connection attempt, possibly from
// net.Dialer's Happy Eyeballs goroutines and possibly (for a racer that
// lost) after the dial has returned.
type poolDial struct {
	d    *Dialer
	p    *pool // nil: the source is the one the routing picks, per attempt
	o    options
	user controlFunc

	share      bool      // ShareUDPPorts
	shareRange PortRange // the ports shared UDP dials choose from

	mu     sync.Mutex
	done   bool
	events []*ExhaustedError
}

func (pd *poolDial) event(ee *ExhaustedError) {
	pd.mu.Lock()
	if !pd.done {
		pd.events = append(pd.events, ee)
	}
	pd.mu.Unlock()
}

// control binds a source of the attempt's family to the socket net.Dialer
// made, after safedial's options and the user's hook, and starts the connect
// itself (non-blocking), so that a source with no port left is found here
// and the attempt fails over to the next source on a fresh socket, which then
// takes the place of net.Dialer's. net.Dialer's own connect then waits for
// the connection, with its deadlines, as it would have.
func (pd *poolDial) control(ctx context.Context, network, address string, c syscall.RawConn) error {
	dst := destination(network, address)
	var (
		srcs   []*source
		cursor *atomic.Uint32
	)
	if pd.p != nil {
		srcs, cursor = pd.p.family(network)
	} else {
		src, err := routeSource(dst.Addr())
		if err != nil {
			return err
		}
		srcs, cursor = []*source{{addr: src}}, new(atomic.Uint32)
	}
	if len(srcs) == 0 {
		fam := "IPv4"
		if strings.HasSuffix(network, "6") {
			fam = "IPv6"
		}
		return errConfig("no source address of the destination's family for %s (%s): Sources holds %s; add an %s source",
			address, fam, joinAddrs(pd.p.addrs), fam) // pd.p is not nil: a routed source is always of the family
	}
	var orig int
	if err := c.Control(func(fd uintptr) { orig = int(fd) }); err != nil {
		return err
	}
	var (
		start = cursor.Add(1) - 1
		tried []netip.Addr
		last  *ExhaustedError
		fd    = orig
	)
	for i := range uint32(len(srcs)) {
		s := srcs[(start+i)%uint32(len(srcs))]
		if i > 0 {
			pd.d.counters.failovers.Add(1)
		}
		if e, ok := pd.p.lookup(s, dst); ok {
			// The error the kernel gave when it found s full.
			s.skipped.Add(1)
			tried = append(tried, s.addr)
			last = pd.exhausted(network, s, dst, e.syscall, e.errno)
			continue
		}
		if fd < 0 {
			var err error
			if fd, err = socketLike(orig); err != nil {
				return err
			}
		}
		var err error
		fd, err = pd.attempt(ctx, network, address, c, fd, orig, s, dst)
		if err == nil {
			return nil
		}
		if fd != orig {
			closeFD(fd)
		}
		fd = -1 // the socket is bound: the next source needs a fresh one
		var ee *ExhaustedError
		if !errors.As(err, &ee) {
			return err
		}
		s.exhausted.Add(1)
		pd.p.mark(s, dst, ee.Op, ee.Err)
		pd.event(ee)
		tried = append(tried, s.addr)
		last = ee
	}
	final := *last
	final.Tried = tried
	return &final
}

// attempt sets up socket fd (net.Dialer's own, orig, or a fresh one) and
// binds and connects it from s; with ShareUDPPorts, a UDP socket chooses a
// port no other socket uses toward dst. On success the socket that
// connected has taken orig's place. It returns the socket it ended with.
func (pd *poolDial) attempt(ctx context.Context, network, address string, c syscall.RawConn, fd, orig int, s *source, dst netip.AddrPort) (int, error) {
	if err := pd.prepare(ctx, network, address, c, fd, orig); err != nil {
		return fd, err
	}
	s.dials.Add(1)
	var (
		call string
		err  error
		held *Headroom // what held the ports of a shared dial's exhaustion
	)
	if pd.share && strings.HasPrefix(network, "udp") {
		fresh := func() (int, error) {
			n, err := socketLike(orig)
			if err == nil {
				if err = pd.prepare(ctx, network, address, c, n, orig); err != nil {
					closeFD(n)
				}
			}
			return n, err
		}
		fd, err = shareConnect(ctx, fd, orig, fresh, s.addr.WithZone(""), s.zone, dst, pd.shareRange)
		held = heldBy(err)
		var se *os.SyscallError
		if errors.As(err, &se) {
			call, err = se.Syscall, se.Err
		} else if err != nil {
			return fd, err
		}
	} else {
		call, err = bindConnect(fd, s, dst)
	}
	if err != nil {
		if ee := pd.exhausted(network, s, dst, call, err); ee != nil {
			ee.Held = held
			return fd, ee
		}
		op := attemptError(network, s, dst, call, err)
		if se := notLocal(op); se != nil {
			return fd, se
		}
		return fd, op.Err
	}
	if !s.pinned.Load() {
		if got := boundAddr(fd); got != s.addr.WithZone("") {
			return fd, errConfig("source %v does not pin the connection: the kernel chose %v as its source (%v is not a unicast address of this host: a broadcast address?); use a unicast address of this host", s.addr, got, s.addr)
		}
		s.pinned.Store(true)
	}
	if fd != orig {
		return orig, replaceFD(fd, orig)
	}
	return fd, nil
}

// prepare sets safedial's options and runs the user's hook on fd.
func (pd *poolDial) prepare(ctx context.Context, network, address string, c syscall.RawConn, fd, orig int) error {
	raw := c
	if fd != orig {
		raw = fdConn(fd)
	}
	if err := pd.o.apply(network, raw); err != nil {
		return err
	}
	if pd.user != nil {
		return pd.user(ctx, network, address, raw)
	}
	return nil
}

// lookup and mark use the pool's memory of full sources; a dial without a
// pool has none.
func (p *pool) lookup(s *source, dst netip.AddrPort) (fullEntry, bool) {
	if p == nil {
		return fullEntry{}, false
	}
	return p.full.lookup(s, dst)
}

func (p *pool) mark(s *source, dst netip.AddrPort, call string, err error) {
	if p != nil {
		p.full.mark(s, dst, call, err)
	}
}

// exhausted returns the *ExhaustedError for the failed system call of an
// attempt from s, or nil when it is not exhaustion.
func (pd *poolDial) exhausted(network string, s *source, dst netip.AddrPort, call string, err error) *ExhaustedError {
	ee := exhausted(attemptError(network, s, dst, call, err), pd.d.PortRange)
	if ee != nil {
		ee.Shared = pd.share && strings.HasPrefix(network, "udp")
	}
	return ee
}

// attemptError is the error of one attempt from s, in net.Dialer's shape,
// for the classification rules.
func attemptError(network string, s *source, dst netip.AddrPort, call string, err error) *net.OpError {
	return &net.OpError{Op: "dial", Net: network, Source: opAddr(network, netip.AddrPortFrom(s.addr, 0)), Addr: opAddr(network, dst),
		Err: os.NewSyscallError(call, err)}
}

// finalError completes the error net.Dialer returned for a pool dial: the
// source goes into the *net.OpError (net.Dialer saw no LocalAddr), and an
// exhaustion says why when an option was refused.
func (pd *poolDial) finalError(err error, refused uint32) error {
	op, ok := err.(*net.OpError)
	if !ok {
		return err
	}
	switch e := op.Err.(type) {
	case *ExhaustedError:
		e.Net = op.Net
		e.noteRefused(refused)
		op = withErr(op, e)
		op.Source = opAddr(op.Net, e.Source)
	case *sourceError:
		op = withErr(op, e)
		op.Source = opAddr(op.Net, netip.AddrPortFrom(e.src, 0))
	}
	return op
}

// destination parses the address net.Dialer passes its hook; an empty host
// (a dial to ":port") is the unspecified address of the attempt's family,
// which the kernel connects to this host.
func destination(network, address string) netip.AddrPort {
	if ap, err := netip.ParseAddrPort(address); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	_, port, _ := net.SplitHostPort(address)
	n, _ := strconv.ParseUint(port, 10, 16)
	if strings.HasSuffix(network, "6") {
		return netip.AddrPortFrom(netip.IPv6Unspecified(), uint16(n))
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(n))
}

// fdConn is a syscall.RawConn for a socket the pool made for failover.
type fdConn int

func (c fdConn) Control(f func(fd uintptr)) error { f(uintptr(c)); return nil }
func (fdConn) Read(func(fd uintptr) bool) error   { return errors.ErrUnsupported }
func (fdConn) Write(func(fd uintptr) bool) error  { return errors.ErrUnsupported }

// fullTTL is how long a source found full toward a destination is skipped.
const fullTTL = 500 * time.Millisecond

// fullSlots bounds the memory of a pool, however many destinations it dials.
const fullSlots = 64

// fullMemory remembers (source, destination) pairs found full. The fast path,
// with nothing remembered or everything expired, is one atomic load.
type fullMemory struct {
	until atomic.Int64 // the latest expiry of any entry; 0 when none
	mu    sync.Mutex
	slots *[fullSlots]fullEntry // made on the first mark
}

type fullEntry struct {
	src     *source
	dst     netip.AddrPort
	until   int64
	syscall string
	errno   error
}

func (m *fullMemory) lookup(s *source, dst netip.AddrPort) (fullEntry, bool) {
	u := m.until.Load()
	if u == 0 {
		return fullEntry{}, false
	}
	now := nanotime()
	if now >= u {
		m.until.CompareAndSwap(u, 0)
		return fullEntry{}, false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.slots == nil {
		return fullEntry{}, false
	}
	for _, e := range m.slots {
		if e.src == s && e.dst == dst && e.until > now {
			return e, true
		}
	}
	return fullEntry{}, false
}

// mark remembers that s is full toward dst; err is the *os.SyscallError.
func (m *fullMemory) mark(s *source, dst netip.AddrPort, call string, err error) {
	var errno error = syscall.EADDRNOTAVAIL
	var se *os.SyscallError
	if errors.As(err, &se) {
		errno = se.Err
	}
	until := nanotime() + int64(fullTTL)
	m.mu.Lock()
	if m.slots == nil {
		m.slots = new([fullSlots]fullEntry)
	}
	victim := 0
	for i, e := range m.slots {
		if e.src == s && e.dst == dst {
			victim = i
			break
		}
		if e.until < m.slots[victim].until {
			victim = i
		}
	}
	m.slots[victim] = fullEntry{src: s, dst: dst, until: until, syscall: call, errno: errno}
	m.mu.Unlock()
	for {
		u := m.until.Load()
		if u >= until || m.until.CompareAndSwap(u, until) {
			return
		}
	}
}

// dialPoolBefore is the pool where the hook cannot bind (Windows, whose
// ConnectEx path binds after the hook) or has not been verified to (the
// BSDs): the source is chosen before the dial, by the family the network or
// an IP literal names (IPv4 for a name, when the pool has IPv4 sources), and
// an exhausted source is followed by a new dial from the next one.
func (d *Dialer) dialPoolBefore(ctx context.Context, network, address string, p *pool) outcome {
	fam := network
	if host, _, err := net.SplitHostPort(address); err == nil {
		if a, err := netip.ParseAddr(host); err == nil && a.Unmap().Is6() {
			fam += "6"
		}
	}
	if !strings.HasSuffix(fam, "6") && len(p.v4) == 0 {
		fam += "6"
	}
	srcs, cursor := p.family(fam)
	if len(srcs) == 0 {
		return outcome{err: &net.OpError{Op: "dial", Net: network, Err: errConfig("no source address of the destination's family for %s: Sources holds %s", address, joinAddrs(p.addrs))}}
	}
	start := cursor.Add(1) - 1
	var (
		out   outcome
		tried []netip.Addr
	)
	for i := range uint32(len(srcs)) {
		s := srcs[(start+i)%uint32(len(srcs))]
		if i > 0 {
			d.counters.failovers.Add(1)
		}
		nd := d.Base
		nd.ControlContext = d.control(true)
		nd.LocalAddr = opAddr(network, netip.AddrPortFrom(s.addr, 0))
		s.dials.Add(1)
		c, err := nd.DialContext(ctx, network, address)
		r := d.result(c, err, d.options(true), network)
		out.refused |= r.refused
		out.events = append(out.events, r.events...)
		out.c, out.err = r.c, r.err
		var ee *ExhaustedError
		if r.err == nil {
			s.succeeded.Add(1)
			return out
		} else if !errors.As(r.err, &ee) {
			return out
		}
		s.exhausted.Add(1)
		tried = append(tried, s.addr)
		if len(tried) > 1 {
			ee.Tried = tried
		}
	}
	return out
}
