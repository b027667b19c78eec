package safedial_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles every Go snippet of README.md against the
// current API (go build and go vet in a scratch module; the convention is
// readmecheck's). Snippets that name pgx, go-redis, x/net/proxy or gRPC are
// compiled by the nested module examples/clients instead, which has those
// dependencies; this test checks that every other snippet compiles and that
// no snippet names a package neither knows.
func TestREADMESnippets(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("needs the go command:", err)
	}
	md, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var mine []readmecheck.Fragment
	clients := 0
	for _, f := range readmecheck.Extract("README.md", md) {
		_, unknown, err := f.Uses()
		if err != nil {
			t.Fatal(err)
		}
		if len(unknown) > 0 {
			t.Errorf("%v: package names %v unknown to readmecheck.Packages", f, unknown)
			continue
		}
		client, err := f.NeedsClient()
		if err != nil {
			t.Fatal(err)
		}
		if client {
			clients++
			continue
		}
		mine = append(mine, f)
	}
	t.Logf("%d fragments compiled here, %d left to examples/clients", len(mine), clients)
	if err := readmecheck.Check(".", mine); err != nil {
		t.Fatal(err)
	}
}
