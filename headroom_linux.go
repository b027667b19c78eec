package safedial

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/safedial/safedial/internal/route"
	"github.com/safedial/safedial/internal/sockdiag"
	"github.com/safedial/safedial/internal/sysctl"
	"golang.org/x/sys/unix"
)

// What the headroom probes ask sock_diag and read from its answers:
// internal/sockdiag has the requests, the bytecode and the dump loop,
// headroom_count.go the counting.

// diagSock is what a probe reads of one inet_diag_msg and its attributes.
type diagSock struct {
	family   byte
	state    byte
	src, dst netip.Addr // IPv4-mapped addresses unmapped
	sport    uint16
	dport    uint16
	expires  time.Duration // left on the socket's timer
	sockopt  bool          // INET_DIAG_SOCKOPT came (full sockets, Linux 5.10+)
	noPort   bool          // its IP_BIND_ADDRESS_NO_PORT
	v6only   bool          // INET_DIAG_SKV6ONLY came and is set
	ifindex  uint32        // idiag_if: the interface it is bound to (SO_BINDTODEVICE, a link-local source's zone)
	uid      uint32        // idiag_uid
	mark     uint32        // INET_DIAG_MARK (sent to CAP_NET_ADMIN only)
	hasMark  bool
}

// routeCtx is what of m, a TCP socket, changes the route, and so the
// source, the kernel picks for it. Without its mark (unprivileged callers
// are not told), the lookup is as for an unmarked socket.
func (m diagSock) routeCtx() route.Ctx {
	return route.Ctx{Mark: m.mark, OIF: m.ifindex, UID: m.uid, HasUID: true, Proto: unix.IPPROTO_TCP, DPort: m.dport}
}

// parseSock reads one inet_diag_msg as a probe needs it.
func parseSock(msg []byte) diagSock {
	s := sockdiag.Parse(msg)
	return diagSock{
		family: s.Family, state: s.State,
		src: s.Src, dst: s.Dst, sport: s.SPort, dport: s.DPort,
		expires: s.Expires, sockopt: s.HasSockopt, noPort: s.NoPort(), v6only: s.V6Only,
		ifindex: s.IfIndex, uid: s.UID, mark: s.Mark, hasMark: s.HasMark,
	}
}

// hostOf reads the reserved ports and returns what holds ports of r for
// every pair, with bound (nil for UDP). Ports of r outside the namespace
// range (a Dialer's PortRange wider than it: the kernel uses the
// intersection) count as reserved: the kernel never hands them out either.
func hostOf(r PortRange, bound *portSet) (hostPorts, error) {
	reserved, err := sysctl.ReservedPorts()
	if err != nil {
		return hostPorts{}, err
	}
	if ns, ok := namespaceRange(); ok && (r.Lo < ns.Lo || r.Hi > ns.Hi) {
		off := *reserved // sysctl.ReservedPorts' set is shared: add to a copy
		for p := int(r.Lo); p <= int(r.Hi); p++ {
			if p < int(ns.Lo) || p > int(ns.Hi) {
				off.Add(uint16(p))
			}
		}
		reserved = &off
	}
	return newHostPorts(r, reserved, bound), nil
}

// newHostPorts counts the ports of r that reserved and bound hold.
func newHostPorts(r PortRange, reserved, bound *portSet) hostPorts {
	h := hostPorts{r: r, reserved: reserved, bound: bound}
	for p := int(r.Lo); p <= int(r.Hi) && r.Lo != 0; p++ {
		switch {
		case reserved.Has(uint16(p)):
			h.nReserved++
		case bound.Has(uint16(p)):
			h.nBound++
		}
	}
	return h
}

