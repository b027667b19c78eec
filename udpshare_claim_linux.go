package safedial

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"

	"github.com/safedial/safedial/internal/sockdiag"
	"golang.org/x/sys/unix"
)

// One claim of a shared dial: a candidate port, taken for one peer or
// given back.

type claimResult int

const (
	taken   claimResult = iota // the port is taken; fd is not bound
	busy                       // another dial claims this 4-tuple right now; fd is not bound
	lost                       // another socket owns the port toward the peer; fd is bound
	moved                      // connected to another peer than expected; fd is bound
	claimed                    // fd is bound and connected, alone on its 4-tuple
)

// claim runs connectx for one candidate port on fd, holding the lock of the
// (source, peer) pair in this process (waiting for it under the dial's
// context) and the lock of the 4-tuple in the network namespace (see
// lockTuple; held by another dial, the port is busy). Holding both: skip
// the port when sock_diag finds a socket that would receive from the peer
// on it; with SO_REUSEPORT (which the kernel allows only among sockets of
// the same user) bind it; turn SO_REUSEPORT off (from now on every other
// bind of that port fails); ask sock_diag which socket would receive from
// the peer on that port and require this one; connect; check with
// getpeername that the kernel connected to the peer; discard what was
// queued while the socket was bound but not connected; and turn
// SO_REUSEPORT on again for the next sockets toward other peers.
//
// The 4-tuple lock is what makes this sound between processes: the claims
// of one 4-tuple run one at a time, and each sees the socket an earlier one
// connected (a connected socket is the first answer of a lookup from its
// peer) without walking the kernel's UDP table.
func (s *search) claim(fd int, port uint16) (claimResult, error) {
	if err := s.lock.lock(s.ctx); err != nil {
		return taken, err
	}
	defer s.lock.unlock()
	unlock, state, err := lockTuple(s.src, s.zone, port, s.peer)
	if err != nil {
		return taken, err
	}
	switch state {
	case tupleBusy:
		s.busy = append(s.busy, inFlight{0, port})
		return busy, nil
	case tupleLocked:
		defer unlock()
	}
	cookie, res, err := s.bindAlone(fd, port)
	if res != claimed || err != nil {
		return res, err
	}
	if res, err = s.connect(fd, port); res != claimed || err != nil || state == tupleLocked {
		return res, err
	}
	// Another user holds the lock's name: without the lock, list the
	// sockets connected to the 4-tuple (a walk of the UDP table) and back
	// out if another is there. Of two sockets that connected to one
	// 4-tuple, the second to connect sees the first.
	if others, err := othersConnected(s.ctx, s.nl, s.src, s.zone, port, s.peer, cookie); err != nil || others {
		return lost, err
	}
	return claimed, nil
}

// bindAlone binds fd to src:port where no socket would receive from the
// peer, and leaves it alone there: SO_REUSEPORT off and the kernel's
// lookup from the peer answering fd (its cookie is returned).
func (s *search) bindAlone(fd int, port uint16) (uint64, claimResult, error) {
	local := netip.AddrPortFrom(s.src, port)
	if _, found, err := udpOwner(s.ctx, s.nl, sockdiag.FamilyOf(s.src), local, s.peer, s.zone); err != nil || found {
		return 0, taken, err
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, taken, &unsupportedError{what: "ShareUDPPorts needs SO_COOKIE (Linux 4.12+)", err: os.NewSyscallError("getsockopt", err)}
	}
	markShared(fd)
	if err := reusePort(fd, 1); err != nil {
		return 0, taken, err
	}
	switch err := unix.Bind(fd, sockaddr(s.src, s.zone, port)); err {
	case nil:
	case unix.EADDRINUSE:
		return 0, taken, nil // a socket that does not share (or of another user) holds it
	default:
		return 0, taken, os.NewSyscallError("bind", err)
	}
	if err := reusePort(fd, 0); err != nil {
		return 0, lost, err
	}
	if err := s.ctx.Err(); err != nil {
		return 0, lost, err // the dial's time is up: back out
	}
	owner, found, err := udpOwner(s.ctx, s.nl, sockdiag.FamilyOf(s.src), local, s.peer, s.zone)
	if err != nil {
		return 0, lost, err
	}
	if !found || owner != cookie {
		return 0, lost, nil // another socket receives from the peer on this port
	}
	return cookie, claimed, nil
}

