package safedial

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const shareSupported = true

// shareCandidates is how many random ports a shared UDP dial tries before it
// asks the kernel which ports are in use toward the destination (one dump):
// at low fill a random port is nearly always free, and a dump costs a walk
// of the kernel's UDP table.
const shareCandidates = 3

// shareDumps is how many dumps a shared dial makes among this process's
// concurrent dials before it goes on alone.
const shareDumps = 8

// shareConnect binds socket fd (net.Dialer's own, orig, or a fresh one made
// by fresh once a candidate port has bound it) from src to a port that no
// other UDP socket uses toward dst, and connects it, with Cloudflare's
// "connectx" scheme: skip a port on which sock_diag finds a socket that
// would receive from dst; with SO_REUSEPORT (which the kernel allows only
// among sockets of the same user) bind the candidate,
// turn SO_REUSEPORT off (from now on every other bind of that port fails),
// ask sock_diag which socket would receive from dst on that port and
// require this one, connect, check with a dump that no other socket is
// connected to the same 4-tuple (else back out), and turn SO_REUSEPORT on
// again for the next sockets toward other destinations. It returns the socket that succeeded
// (fd or a fresh one) or an error: exhaustion as an *os.SyscallError
// ("connect", EAGAIN) when no port of r is left toward dst.
func shareConnect(ctx context.Context, fd, orig int, fresh func() (int, error), src netip.Addr, zone uint32, dst netip.AddrPort, r PortRange) (int, error) {
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fd, &unsupportedError{what: "ShareUDPPorts needs sock_diag (NETLINK_SOCK_DIAG)", err: os.NewSyscallError("socket", err)}
	}
	defer unix.Close(nl)
	if err := deadline(ctx, nl); err != nil {
		return fd, err
	}
	size := r.size()
	tried := make(map[uint16]bool)
	next := func() (uint16, bool) { // a random port not tried yet
		for range 4 * shareCandidates {
			p := r.Lo + uint16(rand.IntN(size))
			if !tried[p] {
				return p, true
			}
		}
		return 0, false
	}
	// Candidates come from three places in turn: a few random ports; the
	// complement of the ports found in use toward dst by a recent dump
	// (kept for a second: listing thousands of sockets costs milliseconds);
	// dumps of our own. A candidate can also fail because a concurrent dial
	// holds it for a moment (bound, or connected and about to back out of a
	// duplicate), so the next dump retries it. When a dump leaves no port
	// free, or after shareDumps dumps, the dial goes on alone among this
	// process's dials (claiming held for writing: no claim of ours is then
	// in flight), and only a dump made alone concludes exhaustion.
	var candidates []uint16
	// complement sets candidates to the ports used leaves free (less those
	// tried, if skipTried), from a random start, and returns how many are
	// free.
	complement := func(used []bool, skipTried bool) (free int) {
		candidates = candidates[:0]
		start := rand.IntN(size)
		for i := range size {
			p := r.Lo + uint16((start+i)%size)
			if used[p-r.Lo] {
				continue
			}
			free++
			if !skipTried || !tried[p] {
				candidates = append(candidates, p)
			}
		}
		return free
	}
	key := usedKey{src: src, dst: dst, r: r}
	alone := false
	defer func() {
		if alone {
			claiming.Unlock()
		}
	}()
	phase, dumps := 0, 0 // phase 0: random, 1: from the cached dump, 2: from our dumps
	for {
		var port uint16
		switch {
		case phase == 0 && len(tried) < shareCandidates:
			p, ok := next()
			if !ok {
				phase = 1
				continue
			}
			port = p
		case phase == 0:
			phase = 1
			if used := usedCache.get(key); used != nil {
				complement(used, true)
			}
			continue
		case len(candidates) > 0:
			port, candidates = candidates[0], candidates[1:]
		default:
			phase = 2
			dumps++
			if !alone && dumps > shareDumps {
				claiming.Lock()
				alone = true
			}
			if dumps > 4*shareDumps {
				// Ports keep being taken by other processes: give up
				// rather than loop for ever.
				return fd, os.NewSyscallError("connect", unix.EAGAIN)
			}
			used, err := usedToward(ctx, src, dst, r)
			if err != nil {
				return fd, err
			}
			usedCache.put(key, used)
			if complement(used, dumps == 1) == 0 {
				if alone {
					return fd, os.NewSyscallError("connect", unix.EAGAIN)
				}
				claiming.Lock() // and dump again, alone
				alone = true
			}
			continue
		}
		tried[port] = true
		if fd < 0 {
			if fd, err = fresh(); err != nil {
				return -1, err
			}
		}
		if !alone {
			claiming.RLock()
		}
		ok, bound, err := claim(ctx, nl, fd, src, zone, port, dst)
		if !alone {
			claiming.RUnlock()
		}
		switch {
		case err != nil:
			return fd, err
		case ok:
			usedCache.use(key, port)
			return fd, nil
		case bound && fd == orig:
			// net.Dialer's socket holds a port another socket owns toward
			// dst: put a fresh socket in its place at once, which frees
			// the port (left bound, it would keep others off it for as
			// long as this dial lasts).
			n, err := fresh()
			if err == nil {
				err = replaceFD(n, orig)
			}
			if err != nil {
				return fd, err
			}
		case bound:
			unix.Close(fd)
			fd = -1
		}
	}
}