// diagTCP reads the ports of r used by the TCP pair src -> dst, and the
// ports a bind() took. One walk of the kernel's tables (both families)
// returns, filtered by the kernel, the pair's sockets in every state and
// every full socket in the range (TIME_WAIT sockets of other pairs left out:
// they say nothing of how their port was taken): listeners and bound
// sockets, whose port bind() took, and connected sockets, whose port bind()
// took when IP_BIND_ADDRESS_NO_PORT is off and their source is not the one
// the routing picks for their destination. Sockets that remain in doubt
// (option off, routed source) cost a second walk, for those bound to an
// explicit port (INET_DIAG_BC_AUTO). perSocket says the dials set r with
// IP_LOCAL_PORT_RANGE (see connectSearch).
func diagTCP(ctx context.Context, src netip.Addr, oif uint32, dst netip.AddrPort, r PortRange, perSocket bool) (pairPorts, hostPorts, error) {
	tw := readTWReuse()
	p := pairPorts{reusable: tw.reuses(src, dst.Addr())}
	isPair := func(m diagSock) bool {
		return m.src == src && m.dst == dst.Addr() && m.dport == dst.Port() && m.state != sockdiag.StateListen && m.state != sockdiag.StateClose &&
			sameLink(m, src, oif)
	}
	b := bindings{bound: new(portSet)}
	states, idle := idleStates(r, b.bound)
	err := fullOrPair(ctx, r, src, dst, states, func(m diagSock) {
		if isPair(m) {
			p.add(m, tw)
		} else {
			b.see(m)
			idle.see(m)
		}
	})
	if err == nil {
		idle.store(r)
		own := new(portSet)
		for _, ps := range [][]uint16{p.live, p.tw, p.old} {
			for _, port := range ps {
				own.Add(port)
			}
		}
		err = b.judge(ctx, own.Has)
	}
	if err == nil {
		err = b.explicit(ctx, r)
	}
	if err != nil {
		return p, hostPorts{}, err
	}
	host, err := hostOf(r, b.bound)
	if ns, ok := namespaceRange(); ok && ns == r && !perSocket {
		host.connectSearch()
	}
	return p, host, err
}

// connectSearch sets the ports of r that connect()'s search may not reach
// (TCP, the namespace's range). __inet_hash_connect (net/ipv4/
// inet_hashtables.c) takes the range's size rounded down to even
// ("remaining &= ~1") and scans that many ports from low+offset (offset
// even, below remaining) by steps of two, wrapping by remaining, then the
// other parity: with an odd-sized range it tries all ports but one, the
// last when offset is 0 and the first otherwise. A 3-port range always has
// offset 0, so its last port is never used; with 5 or more the skipped port
// depends on a per-destination secret, so a probe cannot tell which, and
// counts one of them out while either is free. A per-socket range
// (IP_LOCAL_PORT_RANGE, a Dialer's PortRange) is scanned one by one, all of
// it.
func (host *hostPorts) connectSearch() {
	switch n := host.r.size(); {
	case n < 3 || n%2 == 0:
	case n == 3:
		host.unreached = []uint16{host.r.Hi}
	default:
		host.unreached = []uint16{host.r.Lo, host.r.Hi}
	}
}

// bindSearch sets the ports of r that bind(ip:0)'s search may not reach
// (TCP, r within the namespace's range). inet_csk_find_open_port (net/ipv4/
// inet_connection_sock.c) also rounds the size it scans down to even and
// steps by two from a random odd offset, then the other parity; for a
// socket with SO_REUSEADDR (as safedial's dials set it) it scans the range
// in two parts, the first 2*(size/4) ports, then the rest. With an odd-sized
// range one port is never tried by a bind: with 3 ports (no parts) and 5
// (a last part of 3) the last; with 7 or more the last part's first or last
// port, by chance at each bind, and without SO_REUSEADDR the range's first
// or last. Measured: 3 ports, the Dialer's binds took 2; 5 ports, 4.
func (host *hostPorts) bindSearch() {
	switch n := host.r.size(); {
	case n < 3 || n%2 == 0:
	case n == 3:
		host.unreached = []uint16{host.r.Hi}
	default:
		host.unreached = []uint16{host.r.Hi, host.r.Lo + uint16(2*(n/4)), host.r.Lo}
	}
}

// sameLink reports whether m, a socket from src, holds a 4-tuple that a new
// connection from src on interface oif (0: not bound to one) conflicts
// with. A link-local source is one address per link: the kernel keeps the
// 4-tuples of sockets bound to different interfaces apart. For other
// sources every socket counts (a socket bound to an interface would not
// conflict with an unbound one, but counting it errs on the safe side).
func sameLink(m diagSock, src netip.Addr, oif uint32) bool {
	if !src.IsLinkLocalUnicast() || oif == 0 {
		return true
	}
	return m.ifindex == 0 || m.ifindex == oif
}

// noCgroupCond is set once the kernel refused INET_DIAG_BC_CGROUP_COND
// (before Linux 5.9, or without CONFIG_SOCK_CGROUP_DATA).
var noCgroupCond atomic.Bool

