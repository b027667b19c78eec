package safedial

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

const shareSupported = true

// shareCandidates is how many random ports a shared UDP dial tries before it
// asks the kernel what holds the ports of its range (one dump): at low fill
// a random port is nearly always free, and a dump walks the kernel's UDP
// table (host-wide: its cost grows with every UDP socket of the host).
const shareCandidates = 3

// shareRounds is how many dumps a shared dial makes while its candidates keep
// being taken by concurrent dials (of this process or others) before it
// reports exhaustion, saying so. A dump that leaves no candidate at all ends
// the dial at once.
const shareRounds = 4

// shareConnect binds socket fd (net.Dialer's own, orig, or a fresh one made
// by fresh once a candidate port has bound it) from src (zone: its interface
// index) to a port no other UDP socket uses toward dst, and connects it,
// with Cloudflare's "connectx" scheme (see claim). Every check is keyed by
// the peer the kernel connects to (dst, or this host for an unspecified
// dst), read back with getpeername after connect. It returns the socket that
// succeeded (fd or a fresh one) or an error: exhaustion as a *sharedFull
// around an *os.SyscallError ("connect", EAGAIN) when no port of the range
// is left toward dst, with what holds the ports.
//
// No lock of the package is held while user code runs (fresh runs the
// user's hook), and the only waiting is for the lock of this (source, peer)
// pair, under ctx: dials of other pairs never wait for this one.
func shareConnect(ctx context.Context, fd, orig int, fresh func() (int, error), src netip.Addr, zone uint32, dst netip.AddrPort, r PortRange) (int, error) {
	rng, off, err := shareRange(r)
	if err != nil {
		return fd, err
	}
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fd, &unsupportedError{what: "ShareUDPPorts needs sock_diag (NETLINK_SOCK_DIAG)", err: os.NewSyscallError("socket", err)}
	}
	defer unix.Close(nl)
	if err := deadline(ctx, nl); err != nil {
		return fd, err
	}
	s := &search{ctx: ctx, nl: nl, src: src, zone: zone, dst: dst, rng: rng, off: off}
	s.setPeer(netip.AddrPortFrom(kernelPeer(src, dst.Addr()), dst.Port()))
	defer func() { pairLocks.release(s.lock) }()

	var (
		tried   = map[uint16]bool{}
		queue   []uint16
		rounds  int
		last    []portState
		random  = shareCandidates
		moves   int
		ranking = func(states []portState, skipTried bool) []uint16 {
			// Free ports first, then ports shared with other peers, then
			// those of dials in flight; each from a random start.
			var q []uint16
			start := rand.IntN(len(states))
			for _, want := range [...]portState{portFree, portShared, portMaybe} {
				for i := range states {
					j := (start + i) % len(states)
					if p := rng.Lo + uint16(j); states[j] == want && !(skipTried && tried[p]) {
						q = append(q, p)
					}
				}
			}
			return q
		}
	)
	for {
		if err := ctx.Err(); err != nil {
			return fd, err
		}
		var port uint16
		switch {
		case random > 0:
			random--
			p, ok := s.randomPort(tried)
			if !ok {
				random = 0
				continue
			}
			port = p
		case len(queue) > 0:
			port, queue = queue[0], queue[1:]
		default:
			if rounds == shareRounds {
				return fd, s.full(last)
			}
			rounds++
			states, err := sharedPorts(ctx, src, s.peer.Addr(), s.peer.Port(), rng, off)
			if err != nil {
				return fd, err
			}
			last = states
			if queue = ranking(states, rounds == 1); len(queue) == 0 && rounds > 1 {
				queue = ranking(states, false)
			}
			if len(queue) == 0 {
				return fd, s.full(states)
			}
			continue
		}
		tried[port] = true
		if fd < 0 {
			// Outside any lock: fresh runs the user's hook.
			if fd, err = fresh(); err != nil {
				return -1, err
			}
		}
		res, err := s.claim(fd, port)
		if err != nil {
			return fd, err
		}
		switch res {
		case claimed:
			return fd, nil
		case taken:
			continue // fd is not bound: it tries the next port
		case moved:
			// The kernel connected to another peer than expected: search
			// again for that one (at most twice, in case it keeps moving).
			if moves++; moves > 2 {
				return fd, errConfig("ShareUDPPorts: the kernel keeps connecting %v to another peer (last %v)", dst, s.moved)
			}
			s.setPeer(s.moved)
			queue, random = nil, 0
		}
		// fd is bound to a port it did not get: drop it.
		if fd == orig {
			// net.Dialer's socket: put a fresh one in its place at once,
			// which frees the port.
			n, err := fresh()
			if err == nil {
				err = replaceFD(n, orig)
			}
			if err != nil {
				return fd, err
			}
		} else {
			unix.Close(fd)
			fd = -1
		}
	}
}

