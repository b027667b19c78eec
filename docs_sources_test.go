package safedial_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestDocsSourcesSnippets compiles the Go snippets of docs/sources.md
// against the current API, with readmecheck's conventions.
func TestDocsSourcesSnippets(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("needs the go command:", err)
	}
	md, err := os.ReadFile("docs/sources.md")
	if err != nil {
		t.Fatal(err)
	}
	frags := readmecheck.Extract("docs/sources.md", md)
	for _, f := range frags {
		if ok, formatted, err := f.Gofmt(); err != nil {
			t.Error(err)
		} else if !ok {
			t.Errorf("%v: not formatted as gofmt does; gofmt's version:\n%s", f, formatted)
		}
	}
	if len(frags) < 3 {
		t.Fatalf("%d snippets in docs/sources.md, want at least 3", len(frags))
	}
	if err := readmecheck.Check(".", frags); err != nil {
		t.Fatal(err)
	}
}
