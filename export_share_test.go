//go:build linux

package safedial

import (
	"context"
	"errors"
	"net/netip"
)

// HoldSharePair takes the lock of shared dials from src toward peer, as a
// dial of this process does while it claims a port; the returned func lets
// it go.
func HoldSharePair(src netip.Addr, peer netip.AddrPort) (release func()) {
	l := pairLocks.acquire(sharePair{src: src, peer: peer})
	if err := l.lock(context.Background()); err != nil {
		panic(err)
	}
	return func() {
		l.unlock()
		pairLocks.release(l)
	}
}

// SharePairs is how many pair locks the package holds (none when no
// shared dial is under way).
func SharePairs() int {
	pairLocks.mu.Lock()
	defer pairLocks.mu.Unlock()
	return len(pairLocks.m)
}

// BeforeSharedConnect makes f run while each claimed socket is bound but not
// yet connected; the returned func removes it.
func BeforeSharedConnect(f func(fd int, port uint16)) (restore func()) {
	shareBeforeConnect = f
	return func() { shareBeforeConnect = nil }
}

// UnreadablePortRange makes shared dials find net.ipv4.ip_local_port_range
// unreadable; the returned func restores the real one.
func UnreadablePortRange() (restore func()) {
	orig := readPortRange
	readPortRange = func() (PortRange, error) { return PortRange{}, errors.New("permission denied (test)") }
	shareRanges.Store(nil)
	return func() {
		readPortRange = orig
		shareRanges.Store(nil)
	}
}

// SharedCandidates makes f run for each port a shared dial tries; the
// returned func removes it.
func SharedCandidates(f func(port uint16)) (restore func()) {
	shareCandidate = f
	return func() { shareCandidate = nil }
}

// ShareWaiting makes f run each time a shared dial finds only claims in
// flight holding its candidates; the returned func removes it.
func ShareWaiting(f func()) (restore func()) {
	shareWaiting = f
	return func() { shareWaiting = nil }
}

// TupleLocked reports whether the lock of shared claims of the 4-tuple
// (src on interface zone, port, peer) is held in this network namespace.
func TupleLocked(src netip.Addr, zone uint32, port uint16, peer netip.AddrPort) bool {
	unlock, state, err := lockTuple(src, zone, port, peer)
	if err != nil {
		panic(err)
	}
	if state == tupleLocked {
		unlock()
	}
	return state != tupleLocked
}

// TupleName is the abstract AF_UNIX name (with a leading '@' for the NUL)
// of the lock of shared claims of the 4-tuple.
func TupleName(src netip.Addr, zone uint32, port uint16, peer netip.AddrPort) string {
	return tupleName(src, zone, port, peer)
}
