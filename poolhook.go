package safedial

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// This file holds what a pool runs inside net.Dialer's Control hook: the
// attempt loop that binds a source, fails over to the next on exhaustion,
// and leaves the socket that got a port in net.Dialer's place.
//
// It relies on three things net does that its API does not promise; the
// conformance and pool tests fail if a Go release changes them:
//   - on Linux, with LocalAddr nil, net.Dialer does not bind: the hook may;
//   - a socket put in the place of net's descriptor (dup3 onto its number)
//     during the hook is the one net keeps: net registers the descriptor
//     with its poller only after the hook, in its connect;
//   - the hook may start the connect (non-blocking): net's own connect then
//     gets EALREADY or EISCONN, which it treats as a connect in progress or
//     done, and waits with its deadlines as for its own.
// Every use of the descriptor happens inside a RawConn.Control callback (see
// onFD), the only place syscall.RawConn says it is valid.

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
	shareRange PortRange // the ports shared UDP dials choose from (zero: the namespace range, read at each dial)

	mu     sync.Mutex
	done   bool
	events []*ExhaustedError
	recs   []attemptRec // the kernel attempts made, in order
	recBuf [2]attemptRec
}

// attemptRec is one kernel attempt: from src toward dst; ok when it got a
// port (the connect may still fail in net.Dialer's wait).
type attemptRec struct {
	src *source
	dst netip.AddrPort
	ok  bool
}

func (pd *poolDial) event(ee *ExhaustedError) {
	pd.mu.Lock()
	if !pd.done {
		pd.events = append(pd.events, ee)
	}
	pd.mu.Unlock()
}

func (pd *poolDial) record(s *source, dst netip.AddrPort, ok bool) {
	pd.mu.Lock()
	if !pd.done {
		pd.recs = append(pd.recs, attemptRec{s, dst, ok})
	}
	pd.mu.Unlock()
}

// smallPool is the pool size whose attempt plan lives on the stack.
const smallPool = 16

// control binds a source of the attempt's family to the socket net.Dialer
// made, after safedial's options and the user's hook, and starts the connect
// itself (non-blocking), so that a source with no port left is found here.
// The attempt then fails over to the next source on a fresh socket, put in
// the place of net.Dialer's first, so that options and hooks act on the
// descriptor the connection keeps. net.Dialer's own connect then waits for
// the connection, with its deadlines, as it would have.
//
// The plan: the sources not known full toward the destination, in turn;
// then those known full (or not local), marked longest ago first. When every
// source is known full, the kernel is asked about the first of them only,
// and the others are skipped: a failing dial costs one scan of the range,
// as net.Dialer's does, and a port freed on any source is found within one
// pass over the sources. With ShareUDPPorts, a source whose candidates only
// claims in flight hold (bound, not yet connected) is passed over without
// waiting; the dial waits for them only when no source took it.
func (pd *poolDial) control(ctx context.Context, network, address string, c syscall.RawConn) error {
	dst := destination(network, address)
	udp := strings.HasPrefix(network, "udp")
	srcs, cursor, mem, err := pd.sources(network, address, dst)
	if err != nil {
		return err
	}
	n := len(srcs)
	var (
		markBuf [smallPool]uint64
		ordBuf  [smallPool]int
		marks   = markBuf[:0]
		order   = ordBuf[:0]
	)
	if n > smallPool {
		marks, order = make([]uint64, 0, n), make([]int, 0, n)
	}
	marks = marks[:n]
	known := mem.marks(srcs, dst, udp, marks)
	order = plan(n, int((cursor.Add(1)-1)%uint32(n)), marks, known, order)
	if order, err = onLink(order, srcs, dst, address); err != nil {
		return err
	}
	l := attemptLoop{pd: pd, ctx: ctx, network: network, address: address, c: c, dst: dst, udp: udp,
		srcs: srcs, mem: mem, allKnown: marks[order[0]] != 0,
		wait: len(order) == 1 || !pd.share || !udp}
	for {
		if end, err := l.pass(order, marks); end {
			return err
		}
		if len(l.later) == 0 {
			return l.f.err(address)
		}
		if err := l.pauseForClaims(); err != nil {
			return netContextError(err)
		}
		order, l.later = l.later, nil
	}
}

