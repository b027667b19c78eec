package sysctl_test

import (
	"os"
	"testing"

	"github.com/safedial/safedial/internal/sysctl"
)

func TestParsePortList(t *testing.T) {
	for _, tc := range []struct {
		in     string
		lo, hi uint16
		count  int
		bad    bool
	}{
		{in: "", lo: 1, hi: 65535, count: 0},
		{in: "\n", lo: 1, hi: 65535, count: 0},
		{in: "8080\n", lo: 1, hi: 65535, count: 1},
		{in: "40000-40009,40050", lo: 40000, hi: 40099, count: 11},
		{in: "40000-40009,40050", lo: 40005, hi: 40049, count: 5},
		{in: "65535", lo: 65535, hi: 65535, count: 1},
		{in: "9-1", bad: true},
		{in: "x", bad: true},
		{in: "70000", bad: true},
	} {
		s, err := sysctl.ParsePortList(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParsePortList(%q): no error", tc.in)
			}
			continue
		}
		if err != nil {
			t.Fatalf("ParsePortList(%q): %v", tc.in, err)
		}
		if got := s.Count(tc.lo, tc.hi); got != tc.count {
			t.Errorf("ParsePortList(%q).Count(%d, %d) = %d, want %d", tc.in, tc.lo, tc.hi, got, tc.count)
		}
	}
}

// TestNilPortSet: a nil set holds nothing.
func TestNilPortSet(t *testing.T) {
	var s *sysctl.PortSet
	if s.Has(1) || s.Count(1, 65535) != 0 {
		t.Error("a nil PortSet is not empty")
	}
}

// TestInt reads a sysctl every Linux kernel has, cached and uncached, and
// one that no kernel has.
func TestInt(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/ipv4/ip_forward"); err != nil {
		t.Skipf("no /proc/sys/net/ipv4/ip_forward here: %v", err)
	}
	now, ok := sysctl.ReadInt("net/ipv4/ip_forward")
	if !ok || (now != 0 && now != 1) {
		t.Fatalf("ReadInt(net/ipv4/ip_forward) = %d, %v; want 0 or 1, true", now, ok)
	}
	if v, ok := sysctl.Int("net/ipv4/ip_forward"); !ok || v != now {
		t.Errorf("Int(net/ipv4/ip_forward) = %d, %v; want %d, true", v, ok, now)
	}
	if v, ok := sysctl.Int("net/ipv4/no_such_sysctl"); ok {
		t.Errorf("Int(net/ipv4/no_such_sysctl) = %d, true; want false", v)
	}
}
