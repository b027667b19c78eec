package safedial

import (
	"cmp"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The memory of full sources orders the sources of a pool's attempt; it never
// refuses one for long. A source the kernel found full toward a destination
// (or no longer local) is remembered until a later attempt through it
// succeeds, and for its lifetime at most as a verdict: after that the mark is
// a hint that only orders. A first mark lives fullTTL; each time the source
// is asked again and is still full, the next lifetime doubles, up to
// fullTTLMax, and a success forgets it. An attempt tries the sources not known
// full first, in turn (a mark past its lifetime counts as not known), and the known ones
// after them, marked longest ago first; when every source is marked, it asks
// the kernel about one of them only, the one marked longest ago (see
// poolDial.control). When that one connects, the other full marks toward
// the destination become hints at once: a drained burst is spread again
// without waiting. So a source that stays full is asked about once per
// fullTTLMax per destination, one that was full for a moment carries its
// share again fullTTL after, and a failing dial of a pool that is full
// everywhere costs one kernel attempt. TCP and UDP ports are separate
// spaces, so the protocol is part of the key.

// fullTTL is how long a first mark orders a source last: a source full for
// a moment carries its share again within fullTTL. fullTTLMax bounds the
// doubling lifetime of a source found full again and again: one that stays
// full costs one failing kernel attempt (a scan of the range: 26-48 µs at
// 100 ports, 1.6-2.3 ms at 4,000-8,000) per fullTTLMax per destination, not
// per fullTTL, which at 4,000 ports would add about 6% to the mean dial of
// a pool with one full source (docs/pools.md has the figures).
const (
	fullTTL    = 50 * time.Millisecond
	fullTTLMax = time.Second
)

// fullDests bounds the destinations a pool's memory holds; each holds a mark
// per source at most, so a pool of any size has room for the marks of
// fullDests destinations (at most 32 bytes a source each: 1 MiB for 32
// sources full toward every one). When a new destination needs room, the
// quarter marked longest ago give up their marks together, so that making
// room costs a sort per fullDests/4 new destinations, not a walk of the
// memory per new destination.
const fullDests = 1024

// notLocalMark is set in the mark of a source found not local, so that it
// orders after every source found full: a full source frees ports as its
// connections close, an address removed from the host rarely comes back.
const notLocalMark = 1 << 63

// fullMemory remembers (source, destination, protocol) triples found full.
// The fast path, with nothing remembered, is one atomic load. A nil
// fullMemory (a dial from the routed source) remembers nothing.
type fullMemory struct {
	used atomic.Int32 // destinations remembered
	mu   sync.Mutex
	seq  uint64 // the last mark given; marks grow with time
	dsts map[fullDest]*destMarks
}

type fullKey struct {
	src *source
	dst netip.AddrPort
	udp bool
}

type fullDest struct {
	dst netip.AddrPort
	udp bool
}

// destMarks are the marks toward one destination, one per source at most.
type destMarks struct {
	newest uint64 // seq of the newest mark
	marks  []fullMark
}

type fullMark struct {
	src  *source
	mark uint64 // seq, with notLocalMark for a source not local
	at   int64  // nanotime of the mark
	ttl  int64  // its lifetime: fullTTL, doubled per re-ask that found it full
}

func (e *fullMark) stale(now int64) bool { return now-e.at >= e.ttl }

// marks sets out[i] to the mark of srcs[i] toward dst (0 when not known
// full) and reports whether any source is known; srcs[i].fam must be i.
// out must hold len(srcs) zeros. A mark older than fullTTL is reported as 0
// unless every source is marked: then it is reported without notLocalMark,
// so that it orders first, and is the one source the attempt asks.
func (m *fullMemory) marks(srcs []*source, dst netip.AddrPort, udp bool, out []uint64) bool {
	if m == nil || m.used.Load() == 0 {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	dm := m.dsts[fullDest{dst, udp}]
	if dm == nil {
		return false
	}
	now, marked, stale := nanotime(), 0, 0
	for _, e := range dm.marks {
		if f := e.src.fam; f < len(srcs) && srcs[f] == e.src {
			out[f] = e.mark
			marked++
			if e.stale(now) {
				stale++
			}
		}
	}
	if stale == 0 {
		return marked > 0
	}
	every := marked == len(srcs)
	for _, e := range dm.marks {
		if f := e.src.fam; f < len(srcs) && srcs[f] == e.src && e.stale(now) {
			if every {
				out[f] &^= notLocalMark
			} else {
				out[f] = 0
				marked--
			}
		}
	}
	return marked > 0
}

// mark remembers that s is full (or not local) toward dst, as the newest
// mark; the destination marked longest ago gives up its marks when the
// memory holds fullDests destinations.
func (m *fullMemory) mark(k fullKey, notLocal bool) {
	if m == nil {
		return
	}
	now := nanotime()
	m.mu.Lock()
	defer m.mu.Unlock()
	key := fullDest{k.dst, k.udp}
	dm := m.dsts[key]
	if dm == nil {
		if m.dsts == nil {
			m.dsts = make(map[fullDest]*destMarks)
		}
		if len(m.dsts) >= fullDests {
			m.evict()
		}
		dm = &destMarks{}
		m.dsts[key] = dm
		m.used.Add(1)
	}
	m.seq++
	e := fullMark{src: k.src, mark: m.seq, at: now, ttl: int64(fullTTL)}
	if notLocal {
		e.mark |= notLocalMark
	}
	dm.newest = m.seq
	for i := range dm.marks {
		if old := &dm.marks[i]; old.src == k.src {
			e.ttl = old.ttl
			if old.stale(now) { // asked again, still full
				e.ttl = min(2*old.ttl, int64(fullTTLMax))
			}
			*old = e
			return
		}
	}
	dm.marks = append(dm.marks, e)
}

// evict forgets the quarter of the destinations marked longest ago.
func (m *fullMemory) evict() {
	type aged struct {
		k      fullDest
		newest uint64
	}
	all := make([]aged, 0, len(m.dsts))
	for k, dm := range m.dsts {
		all = append(all, aged{k, dm.newest})
	}
	slices.SortFunc(all, func(a, b aged) int { return cmp.Compare(a.newest, b.newest) })
	for _, a := range all[:max(len(all)/4, 1)] {
		delete(m.dsts, a.k)
	}
	m.used.Store(int32(len(m.dsts)))
}

// clear forgets k: an attempt through its source found a port. When the
// source was known full (freed), ports toward the destination are being
// freed, as when a burst drains: the destination's other full marks become
// hints at once (as if past their lifetime), so that the next dials ask those
// sources in turn rather than only the one that connected. Each that is
// still full costs one kernel attempt, and is marked again.
func (m *fullMemory) clear(k fullKey, freed bool) {
	if m == nil || m.used.Load() == 0 {
		return
	}
	now := nanotime()
	m.mu.Lock()
	defer m.mu.Unlock()
	key := fullDest{k.dst, k.udp}
	dm := m.dsts[key]
	if dm == nil {
		return
	}
	for i, e := range dm.marks {
		if e.src == k.src {
			dm.marks = append(dm.marks[:i], dm.marks[i+1:]...)
			break
		}
	}
	for i := range dm.marks {
		if e := &dm.marks[i]; freed && e.mark&notLocalMark == 0 {
			e.at = min(e.at, now-e.ttl)
		}
	}
	if len(dm.marks) == 0 {
		delete(m.dsts, key)
		m.used.Add(-1)
	}
}

// plan appends to order the indices of the n sources of an attempt, starting
// from start in turn: those not known full (marks[i] == 0) first, then, when
// some are known, those, marked longest ago first.
func plan(n, start int, marks []uint64, known bool, order []int) []int {
	for k := range n {
		if i := (start + k) % n; marks[i] == 0 {
			order = append(order, i)
		}
	}
	if !known {
		return order
	}
	rest := len(order)
	for k := range n {
		if i := (start + k) % n; marks[i] != 0 {
			order = append(order, i)
		}
	}
	// An insertion sort: a closure for slices.SortFunc would move the
	// caller's buffers to the heap.
	for j := rest + 1; j < len(order); j++ {
		for k := j; k > rest && marks[order[k]] < marks[order[k-1]]; k-- {
			order[k], order[k-1] = order[k-1], order[k]
		}
	}
	return order
}
