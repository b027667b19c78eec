package safedial

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// The memory of full sources orders the sources of a pool's attempt; it never
// refuses one for long. A source the kernel found full toward a destination
// (or no longer local) is remembered until a later attempt through it
// succeeds, and for fullTTL at most as a verdict: after that the mark is a
// hint that only orders. An attempt tries the sources not known full first,
// in turn (a mark older than fullTTL counts as not known), and the known ones
// after them, marked longest ago first; when every source is marked, it asks
// the kernel about one of them only, the one marked longest ago (see
// poolDial.control). So a source that stays full is asked once per fullTTL
// per destination, and a failing dial of a pool that is full everywhere
// costs one kernel attempt. TCP and UDP ports are separate spaces, so the
// protocol is part of the key.

// fullTTL is how long a mark orders a source last. A source that has room
// again carries its share within fullTTL; one that stays full costs one
// failing kernel attempt (a scan of the range: 26-48 µs at 100 ports, 2.3 ms
// at 8,000) per fullTTL per destination, against thousands of dials in that
// time at loopback speeds (docs/pools.md has the figures).
const fullTTL = 50 * time.Millisecond

// fullDests bounds the destinations a pool's memory holds; each holds a mark
// per source at most, so a pool of any size has room for the marks of
// fullDests destinations. When a new destination needs room, the one marked
// longest ago gives up its marks together.
const fullDests = 64

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
	newest int64 // nanotime of the newest mark
	marks  []fullMark
}

type fullMark struct {
	src  *source
	mark uint64 // seq, with notLocalMark for a source not local
	at   int64  // nanotime of the mark
}

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
			if now-e.at >= int64(fullTTL) {
				stale++
			}
		}
	}
	if stale == 0 {
		return marked > 0
	}
	every := marked == len(srcs)
	for _, e := range dm.marks {
		if f := e.src.fam; f < len(srcs) && srcs[f] == e.src && now-e.at >= int64(fullTTL) {
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
	e := fullMark{src: k.src, mark: m.seq, at: now}
	if notLocal {
		e.mark |= notLocalMark
	}
	dm.newest = now
	for i := range dm.marks {
		if dm.marks[i].src == k.src {
			dm.marks[i] = e
			return
		}
	}
	dm.marks = append(dm.marks, e)
}

// evict forgets the destination marked longest ago.
func (m *fullMemory) evict() {
	var (
		oldest fullDest
		at     int64
		found  bool
	)
	for k, dm := range m.dsts {
		if !found || dm.newest < at {
			oldest, at, found = k, dm.newest, true
		}
	}
	if found {
		delete(m.dsts, oldest)
		m.used.Add(-1)
	}
}

// clear forgets k: an attempt through its source found a port.
func (m *fullMemory) clear(k fullKey) {
	if m == nil || m.used.Load() == 0 {
		return
	}
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