// attemptLoop is the state of one connection attempt's passes over the
// sources of its plan.
type attemptLoop struct {
	pd               *poolDial
	ctx              context.Context
	network, address string
	c                syscall.RawConn
	dst              netip.AddrPort
	udp              bool
	srcs             []*source
	mem              *fullMemory
	allKnown         bool // every source was known full when the plan was made

	f     failover
	bound bool // the socket in net's place is bound: the next source needs a fresh one
	prev  *source
	k     int  // attempts made
	wait  bool // a shared dial may wait for claims in flight
	retry bool // the passes over sources whose claims were in flight
	later []int
	since time.Time     // of the first retry pass
	pause time.Duration // before the next retry pass
}

// pass tries the sources of order in turn (marks are the plan's, kept out
// of l so that they stay on control's stack) and reports whether the
// attempt ends, and with what error; sources whose candidates only claims
// in flight held are left in l.later.
func (l *attemptLoop) pass(order []int, marks []uint64) (bool, error) {
	pd := l.pd
	for _, i := range order {
		s := l.srcs[i]
		if l.allKnown && l.f.last != nil && !l.retry {
			// Every source was known full and the kernel confirmed it
			// for one: the others are not asked.
			pd.d.counters.failovers.Add(1)
			s.skipped.Add(1)
			if marks[i]&notLocalMark == 0 {
				l.f.tried = append(l.f.tried, s.addr)
			}
			continue
		}
		if l.k++; l.k > 1 {
			if err := ctxDone(l.ctx); err != nil {
				pd.record(l.prev, l.dst, false)
				return true, netContextError(err)
			}
			if !l.retry {
				pd.d.counters.failovers.Add(1)
			}
		}
		if l.bound {
			if err := onFD(l.c, freshSocket); err != nil {
				return true, err
			}
		}
		l.bound, l.prev = true, s
		err := pd.attempt(l.ctx, l.network, l.address, l.c, s, l.dst, l.wait, !l.retry)
		if err == errClaimsInFlight {
			// Neither full nor free: no mark, no exhaustion; counted
			// once a dial.
			if !l.retry {
				pd.record(s, l.dst, false)
			}
			l.later = append(l.later, i)
			continue
		}
		if l.retry && l.k > 1 {
			// s was counted in the first pass, which found its claims in
			// flight: one attempt a source a dial, whatever ends it.
			pd.d.counters.failovers.Add(1)
		}
		if end, err := pd.settle(&l.f, l.mem, fullKey{src: s, dst: l.dst, udp: l.udp}, marks[i] != 0, err); end {
			return true, err
		}
	}
	return false, nil
}

// pauseForClaims pauses, under the dial's context, before another pass over
// the sources whose candidates only claims in flight held: no source could
// take the dial now, and the first whose claims resolve takes it (waiting on
// one stuck source let the deadline pass while another was free). After
// claimsPatience the claims seen count as held; the last pass waits source
// by source.
func (l *attemptLoop) pauseForClaims() error {
	if !l.retry {
		l.retry, l.since = true, time.Now()
	}
	if time.Since(l.since) >= claimsPatience {
		l.wait = true
	}
	l.pause = claimPause(l.pause)
	return sleepCtx(l.ctx, l.pause)
}

