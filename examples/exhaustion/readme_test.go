//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMETables: the capacity, churn and UDP capacity tables the pages
// print are, to the character, what the commands printed with them print
// (their counts are exact, so every run prints the same). Each table lives
// on one page: the capacity table in README.md, the churn table in
// docs/pools.md, the UDP table in docs/udp-sharing.md. A page that exists
// must show its command and table; every page that shows a command must
// show its table as the command prints it.
func TestREADMETables(t *testing.T) {
	pages, err := readmecheck.Pages("../..")
	if err != nil {
		t.Fatal(err)
	}
	text := map[string]string{}
	for _, p := range pages {
		md, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		text[filepath.ToSlash(strings.TrimPrefix(p, "../../"))] = string(md)
	}
	for _, tc := range []struct {
		command string
		page    string
		c       config
	}{
		{"go run ./examples/exhaustion", "README.md", defaults},
		{"go run ./examples/exhaustion -mode churn", "docs/pools.md", func() config { c := defaults; c.Mode = "churn"; return c }()},
		// The udp mode's cost part is timed, not compared: measure little.
		{"go run ./examples/exhaustion -mode udp -ports 64", "docs/udp-sharing.md", func() config {
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
		block := "```\n" + strings.TrimRight(table, "\n") + "\n```"
		command := "```\n" + tc.command + "\n```"
		if _, ok := text[tc.page]; !ok {
			t.Logf("%s does not exist (yet): its table of %q is not checked", tc.page, tc.command)
		} else if !strings.Contains(text[tc.page], command) {
			t.Errorf("%s does not show the command %q", tc.page, tc.command)
		}
		for page, md := range text {
			if (page == tc.page || strings.Contains(md, command)) && !strings.Contains(md, block) {
				t.Errorf("%s does not show the table of %q as it prints:\n%s", page, tc.command, table)
			}
		}
	}
}
