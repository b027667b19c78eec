package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSummary(t *testing.T) {
	for _, tc := range []struct {
		vs          []float64
		med, lo, hi float64
	}{
		{[]float64{3, 1, 2}, 2, 1, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4},
		{[]float64{7}, 7, 7, 7},
	} {
		med, lo, hi := summary(tc.vs)
		if med != tc.med || lo != tc.lo || hi != tc.hi {
			t.Errorf("summary(%v) = %v, %v, %v; want %v, %v, %v", tc.vs, med, lo, hi, tc.med, tc.lo, tc.hi)
		}
	}
}

func TestNum(t *testing.T) {
	for v, want := range map[float64]string{1048.524: "1049", 70.221: "70.22", 1.00449: "1.004", 0.96681: "0.9668", 0.0089: "0.008900", 0: "0.000"} {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
}

const (
	dialOut  = "goos: linux\nBenchmarkDial/netdialer-2         \t   10000\t    98960 ns/op\t    1234 B/op\t      21 allocs/op\nPASS\n"
	ratioOut = "BenchmarkDialRatio/bind-2           \t    1000\t    377015 ns/op\t         1.052 safedial-bind/netdialer-bind\nPASS\n"
)

func TestBenchValues(t *testing.T) {
	var s series
	if err := benchValues([]byte(dialOut), false, &s); err != nil {
		t.Fatal(err)
	}
	if err := benchValues([]byte(ratioOut), true, &s); err != nil {
		t.Fatal(err)
	}
	want := map[string][]float64{
		"BenchmarkDial/netdialer ns/op":                        {98960},
		"BenchmarkDial/netdialer allocs/op":                    {21},
		"BenchmarkDialRatio/bind safedial-bind/netdialer-bind": {1.052},
	}
	if diff := cmp.Diff(want, s.runs); diff != "" {
		t.Errorf("values (-want +got):\n%s", diff)
	}
	var b strings.Builder
	s.print(&b)
	if !strings.Contains(b.String(), "98960   98960  98960  1\n") {
		t.Errorf("table:\n%s", b.String())
	}
}
