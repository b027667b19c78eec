package safedialprom_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles the README's snippets that name Prometheus
// packages (the root module's TestREADMESnippets compiles the others),
// against the versions this module requires.
func TestREADMESnippets(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("needs the go command:", err)
	}
	md, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var mine []readmecheck.Fragment
	for _, f := range readmecheck.Extract("../README.md", md) {
		mod, err := f.Module()
		if err != nil {
			t.Fatal(err)
		}
		if mod == readmecheck.Prometheus {
			mine = append(mine, f)
		}
	}
	t.Logf("%d fragments name Prometheus packages", len(mine))
	if len(mine) < 1 {
		t.Fatalf("no fragment names a Prometheus package; want at least the Dialer collector's")
	}
	if err := readmecheck.Check(".", mine); err != nil {
		t.Fatal(err)
	}
}