// search is one shared dial's state.
type search struct {
	ctx   context.Context
	nl    int // NETLINK_SOCK_DIAG, for lookups
	src   netip.Addr
	zone  uint32
	dst   netip.AddrPort // as dialed
	peer  netip.AddrPort // what the kernel connects to
	moved netip.AddrPort // the peer getpeername showed, when not peer
	rng   PortRange
	off   *portSet
	lock  *pairLock
}

func (s *search) setPeer(peer netip.AddrPort) {
	if s.lock != nil {
		pairLocks.release(s.lock)
	}
	s.peer = peer
	s.lock = pairLocks.acquire(sharePair{src: s.src.WithZone(""), peer: peer})
}

// randomPort returns a random port of the range the kernel hands out, not
// tried yet.
func (s *search) randomPort(tried map[uint16]bool) (uint16, bool) {
	for range 4 * shareCandidates {
		p := s.rng.Lo + uint16(rand.IntN(s.rng.size()))
		if !tried[p] && !s.off.has(p) {
			return p, true
		}
	}
	return 0, false
}

// full is the exhaustion error, with what held the ports in the last dump.
func (s *search) full(states []portState) error {
	h := Headroom{Source: s.src, Dest: s.dst, Range: s.rng}
	h.count(states)
	return &sharedFull{err: &os.SyscallError{Syscall: "connect", Err: unix.EAGAIN}, held: h}
}

type claimResult int

const (
	taken   claimResult = iota // the port is taken; fd is not bound
	lost                       // another socket owns the port toward the peer; fd is bound
	moved                      // connected to another peer than expected; fd is bound
	claimed                    // fd is bound and connected, alone on its 4-tuple
)

// claim runs connectx for one candidate port on fd, holding the lock of the
// (source, peer) pair (waiting for it under the dial's context): skip the
// port when sock_diag finds a socket that would receive from the peer on
// it; with SO_REUSEPORT (which the kernel allows only among sockets of the
// same user) bind it; turn SO_REUSEPORT off (from now on every other bind
// of that port fails); ask sock_diag which socket would receive from the
// peer on that port and require this one; connect; check with getpeername
// that the kernel connected to the peer; list every socket connected to the
// same 4-tuple and back out if another is there; discard what was queued
// while the socket was bound but not connected; and turn SO_REUSEPORT on
// again for the next sockets toward other peers.
func (s *search) claim(fd int, port uint16) (claimResult, error) {
	if err := s.lock.lock(s.ctx); err != nil {
		return taken, err
	}
	defer s.lock.unlock()
	local := netip.AddrPortFrom(s.src, port)
	if _, found, err := udpOwner(s.ctx, s.nl, local, s.peer, s.zone); err != nil || found {
		return taken, err
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return taken, &unsupportedError{what: "ShareUDPPorts needs SO_COOKIE (Linux 4.12+)", err: os.NewSyscallError("getsockopt", err)}
	}
	markShared(fd)
	if err := reusePort(fd, 1); err != nil {
		return taken, err
	}
	switch err := unix.Bind(fd, sockaddr(s.src, s.zone, port)); err {
	case nil:
	case unix.EADDRINUSE:
		return taken, nil // a socket that does not share (or of another user) holds it
	default:
		return taken, os.NewSyscallError("bind", err)
	}
	if err := reusePort(fd, 0); err != nil {
		return lost, err
	}
	owner, found, err := udpOwner(s.ctx, s.nl, local, s.peer, s.zone)
	if err != nil {
		return lost, err
	}
	if !found || owner != cookie {
		return lost, nil // another socket receives from the peer on this port
	}
	if shareBeforeConnect != nil {
		shareBeforeConnect(fd, port)
	}
	dstZone, _ := zoneIndex(s.dst.Addr().Zone()) // unknown: connect reports it
	if err := unix.Connect(fd, sockaddr(s.dst.Addr(), dstZone, s.dst.Port())); err != nil {
		return lost, os.NewSyscallError("connect", err)
	}
	if peer := peerOf(fd); peer != s.peer {
		s.moved = peer
		return moved, nil
	}
	// The guarantee: list every socket connected from src:port to the
	// peer and back out if any other is there. Of two sockets that
	// connected to one 4-tuple, the second to connect always sees the
	// first; at worst both back out and try other ports, never both stay.
	if others, err := othersConnected(s.ctx, s.src, port, s.peer, cookie); err != nil || others {
		return lost, err
	}
	drain(fd)
	if err := reusePort(fd, 1); err != nil {
		return lost, err
	}
	return claimed, nil
}

// shareBeforeConnect, when set by a test, runs while a claimed socket is
// bound but not yet connected.
var shareBeforeConnect func(fd int, port uint16)

