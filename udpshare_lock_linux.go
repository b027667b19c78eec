package safedial

import (
	"context"
	"net/netip"
	"sync"
)

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