// claiming is held for reading by every claim of this process, and for
// writing by a dial that goes on alone: one about to conclude exhaustion (a
// port held by two sockets that both connected and will both back out
// looks used to a dump, and must not end in a false exhaustion), or one
// that lost too many rounds to concurrent dials.
var claiming sync.RWMutex

// usedKey names a dump of the ports in use from src toward dst.
type usedKey struct {
	src netip.Addr
	dst netip.AddrPort
	r   PortRange
}

// usedCache keeps the last dumps (8, most recent first), for a second.
var usedCache usedDumps

type usedDumps struct {
	mu      sync.Mutex
	entries [8]struct {
		key  usedKey
		at   int64
		used []bool
	}
}

const usedTTL = int64(time.Second)

// get returns a copy of a fresh dump for k, or nil.
func (c *usedDumps) get(k usedKey) []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.key == k && e.used != nil && nanotime()-e.at < usedTTL {
			return slices.Clone(e.used)
		}
	}
	return nil
}

func (c *usedDumps) put(k usedKey, used []bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	copy(c.entries[1:], c.entries[:len(c.entries)-1])
	c.entries[0].key, c.entries[0].at, c.entries[0].used = k, nanotime(), slices.Clone(used)
}

// use records a port just claimed toward k's destination.
func (c *usedDumps) use(k usedKey, port uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if e := &c.entries[i]; e.key == k && e.used != nil {
			e.used[port-k.r.Lo] = true
		}
	}
}

// claim runs connectx for one candidate port on fd. Not ok means the port is
// taken toward dst; bound tells whether fd is then bound (and must be
// dropped) or can try the next candidate.
func claim(ctx context.Context, nl, fd int, src netip.Addr, zone uint32, port uint16, dst netip.AddrPort) (ok, bound bool, err error) {
	// A socket that would already receive from dst on this port (connected
	// to dst, or bound there and perhaps about to be): skip the port
	// without binding. This also narrows the window in which two dials
	// bind the same port at once.
	if _, found, err := udpOwner(nl, netip.AddrPortFrom(src, port), dst); err != nil || found {
		return false, false, err
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return false, false, &unsupportedError{what: "ShareUDPPorts needs SO_COOKIE (Linux 4.12+)", err: os.NewSyscallError("getsockopt", err)}
	}
	if err := reusePort(fd, 1); err != nil {
		return false, false, err
	}
	switch err := unix.Bind(fd, sockaddr(src, zone, port)); err {
	case nil:
	case unix.EADDRINUSE:
		return false, false, nil // a socket that does not share (or of another user) holds it
	default:
		return false, false, os.NewSyscallError("bind", err)
	}
	if err := reusePort(fd, 0); err != nil {
		return false, true, err
	}
	owner, found, err := udpOwner(nl, netip.AddrPortFrom(src, port), dst)
	if err != nil {
		return false, true, err
	}
	if !found || owner != cookie {
		return false, true, nil // another socket receives from dst on this port
	}
	dstZone, _ := zoneIndex(dst.Addr().Zone()) // unknown: connect reports it
	if err := unix.Connect(fd, sockaddr(dst.Addr(), dstZone, dst.Port())); err != nil {
		return false, true, os.NewSyscallError("connect", err)
	}
	// The guarantee: list every socket connected from src:port to dst and
	// back out if any other is there. Of two sockets that connected to one
	// 4-tuple, the second to connect always sees the first; at worst both
	// back out and try other ports, never both stay.
	if others, err := othersConnected(ctx, src, port, dst, cookie); err != nil || others {
		return false, true, err
	}
	return true, true, reusePort(fd, 1)
}

