package safedial

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestFullMemory: the memory keys on source, destination and protocol,
// orders by the time of the mark (a source found not local after every
// source found full), forgets a source once a connection through it got a
// port, and holds the marks of at most fullDests destinations.
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
	m.clear(fullKey{b, dst, false}, false)
	if got := order(false, 2); !slices.Equal(got, []int{1, 0, 2}) {
		t.Errorf("b cleared: order %v, want b (not known) first, then a, c", got)
	}
	if got := order(true, 0); !slices.Equal(got, []int{0, 2, 1}) {
		t.Errorf("UDP: order %v, want a, c in turn, then b (full for UDP)", got)
	}
	// Past fullDests destinations, the quarter marked longest ago make
	// room: the memory then holds between 3/4 fullDests and fullDests,
	// always the ones marked last.
	for i := range 3 * fullDests {
		m.mark(fullKey{a, netip.AddrPortFrom(dst.Addr(), uint16(i+1000)), false}, false)
		if got := m.used.Load(); got > fullDests || got != int32(len(m.dsts)) {
			t.Fatalf("%d destinations (%d in the map) after marks toward %d, want at most %d", got, len(m.dsts), i+1, fullDests)
		}
	}
	kept := int(m.used.Load())
	if kept < fullDests*3/4 {
		t.Errorf("%d destinations kept, want at least %d", kept, fullDests*3/4)
	}
	for i := range 3 * fullDests {
		ap := netip.AddrPortFrom(dst.Addr(), uint16(i+1000))
		out := make([]uint64, 3)
		if known := m.marks(p.v4, ap, false, out); known != (i >= 3*fullDests-kept) {
			t.Errorf("destination %v known %v: only the %d destinations marked last are kept", ap, known, kept)
		}
	}
	var none *fullMemory // a dial from the routed source remembers nothing
	none.mark(fullKey{a, dst, false}, false)
	none.clear(fullKey{a, dst, false}, false)
	if none.marks(p.v4, dst, false, make([]uint64, 3)) {
		t.Error("a nil memory knows something")
	}
}

// TestFullMemoryExpires: a mark older than fullTTL no longer puts its source
// last while another source is unmarked (it is asked in turn, as one not
// known full); when every source is marked, the one marked longest ago is
// asked first, a not-local mark included once it is stale.
func TestFullMemoryExpires(t *testing.T) {
	advance, restore := StopClock()
	defer restore()
	p := newPool([]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")})
	a, b, c := p.v4[0], p.v4[1], p.v4[2]
	dst := netip.MustParseAddrPort("127.0.1.1:53")
	m := &p.full
	order := func(start int) []int {
		mk := make([]uint64, 3)
		known := m.marks(p.v4, dst, false, mk)
		return plan(3, start, mk, known, nil)
	}
	m.mark(fullKey{a, dst, false}, false)
	advance(int64(fullTTL) - 1)
	if got := order(0); !slices.Equal(got, []int{1, 2, 0}) {
		t.Errorf("a marked just under fullTTL ago: order %v, want b, c, then a", got)
	}
	advance(1)
	if got := order(0); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("a marked fullTTL ago: order %v, want a in turn (0, 1, 2)", got)
	}
	m.mark(fullKey{c, dst, false}, true) // c not local, now
	m.mark(fullKey{b, dst, false}, false)
	if got := order(1); !slices.Equal(got, []int{0, 1, 2}) {
		t.Errorf("every source marked, a's stale: order %v, want a (longest ago), b, then c (not local)", got)
	}
	advance(int64(fullTTL))
	m.mark(fullKey{a, dst, false}, false)
	if got := order(0); !slices.Equal(got, []int{2, 1, 0}) {
		t.Errorf("every source marked, c's not-local mark and b's stale: order %v, want c, b (marked in that order), then a", got)
	}
}

// TestFullMemoryManyDestinations: a pool of 32 sources marked full toward 3
// destinations, or 8 toward 9, keeps every mark (v0.3.0's 64 slots kept 64
// of 96 or 72, so every failing dial asked the kernel about every source).
func TestFullMemoryManyDestinations(t *testing.T) {
	for _, size := range []struct{ srcs, dsts int }{{32, 3}, {8, 9}, {4, fullDests}} {
		addrs := make([]netip.Addr, size.srcs)
		for i := range addrs {
			addrs[i] = netip.AddrFrom4([4]byte{127, 0, 0, byte(10 + i)})
		}
		p := newPool(addrs)
		for round := range 3 {
			for d := range size.dsts {
				dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(1 + d/250), byte(1 + d%250)}), 80)
				for _, s := range p.v4 {
					if round == 0 {
						p.full.mark(fullKey{s, dst, false}, false)
					}
				}
				out := make([]uint64, size.srcs)
				p.full.marks(p.v4, dst, false, out)
				if n := len(out) - countZeros(out); n != size.srcs {
					t.Errorf("%d x %d, round %d, destination %v: %d of %d sources marked, want all", size.srcs, size.dsts, round, dst, n, size.srcs)
				}
			}
		}
	}
}

func countZeros(s []uint64) (n int) {
	for _, v := range s {
		if v == 0 {
			n++
		}
	}
	return n
}

// TestFullMemoryBackoff: a source asked again past its mark's lifetime and
// still full is left alone twice as long, up to fullTTLMax; a success
// forgets the lifetime with the mark.
func TestFullMemoryBackoff(t *testing.T) {
	advance, restore := StopClock()
	defer restore()
	p := newPool([]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")})
	a := p.v4[0]
	dst := netip.MustParseAddrPort("127.0.1.1:53")
	m := &p.full
	known := func() bool { return m.marks(p.v4, dst, false, make([]uint64, 2)) }
	m.mark(fullKey{a, dst, false}, false)
	var lifetimes []time.Duration
	for range 7 {
		var lived time.Duration
		for known() {
			advance(int64(fullTTL / 10))
			lived += fullTTL / 10
		}
		lifetimes = append(lifetimes, lived)
		m.mark(fullKey{a, dst, false}, false) // asked again: still full
	}
	want := []time.Duration{fullTTL, 2 * fullTTL, 4 * fullTTL, 8 * fullTTL, 16 * fullTTL, fullTTLMax, fullTTLMax}
	if !slices.Equal(lifetimes, want) {
		t.Errorf("lifetimes %v, want %v", lifetimes, want)
	}
	m.clear(fullKey{a, dst, false}, false)
	m.mark(fullKey{a, dst, false}, false)
	advance(int64(fullTTL))
	if known() {
		t.Errorf("a mark made after a success lives longer than fullTTL")
	}
}
