package safedial

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"os"

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
		cached  = false // the last dump of this pair (portCache) was tried
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
		case !cached:
			// A recent dump of this pair, if any, orders the next
			// candidates without a walk of the table; it refuses none:
			// when they fail, the dial dumps.
			cached = true
			if states := portCache.get(s.key()); states != nil {
				queue = ranking(states, true)
			}
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
			portCache.put(s.key(), states)
			// The first dump skips the ports this dial tried already,
			// unless they are all that is left.
			if queue = ranking(states, rounds == 1); len(queue) == 0 {
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
			portCache.taken(s.key(), port)
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

func (s *search) key() portKey { return portKey{s.src.WithZone(""), s.peer, s.rng} }

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
	if _, found, err := udpOwner(s.ctx, s.nl, familyOf(s.src), local, s.peer, s.zone); err != nil || found {
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
	if err := s.ctx.Err(); err != nil {
		return lost, err // the dial's time is up: back out
	}
	owner, found, err := udpOwner(s.ctx, s.nl, familyOf(s.src), local, s.peer, s.zone)
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
	if err := s.ctx.Err(); err != nil {
		return lost, err
	}
	if peer := peerOf(fd); peer != s.peer {
		s.moved = peer
		return moved, nil
	}
	// The guarantee: list every socket connected from src:port to the
	// peer and back out if any other is there. Of two sockets that
	// connected to one 4-tuple, the second to connect always sees the
	// first; at worst both back out and try other ports, never both stay.
	if others, err := othersConnected(s.ctx, s.nl, s.src, port, s.peer, cookie); err != nil || others {
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
