package safedial

import (
	"math/rand/v2"
	"time"
)

// The candidates of a shared dial: which port to try next, and when to ask
// the kernel again.

// next returns the next candidate port: a few random ones first, then those
// of a recent dump of this pair, then those of fresh dumps.
func (s *search) next() (uint16, error) {
	for {
		if err := s.ctx.Err(); err != nil {
			return 0, err
		}
		switch {
		case s.random > 0:
			s.random--
			if p, ok := s.randomPort(); ok {
				s.tried[p] = true
				return p, nil
			}
			s.random = 0
		case len(s.queue) > 0:
			p := s.queue[0]
			s.queue = s.queue[1:]
			s.tried[p] = true
			return p, nil
		case !s.cached:
			// A recent dump of this pair, if any, orders the next
			// candidates without a walk of the table; it refuses none:
			// when they fail, the dial dumps.
			s.cached = true
			if states := portCache.get(s.key()); states != nil {
				s.queue = s.ranking(s.offNow(states), true)
			}
		default:
			if err := s.dump(); err != nil {
				return 0, err
			}
		}
	}
}

// dump asks the kernel what holds the ports of the range and queues the
// candidates it leaves: none is exhaustion. When the candidates are all
// held by claims in flight (toward other peers, or toward this one and not
// connected yet), the dial waits for them, with a growing pause between
// dumps, under its context; a claim seen in flight for shareStale counts
// as held for good. A dial that may not wait (mayWait false: a pool with
// other sources to try) returns errClaimsInFlight instead of its first wait.
func (s *search) dump() error {
	if s.backoff > 0 {
		if s.pending && !s.mayWait {
			return errClaimsInFlight // the pool tries its other sources first
		}
		if err := s.wait(); err != nil {
			return err
		}
	}
	if s.rounds >= shareRounds && time.Since(s.contested) >= shareStale {
		return s.full(s.last)
	}
	now := time.Now()
	seen := s.busy // 4-tuple locks found held since the last dump
	s.busy = nil
	states, err := sharedPorts(s.ctx, s.src, s.zone, s.peer.Addr(), s.peer.Port(), s.rng, s.off, func(port uint16, cookie uint64) {
		seen = append(seen, inFlight{cookie, port})
	})
	if err != nil {
		return err
	}
	s.noteInFlight(states, seen, now)
	s.last = states
	portCache.put(s.key(), states)
	// The first dump skips the ports this dial tried already, unless they
	// are all that is left.
	if s.queue = s.ranking(states, s.rounds == 0 && s.backoff == 0); len(s.queue) == 0 {
		s.queue = s.ranking(states, false)
	}
	if len(s.queue) == 0 {
		return s.full(states)
	}
	s.pending = states[s.queue[0]-s.rng.Lo] == portMaybe
	switch {
	case s.pending:
		// Only claims in flight hold the candidates: wait before the
		// next dump if these fail too.
		s.grow()
		if shareWaiting != nil {
			shareWaiting()
		}
	case s.rounds+1 < shareRounds:
		s.rounds++
		s.backoff = 0
	default:
		// Free ports keep being taken between a dump and the bind (by
		// claims in flight, which release them when they connect
		// elsewhere or back out): go on, pausing between dumps, for
		// shareStale.
		if s.rounds++; s.rounds == shareRounds {
			s.contested = time.Now()
		}
		s.grow()
	}
	return nil
}

// grow lengthens the pause before the next dump: 50 µs, doubling, at most
// 5 ms.
func (s *search) grow() {
	s.backoff = claimPause(s.backoff)
}

// noteInFlight marks in states the ports that claims in flight hold (seen
// now), and those held by the same claim for shareStale (seen by this dial,
// or by an earlier one: claimsSeen) as held for good.
func (s *search) noteInFlight(states []portState, seen []inFlight, now time.Time) {
	first := make(map[inFlight]time.Time, len(seen))
	for _, k := range seen {
		at, ok := s.inFlight[k]
		if !ok {
			at = now
		}
		first[k] = at
	}
	claimsSeen.note(s.src, s.zone, s.rng, seen, now, first)
	for _, k := range seen {
		at := first[k]
		switch i := int(k.port - s.rng.Lo); {
		case states[i] >= portToward: // held anyway
		case now.Sub(at) >= shareStale:
			states[i] = portBound
		default:
			states[i] = max(states[i], portMaybe)
		}
	}
	s.inFlight = first
}

// offNow marks in states, a remembered dump, the ports the kernel does not
// hand out now: reserved or outside the namespace range since that dump (a
// bind that names a port ignores ip_local_reserved_ports).
func (s *search) offNow(states []portState) []portState {
	for i := range states {
		if s.off.Has(s.rng.Lo + uint16(i)) {
			states[i] = portOff
		}
	}
	return states
}

// wait pauses for s.backoff, or until the dial's context ends.
func (s *search) wait() error { return sleepCtx(s.ctx, s.backoff) }

// Test hooks: shareCandidate runs for each port a shared dial tries;
// shareWaiting each time a dial finds only claims in flight holding its
// candidates.
var (
	shareCandidate func(port uint16)
	shareWaiting   func()
)

// ranking returns the candidate ports of states: free ports first, then
// ports shared with other peers, then those of claims in flight; each from
// a random start.
func (s *search) ranking(states []portState, skipTried bool) []uint16 {
	var q []uint16
	start := rand.IntN(len(states))
	for _, want := range [...]portState{portFree, portShared, portMaybe} {
		for i := range states {
			j := (start + i) % len(states)
			if p := s.rng.Lo + uint16(j); states[j] == want && !(skipTried && s.tried[p]) {
				q = append(q, p)
			}
		}
	}
	return q
}

// randomPort returns a random port of the range the kernel hands out, not
// tried yet.
func (s *search) randomPort() (uint16, bool) {
	for range 4 * shareCandidates {
		p := s.rng.Lo + uint16(rand.IntN(s.rng.size()))
		if !s.tried[p] && !s.off.Has(p) {
			return p, true
		}
	}
	return 0, false
}