// onLink leaves out of order the link-local sources of other links than
// a link-local destination's (fe80::1%b0 toward fe80::2%a0: the kernel
// refuses the connect with EINVAL, as it refuses net.Dialer{LocalAddr:
// fe80::1%b0}'s). With none left, the error says so. A link-local
// destination without a zone, or whose zone names no interface, is dialed
// on the link of the socket's bound device: the kernel refuses it from a
// source that is not link-local (EINVAL) and dials it on each source's own
// link, so it is kept only when the pool's link-local sources are on one
// link; on several (or none), the error asks for the zone.
func onLink(order []int, srcs []*source, dst netip.AddrPort, address string) ([]int, error) {
	a := dst.Addr()
	if !a.Is6() || !a.IsLinkLocalUnicast() {
		return order, nil
	}
	link, err := zoneIndex(a.Zone())
	global := true // sources that are not link-local serve: the zone names the link
	if link == 0 || err != nil {
		link, global = 0, false
		links := 0 // changes of link in order: 1 when every link-local source is on one
		for _, i := range order {
			if z := srcs[i].zone; z != 0 && z != link {
				link, links = z, links+1
			}
		}
		if links != 1 {
			why := "has no zone"
			if a.Zone() != "" {
				why = fmt.Sprintf("has zone %q, which names no interface", a.Zone())
			}
			return nil, errConfig("%s is a link-local address that %s, and its IPv6 sources (%s) are not link-local addresses of one link: name the link in the address, as in [%s%%eth0]:%d", address, why, joinAddrs(poolAddrs(srcs)), a.WithZone(""), dst.Port())
		}
	}
	kept := order[:0]
	for _, i := range order {
		if z := srcs[i].zone; z == link || (z == 0 && global) {
			kept = append(kept, i)
		}
	}
	if len(kept) == 0 {
		return nil, errConfig("no source on the link of %s: its IPv6 sources (%s) are link-local addresses of other links; add a source of link %s", address, joinAddrs(poolAddrs(srcs)), a.Zone())
	}
	return kept, nil
}

func poolAddrs(srcs []*source) []netip.Addr {
	addrs := make([]netip.Addr, len(srcs))
	for i, s := range srcs {
		addrs[i] = s.addr
	}
	return addrs
}

// sources returns the sources of the attempt's family toward dst, the
// cursor that spreads dials over them and the pool's memory of full ones
// (nil without a pool: the source is the one the routing picks).
func (pd *poolDial) sources(network, address string, dst netip.AddrPort) ([]*source, *atomic.Uint32, *fullMemory, error) {
	var (
		srcs   []*source
		cursor *atomic.Uint32
		mem    *fullMemory
	)
	if pd.p != nil {
		srcs, cursor, mem = pd.p.v4, &pd.p.next4, &pd.p.full
		if strings.HasSuffix(network, "6") {
			srcs, cursor = pd.p.v6, &pd.p.next6
		}
	} else {
		src, err := routeSource(dst.Addr())
		if err != nil {
			return nil, nil, nil, err
		}
		// routeSource checked src's zone.
		zone, _ := zoneIndex(src.Zone())
		srcs, cursor = []*source{{addr: src, zone: zone}}, new(atomic.Uint32) // no memory
	}
	if len(srcs) == 0 {
		if pd.p == pd.d.shared.Load() { // a pool of one, of Base.LocalAddr (ShareUDPPorts)
			return nil, nil, nil, errConfig("no source address of the destination's family for %s: Base.LocalAddr is %s", address, joinAddrs(pd.p.addrs))
		}
		return nil, nil, nil, pd.p.noFamily(address, strings.HasSuffix(network, "6")) // pd.p is not nil: a routed source is always of the family
	}
	return srcs, cursor, mem, nil
}

// failover is what the attempts of one dial found, for its error when no
// source got a port.
type failover struct {
	tried    []netip.Addr
	last     *ExhaustedError // the last exhaustion the kernel reported
	notLocal *sourceError    // the first source found not local
}

// settle records the outcome err of the attempt from key.src (marked: the
// plan found it known full) and reports whether the dial ends with it, and
// with what error.
func (pd *poolDial) settle(f *failover, mem *fullMemory, key fullKey, marked bool, err error) (bool, error) {
	s := key.src
	switch e := err.(type) {
	case nil:
		pd.record(s, key.dst, true)
		mem.clear(key, marked) // also a mark made since the plan; one atomic load when empty
		return true, nil
	case *ExhaustedError:
		pd.record(s, key.dst, false)
		s.exhausted.Add(1)
		mem.mark(key, false)
		pd.event(e)
		f.tried = append(f.tried, s.addr)
		f.last = e
	case *sourceError:
		s.notLocal.Add(1)
		mem.mark(key, true)
		if f.notLocal == nil {
			f.notLocal = e
		}
	default:
		pd.record(s, key.dst, false) // the error names s, as net.Dialer{LocalAddr: s}'s would
		return true, err
	}
	return false, nil
}