// connect connects fd, alone on src:port toward the peer, checks that the
// kernel connected it to the peer, discards what was queued before, and
// lets sockets toward other peers join the port again.
func (s *search) connect(fd int, port uint16) (claimResult, error) {
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
	drain(fd)
	if err := reusePort(fd, 1); err != nil {
		return lost, err
	}
	return claimed, nil
}

// shareBeforeConnect, when set by a test, runs while a claimed socket is
// bound but not yet connected.
var shareBeforeConnect func(fd int, port uint16)

// What lockTuple found.
type tupleState int

const (
	tupleLocked   tupleState = iota // the lock is this claim's
	tupleBusy                       // a claim of this user holds it: a claim in flight
	tupleSquatted                   // another user holds the name (or a socket that is not a lock)
)

// lockTuple takes the lock of the claims of one 4-tuple (src on interface
// zone, port, peer) in this network namespace: a listening abstract
// AF_UNIX socket bound to a name made of the 4-tuple. Abstract names are
// per network namespace, as UDP ports are; the kernel lets one socket hold
// a name and releases it when the socket closes, also when its process
// dies. When the name is held, a connection to it tells who holds it
// (SO_PEERCRED): a process of this user is a claim in flight (tupleBusy);
// anything else can be any process of the namespace squatting the name
// (tupleSquatted), which must not turn a port away: the claim then goes on
// without the lock, checking for duplicates as it did before there was
// one.
func lockTuple(src netip.Addr, zone uint32, port uint16, peer netip.AddrPort) (unlock func(), state tupleState, err error) {
	name := &unix.SockaddrUnix{Name: tupleName(src, zone, port, peer)}
	for range 2 {
		l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			return nil, 0, &unsupportedError{what: "ShareUDPPorts needs AF_UNIX sockets", err: os.NewSyscallError("socket", err)}
		}
		switch err := unix.Bind(l, name); err {
		case nil:
			if err := unix.Listen(l, 64); err != nil {
				unix.Close(l)
				return nil, 0, os.NewSyscallError("listen", err)
			}
			return func() { unix.Close(l) }, tupleLocked, nil
		case unix.EADDRINUSE:
		default:
			unix.Close(l)
			return nil, 0, &unsupportedError{what: "ShareUDPPorts needs abstract AF_UNIX names", err: os.NewSyscallError("bind", err)}
		}
		// Held: ask the holder who it is, with the same socket.
		switch err := unix.Connect(l, name); err {
		case nil:
			cred, err := unix.GetsockoptUcred(l, unix.SOL_SOCKET, unix.SO_PEERCRED)
			unix.Close(l)
			if err == nil && cred.Uid == uint32(os.Geteuid()) {
				return nil, tupleBusy, nil
			}
			return nil, tupleSquatted, nil
		case unix.EAGAIN:
			// Its backlog is full: a squatter that never accepts (64
			// claims asking one claim in flight at once is unlikely,
			// and going on without the lock is sound anyway).
			unix.Close(l)
			return nil, tupleSquatted, nil
		}
		// Refused: gone since the bind (try once more), or a holder that
		// does not listen (a claim between its bind and listen, or a
		// squatter).
		unix.Close(l)
	}
	return nil, tupleSquatted, nil
}

// tupleName is the abstract name of a 4-tuple's lock: "@safedial-udp "
// and, in hex, the source (IPv4-mapped for IPv4), its interface index, the
// port, the peer's address and port (94 bytes; the kernel allows 107).
func tupleName(src netip.Addr, zone uint32, port uint16, peer netip.AddrPort) string {
	var b [40]byte
	s, p := src.Unmap().As16(), peer.Addr().Unmap().As16()
	copy(b[0:16], s[:])
	binary.BigEndian.PutUint32(b[16:], zone)
	binary.BigEndian.PutUint16(b[20:], port)
	copy(b[22:38], p[:])
	binary.BigEndian.PutUint16(b[38:], peer.Port())
	return "@safedial-udp " + hex.EncodeToString(b[:])
}
