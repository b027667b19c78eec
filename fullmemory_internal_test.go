package safedial

import (
	"net/netip"
	"slices"
	"testing"
)

// TestFullMemory: the memory keys on source, destination and protocol,
// orders by the time of the mark (a source found not local after every
// source found full), forgets a source once a connection through it got a
// port, and holds at most fullSlots entries, however many are marked.
func TestFullMemory(t *testing.T) {
	p := newPool([]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")})
	a, b, c := p.v4[0], p.v4[1], p.v4[2]
	dst := netip.MustParseAddrPort("127.0.1.1:53")
	m := &p.full
	marks := func(udp bool) []uint64 {
		out := make([]uint64, 3)
		m.marks(p.v4, dst, udp, out)
		return out
	}
	order := func(udp bool, start int) []int {
		mk := marks(udp)
		known := mk[0]|mk[1]|mk[2] != 0
		return plan(3, start, mk, known, nil)
	}
	if got := order(false, 1); !slices.Equal(got, []int{1, 2, 0}) {
		t.Errorf("nothing known: order %v, want in turn from 1", got)
	}
	m.mark(fullKey{b, dst, true}, false) // UDP full on b
	if got := marks(false); got[1] != 0 {
		t.Errorf("b is full for UDP only, but TCP's marks are %v", got)
	}
	m.mark(fullKey{c, dst, false}, true) // c not local
	m.mark(fullKey{a, dst, false}, false)
	m.mark(fullKey{b, dst, false}, false)
	if got := order(false, 2); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("all known: order %v, want a, b (full, marked in that order), then c (not local)", got)
	}
	m.mark(fullKey{a, dst, false}, false) // a again: now the newest
	if got := order(false, 0); !slices.Equal(got, []int{1, 0, 2}) {
		t.Errorf("a marked again: order %v, want b, a, c", got)
	}
	m.clear(fullKey{b, dst, false})
	if got := order(false, 2); !slices.Equal(got, []int{1, 0, 2}) {
		t.Errorf("b cleared: order %v, want b (not known) first, then a, c", got)
	}
	if got := order(true, 0); !slices.Equal(got, []int{0, 2, 1}) {
		t.Errorf("UDP: order %v, want a, c in turn, then b (full for UDP)", got)
	}
	for i := range 3 * fullSlots {
		m.mark(fullKey{a, netip.AddrPortFrom(dst.Addr(), uint16(i+1000)), false}, false)
	}
	if got := m.used.Load(); got != fullSlots {
		t.Errorf("%d entries after %d marks, want %d", got, 3*fullSlots, fullSlots)
	}
	for i := range 3 * fullSlots {
		ap := netip.AddrPortFrom(dst.Addr(), uint16(i+1000))
		out := make([]uint64, 3)
		if known := m.marks(p.v4, ap, false, out); known != (i >= 2*fullSlots) {
			t.Errorf("destination %v known %v: only the %d newest marks are kept", ap, known, fullSlots)
		}
	}
	var none *fullMemory // a dial from the routed source remembers nothing
	none.mark(fullKey{a, dst, false}, false)
	none.clear(fullKey{a, dst, false})
	if none.marks(p.v4, dst, false, make([]uint64, 3)) {
		t.Error("a nil memory knows something")
	}
}