// err is the dial's error when every source was tried or skipped: the last
// exhaustion, naming every source tried, else the first source not local.
func (f *failover) err(address string) error {
	if f.last != nil {
		final := *f.last
		final.Tried = f.tried
		return &final
	}
	if f.notLocal != nil {
		return f.notLocal
	}
	return errConfig("no source of the pool could be tried for %s", address) // not reached: every plan has an attempt
}

// freshSocket puts a fresh socket like s (unbound) in the place of s, which
// it closes.
func freshSocket(s int) error {
	n, err := socketLike(s)
	if err != nil {
		return err
	}
	return replaceFD(n, s)
}

// onFD runs f on c's descriptor, inside c.Control.
func onFD(c syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// attempt sets up net.Dialer's socket (its first, or a fresh one in its
// place) and binds and connects it from s; with ShareUDPPorts, a UDP socket
// chooses a port no other socket uses toward dst. On success the socket that
// connected is in net.Dialer's place. Without wait, a shared dial whose
// candidates only claims in flight hold returns errClaimsInFlight. Without
// count, the caller counts the attempt in s's Stats.
func (pd *poolDial) attempt(ctx context.Context, network, address string, c syscall.RawConn, s *source, dst netip.AddrPort, wait, count bool) error {
	if err := pd.prepare(ctx, network, address, c); err != nil {
		return err
	}
	if count {
		s.dials.Add(1)
	}
	if se := goneUnderNonlocalBind(s); se != nil {
		return se // bind would succeed, and prove nothing
	}
	var (
		call string
		err  error
		held *Headroom // what held the ports of a shared dial's exhaustion
	)
	if pd.share && strings.HasPrefix(network, "udp") {
		call, held, err = pd.shareAttempt(ctx, network, address, c, s, dst, wait)
		if call == "" && err != nil {
			return err
		}
	} else if cerr := onFD(c, func(fd int) error {
		call, err = bindConnect(fd, s, dst)
		return nil
	}); cerr != nil {
		return cerr
	}
	if err != nil {
		if ee := pd.exhausted(network, s, dst, call, err); ee != nil {
			ee.Held = held
			return ee
		}
		if se := unreachableFrom(s, call, err); se != nil {
			return se
		}
		op := attemptError(network, s, dst, call, err)
		if se := notLocal(op); se != nil {
			return se
		}
		return op.Err
	}
	if !s.pinned.Load() {
		var got netip.Addr
		onFD(c, func(fd int) error { got = boundAddr(fd); return nil })
		if got != s.addr.WithZone("") {
			return errConfig("source %v does not pin the connection: the kernel chose %v as its source (%v is not a unicast address of this host: a broadcast address?); use a unicast address of this host", s.addr, got, s.addr)
		}
		s.pinned.Store(true)
	}
	return nil
}

// prepare sets safedial's options and runs the user's hook, through
// net.Dialer's own RawConn.
func (pd *poolDial) prepare(ctx context.Context, network, address string, c syscall.RawConn) error {
	if err := pd.o.apply(network, c); err != nil {
		return err
	}
	if pd.user != nil {
		return pd.user(ctx, network, address, c)
	}
	return nil
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

// sleepCtx pauses for d, or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// claimPause is the pause after d before asking again about ports that
// claims in flight hold: 50 µs, doubling, at most 5 ms.
func claimPause(d time.Duration) time.Duration {
	return min(max(2*d, 50*time.Microsecond), 5*time.Millisecond)
}

// ctxDone returns ctx.Err(), or context.DeadlineExceeded once ctx's deadline
// has passed by the clock: under load the runtime's timer fires late, and a
// dial must not start another kernel attempt after its deadline.
func ctxDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}
