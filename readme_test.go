package safedial_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles every Go snippet of README.md and the other
// pages (docs/*.md, CONTRIBUTING.md, prometheus/README.md) against the
// current API (go build and go vet in a scratch module; the convention is
// readmecheck's). A snippet that names a package the root module must not
// depend on (pgx, go-redis, Prometheus, ...) belongs to a nested module,
// whose own tests compile it: this test checks that the module exists, and
// that no snippet names a package readmecheck does not know. Every snippet
// must be formatted as gofmt formats it.
func TestREADMESnippets(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("needs the go command:", err)
	}
	frags, err := readmecheck.ExtractPages(".")
	if err != nil {
		t.Fatal(err)
	}
	var mine []readmecheck.Fragment
	nested := map[string]int{}
	for _, f := range frags {
		_, unknown, err := f.Uses()
		if err != nil {
			t.Fatal(err)
		}
		if len(unknown) > 0 {
			t.Errorf("%v: %v used as packages: declare them in the snippet, or add the packages to readmecheck.Packages", f, unknown)
			continue
		}
		if ok, formatted, err := f.Gofmt(); err != nil {
			t.Error(err)
		} else if !ok {
			t.Errorf("%v: not formatted as gofmt does; gofmt's version:\n%s", f, formatted)
		}
		mod, err := f.Module()
		if err != nil {
			t.Error(err)
			continue
		}
		if mod == "" {
			mine = append(mine, f)
			continue
		}
		if _, err := os.Stat(filepath.Join(mod, "go.mod")); err != nil {
			t.Errorf("%v: names packages of the nested module %s, which does not exist (%v)", f, mod, err)
		}
		nested[mod]++
	}
	t.Logf("%d snippets compiled here; left to nested modules: %v", len(mine), nested)
	if err := readmecheck.Check(".", mine); err != nil {
		t.Fatal(err)
	}
}