// fullOrPair dumps, in one walk, the TCP sockets with a local port in r that
// are full sockets (not TIME_WAIT or SYN_RECV mini sockets, whose cgroup is
// 0) or of the pair src -> dst. Where the kernel lacks the cgroup condition,
// it dumps every socket in r.
func fullOrPair(ctx context.Context, r PortRange, src netip.Addr, dst netip.AddrPort, states uint32, each func(diagSock)) error {
	var b sockdiag.Bytecode
	b.Port(sockdiag.SGE, r.Lo)
	b.Port(sockdiag.SLE, r.Hi)
	if !noCgroupCond.Load() {
		b.Cgroup(0)  // a mini socket: the pair's only
		b.OrAccept() // a full socket: any
		b.Cond(sockdiag.SCond, src, -1)
		b.Cond(sockdiag.DCond, dst.Addr(), int32(dst.Port()))
	}
	err := dump(ctx, [][]byte{sockdiag.TCPRequest(states, b.Bytes())}, func(msg []byte) { each(parseSock(msg)) })
	if errors.Is(err, unix.EINVAL) && !noCgroupCond.Load() {
		noCgroupCond.Store(true)
		return fullOrPair(ctx, r, src, dst, states, each)
	}
	return err
}

// Bound-inactive TCP sockets (bound, neither listening nor connected) are
// in no table but the bind hash, which the kernel walks for them (Linux
// 6.8+) at a cost like that of the socket walk itself: with 20,000 sockets,
// the probe would take half as long again. They are few, and change as
// seldom as the sysctls, so their ports are read at most once a second, per
// range; a probe within the second reuses them.
var idleCache struct {
	mu  sync.Mutex
	at  time.Time
	r   PortRange
	set *portSet
}

// idlePorts collects the ports of bound-inactive sockets during a dump that
// asked for them (fresh is nil when it did not).
type idlePorts struct{ fresh *portSet }

// idleStates returns the states a TCP dump of r asks for: all, and the
// bound-inactive sockets when the cached ports of r are over a second old;
// else it adds the cached ports to bound.
func idleStates(r PortRange, bound *portSet) (uint32, idlePorts) {
	idleCache.mu.Lock()
	defer idleCache.mu.Unlock()
	if idleCache.set == nil || idleCache.r != r || time.Since(idleCache.at) >= time.Second {
		return sockdiag.AllStates | sockdiag.BoundInactive, idlePorts{fresh: new(portSet)}
	}
	for i, w := range idleCache.set {
		bound[i] |= w
	}
	return sockdiag.AllStates, idlePorts{}
}

func (ip idlePorts) see(m diagSock) {
	if ip.fresh != nil && m.state == sockdiag.StateClose {
		ip.fresh.Add(m.sport)
	}
}

// store caches the ports seen, when the dump asked for them.
func (ip idlePorts) store(r PortRange) {
	if ip.fresh == nil {
		return
	}
	idleCache.mu.Lock()
	defer idleCache.mu.Unlock()
	idleCache.at, idleCache.r, idleCache.set = time.Now(), r, ip.fresh
}

// bindings learns which ports of a range a bind() took, from the sockets a
// probe sees.
type bindings struct {
	bound *portSet
	doubt bool       // a socket left in doubt: ask for the explicit ports
	asked []doubtful // connected sockets whose source the routing must judge
}

// doubtful is a connected socket whose port a bind() took when its source
// is not the one the routing picks for it.
type doubtful struct {
	port uint16
	src  netip.Addr
	key  route.Key
}

// see classifies m, a socket not of the pair in question.
func (b *bindings) see(m diagSock) {
	switch {
	case m.state == sockdiag.StateListen, m.state == sockdiag.StateClose:
		b.bound.Add(m.sport) // listen() and bind() take the port at once
	case !m.sockopt, m.noPort:
		// a mini socket, or a port chosen at connect()
	default:
		b.asked = append(b.asked, doubtful{port: m.sport, src: m.src, key: route.Key{Dst: m.dst, Ctx: m.routeCtx()}})
	}
}

// judge asks the routing, once per destination and routing context (the
// socket's mark, bound interface and owner, as sock_diag shows them), which
// source the kernel would pick for each connected socket seen: one that
// left from another was bound to it, and its port is bound for every pair.
// A socket on a port already known bound, or on a port skip reports (the
// pair's own, counted before Bound), costs no lookup.
func (b *bindings) judge(ctx context.Context, skip func(port uint16) bool) error {
	keys := make([]route.Key, 0, len(b.asked))
	asked := b.asked[:0]
	for _, d := range b.asked {
		if !b.bound.Has(d.port) && (skip == nil || !skip(d.port)) {
			asked = append(asked, d)
			keys = append(keys, d.key)
		}
	}
	srcs, err := route.Remembered(ctx, keys)
	if err != nil {
		return err
	}
	for i, d := range asked {
		switch {
		case b.bound.Has(d.port):
		case srcs[i].IsValid() && srcs[i] != d.src:
			b.bound.Add(d.port) // bound to a source connect() would not pick
		default:
			b.doubt = true // the routed source, or no route now
		}
	}
	b.asked = nil
	return nil
}