// othersConnected reports whether a UDP socket other than the one with
// cookie is connected from src:port to dst: one dump, filtered by the kernel
// to that 4-tuple.
func othersConnected(ctx context.Context, src netip.Addr, port uint16, dst netip.AddrPort, cookie uint64) (bool, error) {
	var b bytecode
	b.cond(bcSCond, src, int32(port))
	b.cond(bcDCond, dst.Addr(), int32(dst.Port()))
	family := familyOf(src)
	// Connected sockets only, and the ports in the request itself: the
	// kernel's UDP dump compares those before running the bytecode.
	req := request(family, unix.IPPROTO_UDP, 1<<tcpEstablished, b.bytes())
	id := req[unix.SizeofNlMsghdr+8:]
	binary.BigEndian.PutUint16(id[0:], port)
	binary.BigEndian.PutUint16(id[2:], dst.Port())
	others := false
	err := dump(ctx, [][]byte{req}, func(msg []byte) {
		if binary.NativeEndian.Uint64(msg[4+40:]) != cookie {
			others = true
		}
	})
	return others, err
}

func reusePort(fd, v int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, v); err != nil {
		return &unsupportedError{what: "ShareUDPPorts needs SO_REUSEPORT", err: os.NewSyscallError("setsockopt", err)}
	}
	return nil
}

// udpOwner asks sock_diag which UDP socket would receive a datagram from
// peer on local, and returns its cookie.
func udpOwner(nl int, local, peer netip.AddrPort) (cookie uint64, found bool, err error) {
	family := familyOf(local.Addr())
	m, req := message(unix.SOCK_DIAG_BY_FAMILY, sizeofReqV2, nil) // no bytecode: one lookup
	req[0], req[1] = family, unix.IPPROTO_UDP
	binary.NativeEndian.PutUint32(req[4:], allStates)
	id := req[8:]
	// The kernel's UDP lookup takes the datagram's source (the peer) as
	// "src" and its destination (us) as "dst", "for historical reasons".
	binary.BigEndian.PutUint16(id[0:], peer.Port())
	binary.BigEndian.PutUint16(id[2:], local.Port())
	copy(id[4:20], peer.Addr().AsSlice())
	copy(id[20:36], local.Addr().AsSlice())
	binary.NativeEndian.PutUint64(id[40:], ^uint64(0)) // INET_DIAG_NOCOOKIE
	if err := unix.Sendto(nl, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, false, os.NewSyscallError("sendto", err)
	}
	var buf [512]byte
	n, err := unix.Read(nl, buf[:])
	if err != nil {
		return 0, false, os.NewSyscallError("read", err)
	}
	b := buf[:n]
	if len(b) < unix.SizeofNlMsghdr {
		return 0, false, os.NewSyscallError("read", unix.EBADMSG)
	}
	switch binary.NativeEndian.Uint16(b[4:]) {
	case unix.NLMSG_ERROR:
		errno := unix.Errno(-int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:])))
		if errno == unix.ENOENT {
			return 0, false, nil
		}
		return 0, false, &unsupportedError{what: "ShareUDPPorts needs sock_diag lookups of UDP sockets", err: os.NewSyscallError("sock_diag", errno)}
	case unix.SOCK_DIAG_BY_FAMILY:
		if len(b) < unix.SizeofNlMsghdr+sizeofDiagMsg {
			return 0, false, os.NewSyscallError("read", unix.EBADMSG)
		}
		msg := b[unix.SizeofNlMsghdr:]
		return binary.NativeEndian.Uint64(msg[4+40:]), true, nil
	}
	return 0, false, os.NewSyscallError("read", unix.EBADMSG)
}

