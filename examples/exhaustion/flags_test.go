package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// defaults is the configuration of the program's default flags.
var defaults = config{Mode: "capacity", Ports: 100, Hosts: 3, DestPorts: 2, Sources: 4, Samples: 1000, LatencyPort: 4000, PoolPorts: 4000, Pairs: 2000}

func TestCheck(t *testing.T) {
	if err := defaults.check(nil); err != nil {
		t.Errorf("defaults: %v", err)
	}
	for _, tc := range []struct {
		change func(*config)
		args   []string
		want   string
	}{
		{func(c *config) { c.Hosts = 300 }, nil, "-hosts 300: must be 1 to 254"},
		{func(c *config) { c.Hosts = 0 }, nil, "-hosts 0"},
		{func(c *config) { c.Sources = 255 }, nil, "-sources 255"},
		{func(c *config) { c.Ports = 30000 }, nil, "-ports 30000: must be 2 to 25536"},
		{func(c *config) { c.DestPorts = 40000 }, nil, "-dports 40000"},
		{func(c *config) { c.Samples = 0 }, nil, "-samples 0"},
		{func(c *config) { c.LatencyPort = 10 }, nil, "-latency-ports 10"},
		{func(c *config) { c.Sockets = -1 }, nil, "-sockets -1"},
		{func(*config) {}, []string{"docs/latency.svg"}, `unexpected argument "docs/latency.svg"`},
	} {
		c := defaults
		tc.change(&c)
		if err := c.check(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check = %v, want an error with %q", err, tc.want)
		}
	}
}

func TestHeaderGrammar(t *testing.T) {
	var b strings.Builder
	printResults(&b, config{Mode: "capacity", Ports: 10, Hosts: 1, DestPorts: 1}, nil)
	if got, want := strings.SplitN(b.String(), "\n", 2)[0], "capacity: range 10 ports (40000-40009), 1 destination address x 1 port"; got != want {
		t.Errorf("header %q, want %q", got, want)
	}
	b.Reset()
	printResults(&b, config{Mode: "capacity", Ports: 100, Hosts: 3, DestPorts: 2}, nil)
	if got, want := strings.SplitN(b.String(), "\n", 2)[0], "capacity: range 100 ports (40000-40099), 3 destination addresses x 2 ports"; got != want {
		t.Errorf("header %q, want %q", got, want)
	}
}

// TestSVGFlag: -svg alone never names a file of the repository; -svg=FILE
// names FILE.
func TestSVGFlag(t *testing.T) {
	var f svgFlag
	if err := f.Set("true"); err != nil || !f.set || f.path != "" {
		t.Fatalf("-svg: %+v, %v", f, err)
	}
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	p, err := f.file()
	if err != nil || filepath.Dir(p) != dir {
		t.Errorf("-svg writes to %q (%v), want a new file in TMPDIR", p, err)
	}
	f.Set("out.svg")
	if p, _ := f.file(); p != "out.svg" {
		t.Errorf("-svg=out.svg writes to %q", p)
	}
}