// explicit adds, when sockets were left in doubt, the ports of r of the
// sockets bound to an explicit port (one more walk).
func (b *bindings) explicit(ctx context.Context, r PortRange) error {
	if !b.doubt {
		return nil
	}
	var bc sockdiag.Bytecode
	bc.Port(sockdiag.SGE, r.Lo)
	bc.Port(sockdiag.SLE, r.Hi)
	bc.Auto()
	bc.OrAccept()
	bc.Reject()
	return dump(ctx, [][]byte{sockdiag.TCPRequest(sockdiag.AllStates&^(1<<sockdiag.StateTimeWait), bc.Bytes())}, func(msg []byte) {
		b.bound.Add(binary.BigEndian.Uint16(msg[4:6]))
	})
}

// add counts m, a socket of the pair.
func (p *pairPorts) add(m diagSock, tw twReuse) {
	switch {
	case m.state != sockdiag.StateTimeWait:
		p.live = append(p.live, m.sport)
	case sockdiag.TimeWaitLen-m.expires > tw.delay:
		p.old = append(p.old, m.sport)
	default:
		p.tw = append(p.tw, m.sport)
	}
}

// diagUDP reads the ports of r held for src by UDP sockets: those on src, on
// its family's wildcard address, and for IPv4 on [::] unless IPv6-only.
func diagUDP(ctx context.Context, src netip.Addr, r PortRange) (pairPorts, hostPorts, error) {
	var p pairPorts
	err := dump(ctx, sockdiag.Requests(true, src.Is4(), src.Is6(), sockdiag.AllStates, onSource(src, r)), func(msg []byte) {
		if m := parseSock(msg); m.src == src || m.src.IsUnspecified() && holdsFor(m, src) {
			p.live = append(p.live, m.sport)
		}
	})
	if err != nil {
		return p, hostPorts{}, err
	}
	host, err := hostOf(r, nil)
	return p, host, err
}

// holdsFor reports whether m, a UDP socket on a wildcard address, holds its
// port for sources of src's family: 0.0.0.0 (or ::ffff:0.0.0.0) for IPv4,
// [::] for IPv6 and, unless IPv6-only, for IPv4 too.
func holdsFor(m diagSock, src netip.Addr) bool {
	if m.src.Is4() {
		return src.Is4()
	}
	return src.Is6() || !m.v6only
}

// diagPairs reads every pair with sockets on ports of r (UDP: every source),
// of IPv4 (v4), IPv6 (v6) or both, and what holds ports for all. TCP takes
// one dump of every socket in the range, and a second of the explicitly
// bound ones when a socket is left in doubt (see bindings.see).
func diagPairs(ctx context.Context, udp, v4, v6 bool, r PortRange) (map[pairKey]*pairPorts, hostPorts, error) {
	if udp {
		return udpPairs(ctx, v4, v6, r)
	}
	var all sockdiag.Bytecode
	all.Port(sockdiag.SGE, r.Lo)
	all.Port(sockdiag.SLE, r.Hi)
	tw := readTWReuse()
	pairs := map[pairKey]*pairPorts{}
	b := bindings{bound: new(portSet)}
	var ls listeners
	zones := map[uint32]string{}
	states, idle := idleStates(r, b.bound)
	err := dump(ctx, [][]byte{sockdiag.TCPRequest(states, all.Bytes())}, func(msg []byte) {
		m := parseSock(msg)
		b.see(m)
		idle.see(m)
		if m.state == sockdiag.StateListen {
			ls.add(m)
		}
		if m.state == sockdiag.StateListen || m.state == sockdiag.StateClose || m.src.Is4() && !v4 || m.src.Is6() && !v6 {
			return
		}
		k := pairKey{src: m.src, dst: netip.AddrPortFrom(m.dst, m.dport)}
		if m.src.IsLinkLocalUnicast() && m.ifindex != 0 {
			k.src = m.src.WithZone(zoneName(zones, m.ifindex)) // one pair per link
		}
		p := pairs[k]
		if p == nil {
			p = &pairPorts{reusable: tw.reuses(m.src, m.dst)}
			pairs[k] = p
		}
		p.add(m, tw)
	})
	if err == nil {
		idle.store(r)
		err = b.judge(ctx, nil)
	}
	if err == nil {
		err = b.explicit(ctx, r)
	}
	if err != nil {
		return nil, hostPorts{}, err
	}
	ls.dropAccepted(pairs)
	host, err := hostOf(r, b.bound)
	host.connectSearch() // r is the namespace's range
	return pairs, host, err
}