// peerOf returns the address fd is connected to, unmapped and without zone.
func peerOf(fd int) netip.AddrPort {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// drain discards the datagrams queued on fd: they arrived while it was bound
// but not yet connected, possibly from anyone.
func drain(fd int) {
	var buf [1]byte
	for range 1 << 16 {
		_, _, err := unix.Recvfrom(fd, buf[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		switch err {
		case nil, unix.EINTR, unix.ECONNREFUSED:
			continue // a datagram, or a pending ICMP error, gone
		}
		return // EAGAIN: nothing left
	}
}

// sharePair names the lock of shared dials from src toward peer.
type sharePair struct {
	src  netip.Addr
	peer netip.AddrPort
}

// pairLock serialises this process's claims toward one (source, peer) pair,
// so that two of them do not race for the same last ports; waiting honours
// the dial's context.
type pairLock struct {
	ch   chan struct{}
	refs int // dials holding this entry (pairLocks.mu)
}

func (l *pairLock) lock(ctx context.Context) error {
	select {
	case l.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *pairLock) unlock() { <-l.ch }

// pairLocks holds the locks of the pairs being dialed, made on demand and
// dropped when no dial uses them.
var pairLocks = pairTable{m: map[sharePair]*pairLock{}}

type pairTable struct {
	mu sync.Mutex
	m  map[sharePair]*pairLock
}

func (t *pairTable) acquire(k sharePair) *pairLock {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.m[k]
	if l == nil {
		l = &pairLock{ch: make(chan struct{}, 1)}
		t.m[k] = l
	}
	l.refs++
	return l
}

func (t *pairTable) release(l *pairLock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l.refs--; l.refs == 0 {
		for k, v := range t.m {
			if v == l {
				delete(t.m, k)
				break
			}
		}
	}
}

// othersConnected reports whether a UDP socket other than the one with
// cookie is connected from src:port to peer: one dump per family (for an
// IPv4 source, IPv6 sockets on IPv4-mapped addresses too), filtered by the
// kernel to that 4-tuple.
func othersConnected(ctx context.Context, src netip.Addr, port uint16, peer netip.AddrPort, cookie uint64) (bool, error) {
	var b bytecode
	b.cond(bcSCond, src, int32(port))
	b.cond(bcDCond, peer.Addr(), int32(peer.Port()))
	// Connected sockets only, and the ports in the request itself: the
	// kernel's UDP dump compares those before running the bytecode.
	reqs := requests(true, src.Is4(), src.Is6(), 1<<tcpEstablished, b.bytes())
	for _, req := range reqs {
		id := req[unix.SizeofNlMsghdr+8:]
		binary.BigEndian.PutUint16(id[0:], port)
		binary.BigEndian.PutUint16(id[2:], peer.Port())
	}
	others := false
	err := dump(ctx, reqs, func(msg []byte) {
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
// peer on local (bound to interface ifindex, for a link-local address with
// a zone), and returns its cookie.
func udpOwner(ctx context.Context, nl int, local, peer netip.AddrPort, ifindex uint32) (cookie uint64, found bool, err error) {
	family := familyOf(local.Addr())
	m, req := message(unix.SOCK_DIAG_BY_FAMILY, sizeofReqV2, nil) // no bytecode: one lookup
	req[0], req[1] = family, unix.IPPROTO_UDP
	binary.NativeEndian.PutUint32(req[4:], allStates)
	id := req[8:]
	// The kernel's UDP lookup takes the datagram's source (the peer) as
	// "src" and its destination (us) as "dst", "for historical reasons".
	binary.BigEndian.PutUint16(id[0:], peer.Port())
	binary.BigEndian.PutUint16(id[2:], local.Port())
	copy(id[4:20], addrBytes(peer.Addr(), family))
	copy(id[20:36], local.Addr().AsSlice())
	binary.NativeEndian.PutUint32(id[36:], ifindex)    // idiag_if: the kernel matches a socket bound to a device only with it
	binary.NativeEndian.PutUint64(id[40:], ^uint64(0)) // INET_DIAG_NOCOOKIE
	if err := unix.Sendto(nl, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, false, os.NewSyscallError("sendto", err)
	}
	var buf [512]byte
	n, err := unix.Read(nl, buf[:])
	for err == unix.EINTR {
		n, err = unix.Read(nl, buf[:])
	}
	if err == unix.EAGAIN {
		if err := ctx.Err(); err != nil {
			return 0, false, err
		}
		return 0, false, context.DeadlineExceeded
	}
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

// addrBytes is a's address as a socket of family sees it: 16 bytes
// (IPv4-mapped for an IPv4 address) for AF_INET6.
func addrBytes(a netip.Addr, family byte) []byte {
	if family == unix.AF_INET6 {
		b := a.As16()
		return b[:]
	}
	return a.AsSlice()
}
