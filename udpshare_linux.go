package safedial

import (
	"context"
	"net/netip"
	"os"
	"time"

	"github.com/safedial/safedial/internal/sockdiag"
	"golang.org/x/sys/unix"
)

const shareSupported = true

// shareCandidates is how many random ports a shared UDP dial tries before it
// asks the kernel what holds the ports of its range (one dump): at low fill
// a random port is nearly always free, and a dump walks the kernel's UDP
// table (host-wide: its cost grows with every UDP socket of the host).
const shareCandidates = 3

// shareRounds is how many dumps a shared dial makes at once while the free
// ports they show keep being taken before it can bind them; then it pauses
// between dumps, and reports exhaustion, saying so, when that goes on for
// shareStale. A dump that leaves no candidate at all ends the dial at once;
// ports held by claims in flight (see search.dump) make it wait instead,
// under its context.
const shareRounds = 4

// shareStale is how long a port may look held by a claim in flight (a
// ShareUDPPorts socket bound but not connected, or the lock of a claim)
// before a dial stops waiting for it: a claim takes well under a
// millisecond, so such a socket belongs to a stopped or stuck process.
const shareStale = claimsPatience

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
// No lock is held while user code runs (fresh runs the user's hook), and
// every wait (for the lock of this (source, peer) pair, for claims in
// flight) is under ctx. Without wait, a dial whose candidates only claims
// in flight hold returns errClaimsInFlight rather than wait for them.
func shareConnect(ctx context.Context, fd, orig int, fresh func() (int, error), src netip.Addr, zone uint32, dst netip.AddrPort, r PortRange, wait bool) (int, error) {
	s, err := newSearch(ctx, src, zone, dst, r)
	if err != nil {
		return fd, err
	}
	defer s.close()
	s.mayWait = wait
	for {
		port, err := s.next()
		if err != nil {
			return fd, err
		}
		if shareCandidate != nil {
			shareCandidate(port)
		}
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
		case taken, busy:
			continue // fd is not bound: it tries the next port
		case moved:
			if err := s.move(); err != nil {
				return fd, err
			}
		}
		// fd is bound to a port it did not get: drop it.
		if fd, err = dropBound(fd, orig, fresh); err != nil {
			return fd, err
		}
	}
}

// dropBound gives up socket fd, bound to a port it did not get. net.Dialer's
// own socket (orig) is replaced by a fresh one at once, which frees the
// port; another is closed and -1 returned.
func dropBound(fd, orig int, fresh func() (int, error)) (int, error) {
	if fd != orig {
		unix.Close(fd)
		return -1, nil
	}
	n, err := fresh()
	if err == nil {
		err = replaceFD(n, orig)
	}
	return fd, err
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
	moves int
	rng   PortRange
	off   *portSet
	lock  *pairLock

	// The candidates.
	tried     map[uint16]bool
	queue     []uint16
	random    int       // random candidates left
	cached    bool      // the last dump of this pair (portCache) was tried
	rounds    int       // dumps whose free ports were all taken in the meantime
	contested time.Time // when rounds reached shareRounds
	last      []portState

	// Claims in flight: when each was first seen (a socket by its cookie,
	// a lock by its port), the locks found held since the last dump, and
	// how long to wait before the next dump.
	inFlight map[inFlight]time.Time
	busy     []inFlight
	backoff  time.Duration
	pending  bool // the candidates of the last dump: only claims in flight hold them
	mayWait  bool // for claims in flight; else errClaimsInFlight
}

// inFlight names a claim in flight that holds a port: its socket, or (cookie
// 0) the lock of the 4-tuple.
type inFlight struct {
	cookie uint64
	port   uint16
}

func newSearch(ctx context.Context, src netip.Addr, zone uint32, dst netip.AddrPort, r PortRange) (*search, error) {
	rng, off, err := shareRange(r)
	if err != nil {
		return nil, err
	}
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, &unsupportedError{what: "ShareUDPPorts needs sock_diag (NETLINK_SOCK_DIAG)", err: os.NewSyscallError("socket", err)}
	}
	if err := sockdiag.Deadline(ctx, nl); err != nil {
		unix.Close(nl)
		return nil, err
	}
	s := &search{ctx: ctx, nl: nl, src: src, zone: zone, dst: dst, rng: rng, off: off,
		tried: map[uint16]bool{}, random: shareCandidates, inFlight: map[inFlight]time.Time{}}
	s.setPeer(netip.AddrPortFrom(kernelPeer(src, dst.Addr()), dst.Port()))
	return s, nil
}

func (s *search) close() {
	pairLocks.release(s.lock)
	unix.Close(s.nl)
}

func (s *search) setPeer(peer netip.AddrPort) {
	if s.lock != nil {
		pairLocks.release(s.lock)
	}
	s.peer = peer
	s.lock = pairLocks.acquire(sharePair{src: s.src.WithZone(""), zone: s.zone, peer: peer})
}

// move follows the kernel to the peer it connected to instead of the one
// expected: the search starts again for that one (at most twice, in case
// it keeps moving).
func (s *search) move() error {
	if s.moves++; s.moves > 2 {
		return errConfig("ShareUDPPorts: the kernel keeps connecting %v to another peer (last %v)", s.dst, s.moved)
	}
	s.setPeer(s.moved)
	s.queue, s.random = nil, 0
	return nil
}

func (s *search) key() portKey { return portKey{s.src.WithZone(""), s.zone, s.peer, s.rng} }

// full is the exhaustion error, with what held the ports in the last dump.
func (s *search) full(states []portState) error {
	h := Headroom{Source: s.src, Dest: s.dst, Range: s.rng}
	h.count(states)
	return &sharedFull{err: &os.SyscallError{Syscall: "connect", Err: unix.EAGAIN}, held: h}
}
