package safedial

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// The memory of full sources orders the sources of a pool's attempt; it never
// refuses one. A source the kernel found full toward a destination (or no
// longer local) is remembered, in a bounded table, until a later attempt
// through it succeeds or the table needs its slot. An attempt tries the
// sources not known full first, in turn, and the known ones after them,
// marked longest ago first; when every source is known full, it asks the
// kernel about one of them only (see poolDial.control). TCP and UDP ports
// are separate spaces, so the protocol is part of the key.

// fullSlots bounds the memory of a pool, however many destinations it dials.
const fullSlots = 64

// notLocalMark is set in the mark of a source found not local, so that it
// orders after every source found full: a full source frees ports as its
// connections close, an address removed from the host rarely comes back.
const notLocalMark = 1 << 63

// fullMemory remembers (source, destination, protocol) triples found full.
// The fast path, with nothing remembered, is one atomic load. A nil
// fullMemory (a dial from the routed source) remembers nothing.
type fullMemory struct {
	used  atomic.Int32 // slots in use
	mu    sync.Mutex
	seq   uint64                // the last mark given; marks grow with time
	slots *[fullSlots]fullEntry // made on the first mark
}

type fullKey struct {
	src *source
	dst netip.AddrPort
	udp bool
}

type fullEntry struct {
	fullKey
	mark uint64 // 0: free slot; else seq, with notLocalMark for a source not local
}

// marks sets out[i] to the mark of srcs[i] toward dst (0 when not known
// full) and reports whether any source is known; srcs[i].fam must be i.
// out must hold len(srcs) zeros.
func (m *fullMemory) marks(srcs []*source, dst netip.AddrPort, udp bool, out []uint64) bool {
	if m == nil || m.used.Load() == 0 {
		return false
	}
	known := false
	m.mu.Lock()
	if m.slots != nil {
		for _, e := range m.slots {
			if e.mark != 0 && e.dst == dst && e.udp == udp && e.src.fam < len(srcs) && srcs[e.src.fam] == e.src {
				out[e.src.fam], known = e.mark, true
			}
		}
	}
	m.mu.Unlock()
	return known
}

// mark remembers that s is full (or not local) toward dst, as the newest
// mark; the oldest entry gives its slot up when the table is full.
func (m *fullMemory) mark(k fullKey, notLocal bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	if m.slots == nil {
		m.slots = new([fullSlots]fullEntry)
	}
	victim := 0
	for i, e := range m.slots {
		if e.mark != 0 && e.fullKey == k {
			victim = i
			break
		}
		if e.mark&^notLocalMark < m.slots[victim].mark&^notLocalMark {
			victim = i
		}
	}
	if m.slots[victim].mark == 0 {
		m.used.Add(1)
	}
	m.seq++
	mark := m.seq
	if notLocal {
		mark |= notLocalMark
	}
	m.slots[victim] = fullEntry{fullKey: k, mark: mark}
	m.mu.Unlock()
}

// clear forgets k: an attempt through its source found a port.
func (m *fullMemory) clear(k fullKey) {
	if m == nil || m.used.Load() == 0 {
		return
	}
	m.mu.Lock()
	if m.slots != nil {
		for i, e := range m.slots {
			if e.mark != 0 && e.fullKey == k {
				m.slots[i] = fullEntry{}
				m.used.Add(-1)
				break
			}
		}
	}
	m.mu.Unlock()
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
