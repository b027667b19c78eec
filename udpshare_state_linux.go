package safedial

// Process-wide state of shared UDP dials: the locks of the (source, peer)
// pairs being dialed, and the last dumps of their ports.

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// sharePair names the lock of shared dials from src toward peer.
type sharePair struct {
	src  netip.Addr
	zone uint32 // src's interface index, for a link-local source
	peer netip.AddrPort
}

// pairLock serialises this process's claims toward one (source, peer) pair,
// so that two of them do not race for the same last ports; waiting honours
// the dial's context.
type pairLock struct {
	key  sharePair
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
		l = &pairLock{key: k, ch: make(chan struct{}, 1)}
		t.m[k] = l
	}
	l.refs++
	return l
}

func (t *pairTable) release(l *pairLock) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(t.m, l.key)
	}
}

// portCache keeps the last dumps of shared dials (8 pairs, most recent
// first) for a second. It only orders candidates: a port it shows taken is
// still tried when a fresh dump shows it free.
var portCache portDumps

// portKey names a dump of the ports of rng from src toward peer.
type portKey struct {
	src  netip.Addr
	zone uint32
	peer netip.AddrPort
	rng  PortRange
}

type portDumps struct {
	mu      sync.Mutex
	entries [8]struct {
		key    portKey
		at     time.Time
		states []portState
	}
}

// get returns a copy of a dump for k made less than a second ago, or nil.
func (c *portDumps) get(k portKey) []portState {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if e.key == k && e.states != nil && time.Since(e.at) < time.Second {
			return slices.Clone(e.states)
		}
	}
	return nil
}

func (c *portDumps) put(k portKey, states []portState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	copy(c.entries[1:], c.entries[:len(c.entries)-1])
	c.entries[0].key, c.entries[0].at, c.entries[0].states = k, time.Now(), slices.Clone(states)
}

// taken records a port just claimed toward k's peer.
func (c *portDumps) taken(k portKey, port uint16) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if e := &c.entries[i]; e.key == k && e.states != nil {
			e.states[port-k.rng.Lo] = portToward
		}
	}
}

// claimsSeen remembers when a dial of this process first saw each socket
// that looked like a claim in flight (a ShareUDPPorts socket bound and not
// connected, by its cookie, which the kernel never gives twice until a
// reboot), so that a claim stuck for shareStale (a stopped process) costs
// the first dial that waits for it that long, not every dial after it. An
// entry goes as soon as a dump of its source and port no longer shows the
// socket unconnected; at most 4,096 are kept (then all are dropped: a dial
// then waits anew, the safe side).
var claimsSeen = seenClaims{m: map[uint64]seenClaim{}}

type seenClaim struct {
	at   time.Time
	src  netip.Addr
	zone uint32
	port uint16
}

type seenClaims struct {
	mu sync.Mutex
	m  map[uint64]seenClaim
}

// note records the sockets seen in flight (cookie not 0) by a dump of rng
// from src on interface zone, made at now, and drops those of that source
// and range it did not show; first gets, for each seen socket, when a dial
// of this process first saw it.
func (c *seenClaims) note(src netip.Addr, zone uint32, rng PortRange, seen []inFlight, now time.Time, first map[inFlight]time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	shown := make(map[uint64]bool, len(seen))
	for _, k := range seen {
		if k.cookie == 0 {
			continue // a 4-tuple's lock: no identity beyond one dial
		}
		shown[k.cookie] = true
		e, ok := c.m[k.cookie]
		if !ok || e.src != src || e.zone != zone || e.port != k.port {
			e = seenClaim{at: now, src: src, zone: zone, port: k.port}
		}
		if at, ok := first[k]; ok && at.Before(e.at) {
			e.at = at
		}
		first[k] = e.at
		c.m[k.cookie] = e
	}
	for cookie, e := range c.m {
		if !shown[cookie] && e.src == src && e.zone == zone && e.port >= rng.Lo && e.port <= rng.Hi {
			delete(c.m, cookie) // connected or closed since
		}
	}
	if len(c.m) > 4096 {
		clear(c.m)
	}
}