// zoneName names interface i as a zone: its name, else its index.
func zoneName(cache map[uint32]string, i uint32) string {
	if z, ok := cache[i]; ok {
		return z
	}
	z := strconv.FormatUint(uint64(i), 10)
	if ifi, err := net.InterfaceByIndex(int(i)); err == nil {
		z = ifi.Name
	}
	cache[i] = z
	return z
}

// listeners are the TCP listeners a dump saw: a socket on the local
// address and port of one (or on a port a wildcard listener covers for its
// address) is a connection it accepted, not one this host dialed.
type listeners struct {
	on   map[netip.AddrPort]bool
	wild map[uint16][]diagSock // by port
}

func (ls *listeners) add(m diagSock) {
	if m.src.IsUnspecified() {
		if ls.wild == nil {
			ls.wild = map[uint16][]diagSock{}
		}
		ls.wild[m.sport] = append(ls.wild[m.sport], m)
		return
	}
	if ls.on == nil {
		ls.on = map[netip.AddrPort]bool{}
	}
	ls.on[netip.AddrPortFrom(m.src, m.sport)] = true
}

// accepted reports whether a socket on src:port is one of theirs.
func (ls *listeners) accepted(src netip.Addr, port uint16) bool {
	if ls.on[netip.AddrPortFrom(src.WithZone(""), port)] {
		return true
	}
	for _, w := range ls.wild[port] {
		if holdsFor(w, src) {
			return true
		}
	}
	return false
}

// dropAccepted removes from pairs the ports of accepted connections, and
// the pairs left with none.
func (ls *listeners) dropAccepted(pairs map[pairKey]*pairPorts) {
	if len(ls.on) == 0 && len(ls.wild) == 0 {
		return
	}
	for k, p := range pairs {
		out := func(port uint16) bool { return ls.accepted(k.src, port) }
		p.live = slices.DeleteFunc(p.live, out)
		p.tw = slices.DeleteFunc(p.tw, out)
		p.old = slices.DeleteFunc(p.old, out)
		if len(p.live)+len(p.tw)+len(p.old) == 0 {
			delete(pairs, k)
		}
	}
}

// udpPairs reads every UDP source with sockets on ports of r, wildcard
// sockets counted against each source of the family they cover.
func udpPairs(ctx context.Context, v4, v6 bool, r PortRange) (map[pairKey]*pairPorts, hostPorts, error) {
	var b sockdiag.Bytecode
	b.Port(sockdiag.SGE, r.Lo)
	b.Port(sockdiag.SLE, r.Hi)
	own := map[netip.Addr][]uint16{}
	var wild4, wild6 []uint16
	err := dump(ctx, sockdiag.Requests(true, v4, true, sockdiag.AllStates, b.Bytes()), func(msg []byte) {
		m := parseSock(msg)
		switch {
		case !m.src.IsUnspecified():
			own[m.src] = append(own[m.src], m.sport)
		case m.src.Is4():
			wild4 = append(wild4, m.sport)
		default:
			wild6 = append(wild6, m.sport)
			if !m.v6only {
				wild4 = append(wild4, m.sport)
			}
		}
	})
	if err != nil {
		return nil, hostPorts{}, err
	}
	pairs := map[pairKey]*pairPorts{}
	has4, has6 := false, false
	for src, ports := range own {
		if src.Is4() && !v4 || src.Is6() && !v6 {
			continue
		}
		wild := wild6
		if src.Is4() {
			wild, has4 = wild4, true
		} else {
			has6 = true
		}
		pairs[pairKey{src: src}] = &pairPorts{live: append(ports, wild...)}
	}
	// Wildcard sockets alone: shown as the wildcard address, the ports an
	// unbound socket of that family could not take.
	if v4 && !has4 && len(wild4) > 0 {
		pairs[pairKey{src: netip.IPv4Unspecified()}] = &pairPorts{live: wild4}
	}
	if v6 && !has6 && len(wild6) > 0 {
		pairs[pairKey{src: netip.IPv6Unspecified()}] = &pairPorts{live: wild6}
	}
	host, err := hostOf(r, nil)
	return pairs, host, err
}

