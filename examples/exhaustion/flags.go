package main

import (
	"fmt"
	"os"
)

// check refuses, naming the flag, a value the experiment cannot run with,
// rather than failing later inside a namespace (-hosts 300 used to end in
// "lookup 127.0.0.256: no such host"). args are the arguments after the
// flags: there must be none.
func (c config) check(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q (flags only; a chart's file is given as -svg=FILE)", args[0])
	}
	maxRange := 65535 - portLo + 1
	for _, f := range []struct {
		name      string
		v, lo, hi int
		what      string
	}{
		{"ports", c.Ports, 2, maxRange, "the range starts at 40000"},
		{"hosts", c.Hosts, 1, 254, "destinations are 127.0.0.1 to 127.0.0.254"},
		{"dports", c.DestPorts, 1, portLo - 8080, "listening ports start at 8080, below the range"},
		{"sources", c.Sources, 1, 254, "sources are 127.0.1.1 to 127.0.1.254"},
		{"samples", c.Samples, 1, 1_000_000, ""},
		{"latency-ports", c.LatencyPort, 100, maxRange, "the range starts at 40000 and is filled to 99%"},
		{"pool-ports", c.PoolPorts, 2, maxRange, "the range starts at 40000"},
		{"pairs", c.Pairs, 1, 10_000_000, ""},
		{"sockets", c.Sockets, 0, 4 * (probeHi - probeLo + 1), "4 destinations, range 30000-60999"},
	} {
		if f.v < f.lo || f.v > f.hi {
			why := ""
			if f.what != "" {
				why = ": " + f.what
			}
			return fmt.Errorf("-%s %d: must be %d to %d%s", f.name, f.v, f.lo, f.hi, why)
		}
	}
	return nil
}

// count writes n with the singular or plural noun.
func count(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// svgFlag is -svg, which writes the latency chart to a new file in the
// temporary directory, or -svg=FILE. It never rewrites a file by default.
type svgFlag struct {
	set  bool
	path string
}

func (f *svgFlag) String() string   { return f.path }
func (f *svgFlag) IsBoolFlag() bool { return true }

func (f *svgFlag) Set(s string) error {
	switch s {
	case "true":
		f.set, f.path = true, ""
	case "false":
		f.set, f.path = false, ""
	default:
		f.set, f.path = true, s
	}
	return nil
}

// file returns the chart's path: FILE, or a new file in the temporary
// directory.
func (f *svgFlag) file() (string, error) {
	if f.path != "" {
		return f.path, nil
	}
	tmp, err := os.CreateTemp("", "safedial-latency-*.svg")
	if err != nil {
		return "", err
	}
	return tmp.Name(), tmp.Close()
}
