package clients

import (
	"os"
	"os/exec"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles the README's snippets that name pgx, go-redis,
// x/net/proxy or gRPC (the root module's TestREADMESnippets compiles the
// others), against the versions this module requires.
func TestREADMESnippets(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("needs the go command:", err)
	}
	md, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var mine []readmecheck.Fragment
	for _, f := range readmecheck.Extract("../../README.md", md) {
		mod, err := f.Module()
		if err != nil {
			t.Fatal(err)
		}
		if mod == readmecheck.Clients {
			mine = append(mine, f)
		}
	}
	t.Logf("%d fragments name a client", len(mine))
	if len(mine) < 3 {
		t.Fatalf("%d fragments name a client, want at least 3 (the clients line, pgx, go-redis)", len(mine))
	}
	if err := readmecheck.Check(".", mine); err != nil {
		t.Fatal(err)
	}
}
