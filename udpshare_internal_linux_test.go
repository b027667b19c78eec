//go:build linux

package safedial

import (
	"net/netip"
	"os"
	"strings"
	"testing"
)

// TestTupleName: the lock names of two 4-tuples differ when any part does
// (the interface of a link-local source included), an IPv4 source names
// the same lock as its IPv4-mapped form, and every name fits an abstract
// AF_UNIX address (107 bytes after the leading NUL).
func TestTupleName(t *testing.T) {
	src, peer := netip.MustParseAddr("fe80::1"), netip.MustParseAddrPort("[fe80::2]:53")
	base := tupleName(src, 2, 40000, peer)
	for _, other := range []string{
		tupleName(src, 3, 40000, peer),
		tupleName(src, 2, 40001, peer),
		tupleName(netip.MustParseAddr("fe80::3"), 2, 40000, peer),
		tupleName(src, 2, 40000, netip.MustParseAddrPort("[fe80::2]:54")),
		tupleName(src, 2, 40000, netip.MustParseAddrPort("[fe80::4]:53")),
	} {
		if other == base {
			t.Errorf("two 4-tuples share the lock name %q", base)
		}
	}
	v4 := tupleName(netip.MustParseAddr("127.0.0.1"), 0, 40000, netip.MustParseAddrPort("127.0.0.2:9000"))
	mapped := tupleName(netip.MustParseAddr("::ffff:127.0.0.1"), 0, 40000, netip.MustParseAddrPort("[::ffff:127.0.0.2]:9000"))
	if v4 != mapped {
		t.Errorf("IPv4 %q and IPv4-mapped %q name different locks", v4, mapped)
	}
	if !strings.HasPrefix(base, "@") || len(base) > 108 {
		t.Errorf("name %q (%d bytes) is not an abstract name that fits sun_path", base, len(base))
	}
}

// BenchmarkTupleLock is what the lock of a claim costs: an AF_UNIX socket,
// a bind of its abstract name, a listen, a close.
func BenchmarkTupleLock(b *testing.B) {
	// A peer port of this process's own, in case another runs it at once
	// in the same namespace.
	src, peer := netip.MustParseAddr("127.0.0.1"), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), uint16(os.Getpid()))
	b.ReportAllocs()
	for b.Loop() {
		unlock, state, err := lockTuple(src, 0, 40000, peer)
		if err != nil || state != tupleLocked {
			b.Fatal(state, err)
		}
		unlock()
	}
}

// BenchmarkShareRange is what reading the port range and the reserved
// ports at every shared dial costs (the settings unchanged).
func BenchmarkShareRange(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := shareRange(PortRange{}); err != nil {
			b.Fatal(err)
		}
	}
}
