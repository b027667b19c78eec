//go:build linux

package safedial

import "testing"

func TestParsePortList(t *testing.T) {
	for _, tc := range []struct {
		in    string
		r     PortRange
		count int
		bad   bool
	}{
		{in: "", r: PortRange{1, 65535}, count: 0},
		{in: "\n", r: PortRange{1, 65535}, count: 0},
		{in: "8080\n", r: PortRange{1, 65535}, count: 1},
		{in: "40000-40009,40050", r: PortRange{40000, 40099}, count: 11},
		{in: "40000-40009,40050", r: PortRange{40005, 40049}, count: 5},
		{in: "65535", r: PortRange{65535, 65535}, count: 1},
		{in: "9-1", bad: true},
		{in: "x", bad: true},
		{in: "70000", bad: true},
	} {
		s, err := parsePortList(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("parsePortList(%q): no error", tc.in)
			}
			continue
		}
		if err != nil {
			t.Fatalf("parsePortList(%q): %v", tc.in, err)
		}
		if got := s.count(tc.r); got != tc.count {
			t.Errorf("parsePortList(%q).count(%v) = %d, want %d", tc.in, tc.r, got, tc.count)
		}
	}
}