// usedToward returns, for each port of r, whether a UDP socket on src (or the
// wildcard) is connected to dst from it: one filtered dump.
func usedToward(ctx context.Context, src netip.Addr, dst netip.AddrPort, r PortRange) ([]bool, error) {
	var b bytecode
	b.either(func(b *bytecode) { b.cond(bcSCond, src, -1) }, func(b *bytecode) { b.cond(bcSCond, unspecified(src), -1) })
	b.cond(bcDCond, dst.Addr(), int32(dst.Port()))
	b.port(bcSGE, r.Lo)
	b.port(bcSLE, r.Hi)
	used := make([]bool, r.size())
	// One family: the dump only proposes candidates. A dual-stack IPv6
	// socket holding a port toward an IPv4 destination is still seen by
	// the owner check of claim.
	family := familyOf(src)
	err := dump(ctx, [][]byte{request(family, unix.IPPROTO_UDP, allStates, b.bytes())}, func(msg []byte) {
		if p := binary.BigEndian.Uint16(msg[4:6]); p >= r.Lo && p <= r.Hi {
			used[p-r.Lo] = true
		}
	})
	return used, err
}

// routeSource asks the kernel's routing which source address a packet to dst
// would leave from, without making a socket or taking a port.
func routeSource(dst netip.Addr) (netip.Addr, error) {
	src, _, err := routeGet(dst)
	if err == nil && !src.IsValid() {
		err = os.NewSyscallError("RTM_GETROUTE", unix.EADDRNOTAVAIL)
	}
	return src, err
}

// localBroadcast reports whether a is a broadcast address of this host (such
// as 127.255.255.255 on lo): binding it succeeds, but the kernel then picks
// the connection's source from the route, so it pins nothing.
func localBroadcast(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	_, typ, err := routeGet(a)
	return err == nil && typ == unix.RTN_BROADCAST
}

// routeGet asks the kernel's routing (RTM_GETROUTE) about dst: the preferred
// source address and the route's type (RTN_LOCAL, RTN_BROADCAST, ...).
func routeGet(dst netip.Addr) (src netip.Addr, typ uint8, err error) {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	addr := dst.AsSlice()
	attrLen := unix.SizeofRtAttr + len(addr)
	n := unix.SizeofNlMsghdr + unix.SizeofRtMsg + attrLen
	m := make([]byte, n)
	binary.NativeEndian.PutUint32(m[0:], uint32(n))
	binary.NativeEndian.PutUint16(m[4:], unix.RTM_GETROUTE)
	binary.NativeEndian.PutUint16(m[6:], unix.NLM_F_REQUEST)
	rt := m[unix.SizeofNlMsghdr:]
	rt[0] = familyOf(dst)       // rtm_family
	rt[1] = byte(8 * len(addr)) // rtm_dst_len
	attr := rt[unix.SizeofRtMsg:]
	binary.NativeEndian.PutUint16(attr[0:], uint16(attrLen))
	binary.NativeEndian.PutUint16(attr[2:], unix.RTA_DST)
	copy(attr[unix.SizeofRtAttr:], addr)
	if err := unix.Sendto(s, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("sendto", err)
	}
	var buf [4096]byte
	got, err := unix.Read(s, buf[:])
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("read", err)
	}
	b := buf[:got]
	if len(b) < unix.SizeofNlMsghdr+unix.SizeofRtMsg {
		return netip.Addr{}, 0, os.NewSyscallError("read", unix.EBADMSG)
	}
	if binary.NativeEndian.Uint16(b[4:]) == unix.NLMSG_ERROR {
		return netip.Addr{}, 0, os.NewSyscallError("RTM_GETROUTE", unix.Errno(-int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:]))))
	}
	typ = b[unix.SizeofNlMsghdr+7] // rtm_type, after family, dst_len, src_len, tos, table, protocol, scope
	for a := b[unix.SizeofNlMsghdr+unix.SizeofRtMsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		if l < unix.SizeofRtAttr || l > len(a) {
			break
		}
		if binary.NativeEndian.Uint16(a[2:]) == unix.RTA_PREFSRC {
			if p, ok := netip.AddrFromSlice(a[unix.SizeofRtAttr:l]); ok {
				src = p.Unmap()
			}
		}
		a = a[min((l+3)&^3, len(a)):]
	}
	return src, typ, nil
}
