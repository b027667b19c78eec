//go:build linux

package main

import (
	"os"
	"strings"
	"testing"
)

// TestREADMETables: the capacity, churn and UDP capacity tables the README
// prints are, to the character, what the commands printed with them print
// (their counts are exact, so every run prints the same).
func TestREADMETables(t *testing.T) {
	md, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		command string
		c       config
	}{
		{"go run ./examples/exhaustion", defaults},
		{"go run ./examples/exhaustion -mode churn", func() config { c := defaults; c.Mode = "churn"; return c }()},
		// The udp mode's cost part is timed, not compared: measure little.
		{"go run ./examples/exhaustion -mode udp -ports 64", func() config {
			c := defaults
			c.Mode, c.Ports, c.LatencyPort, c.Samples = "udp", 64, 100, 10
			return c
		}()},
	} {
		var out strings.Builder
		if err := run(tc.c, false, "", &out); err != nil {
			unavailable(t, err)
		}
		table, _, _ := strings.Cut(out.String(), "\nudp dial cost vs fill")
		if !strings.Contains(string(md), "```\n"+tc.command+"\n```") {
			t.Errorf("README.md does not show the command %q", tc.command)
		}
		if !strings.Contains(string(md), "```\n"+strings.TrimRight(table, "\n")+"\n```") {
			t.Errorf("README.md does not show the table of %q as it prints:\n%s", tc.command, table)
		}
	}
}
