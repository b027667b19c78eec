package sysctl_test

import (
	"testing"

	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"github.com/safedial/safedial/internal/sysctl"
)

// TestPortRangeNow reads the range of a private namespace set to
// 40000-40099, and its reserved ports (none).
func TestPortRangeNow(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		lo, hi, err := sysctl.PortRangeNow()
		if err != nil || lo != 40000 || hi != 40099 {
			t.Errorf("PortRangeNow() = %d, %d, %v; want 40000, 40099, nil", lo, hi, err)
		}
		text, err := sysctl.ReservedText()
		if err != nil {
			t.Fatal(err)
		}
		s, err := sysctl.ParsePortList(text)
		if err != nil || s.Count(1, 65535) != 0 {
			t.Errorf("reserved ports %q (%v): want none", text, err)
		}
	})
}