// localAddr reports whether a is an address of this host (its network
// namespace), as the routing says: a local route (the local table, looked up
// first, has one for every address of the host, so "unreachable" means
// not local). An address with a zone must be one of its interface's. Where
// the routing or the interface cannot be asked, it says yes and leaves the
// kernel to tell.
func localAddr(a netip.Addr) bool {
	if a.Zone() != "" {
		return onInterface(a)
	}
	_, typ, err := routeGet(a)
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
		return false
	}
	return err != nil || typ == unix.RTN_LOCAL
}

// onInterface reports whether a is an address of the interface its zone
// names.
func onInterface(a netip.Addr) bool {
	i, err := zoneIndex(a.Zone())
	if err != nil {
		return false
	}
	ifi, err := net.InterfaceByIndex(int(i))
	if err != nil {
		return false // no such interface
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return true
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if b, ok := netip.AddrFromSlice(n.IP); ok && b.Unmap() == a.WithZone("").Unmap() {
				return true
			}
		}
	}
	return false
}

// diagUDPAny reads the ports of r that a UDP socket bound to no address
// cannot take (its port is chosen as for the wildcard address): for an IPv4
// socket, those of every IPv4 socket and of the IPv6 sockets that are not
// IPv6-only (a bind to an IPv6 address makes a socket IPv6-only; a connected
// IPv6 socket does not say, and counts); for an IPv6-only socket, those of
// the IPv6 sockets on IPv6 addresses; for a dual-stack IPv6 socket, every
// one.
func diagUDPAny(ctx context.Context, v4, v6only bool, r PortRange) (pairPorts, hostPorts, error) {
	var b sockdiag.Bytecode
	b.Port(sockdiag.SGE, r.Lo)
	b.Port(sockdiag.SLE, r.Hi)
	var p pairPorts
	err := dump(ctx, sockdiag.Requests(true, true, true, sockdiag.AllStates, b.Bytes()), func(msg []byte) {
		m := parseSock(msg)
		var takes bool
		switch {
		case v4:
			takes = m.family == unix.AF_INET || !m.v6only
		case v6only:
			takes = m.family == unix.AF_INET6 && m.src.Is6() // IPv4-mapped addresses are unmapped
		default:
			takes = true
		}
		if takes {
			p.live = append(p.live, m.sport)
		}
	})
	if err != nil {
		return p, hostPorts{}, err
	}
	host, err := hostOf(r, nil)
	return p, host, err
}

// diagTCPBindFirst reads the ports of r that a TCP bind(src:0) cannot take
// (a Dialer with DisableBindNoPort): every port of a TCP socket on src, or
// on a wildcard address that covers it, in any state and whatever its
// destination (bind() picks a port no socket on the address holds; those
// on other addresses do not matter). TIME_WAIT sockets count as TimeWait,
// listeners and bound sockets as Bound, the others as InUse.
func diagTCPBindFirst(ctx context.Context, src netip.Addr, r PortRange) (pairPorts, hostPorts, error) {
	var p pairPorts
	bound := new(portSet)
	err := dump(ctx, [][]byte{sockdiag.TCPRequest(sockdiag.AllStates|sockdiag.BoundInactive, onSource(src, r))}, func(msg []byte) {
		m := parseSock(msg)
		if m.src != src && !(m.src.IsUnspecified() && holdsFor(m, src)) {
			return
		}
		switch m.state {
		case sockdiag.StateListen, sockdiag.StateClose:
			bound.Add(m.sport)
		case sockdiag.StateTimeWait:
			p.tw = append(p.tw, m.sport)
		default:
			p.live = append(p.live, m.sport)
		}
	})
	if err != nil {
		return p, hostPorts{}, err
	}
	host, err := hostOf(r, bound)
	if ns, ok := namespaceRange(); ok && ns.Lo <= r.Lo && r.Hi <= ns.Hi {
		host.bindSearch()
	}
	return p, host, err
}

// onSource is the filter of the sockets that can hold a port of r for src:
// those on src, on its family's wildcard address and, for IPv4, on [::]
// (dual-stack), with a local port in r.
func onSource(src netip.Addr, r PortRange) []byte {
	var b sockdiag.Bytecode
	conds := []netip.Addr{src, unspecified(src)}
	if src.Is4() {
		conds = append(conds, netip.IPv6Unspecified())
	}
	b.AnyOf(conds)
	b.Port(sockdiag.SGE, r.Lo)
	b.Port(sockdiag.SLE, r.Hi)
	return b.Bytes()
}
