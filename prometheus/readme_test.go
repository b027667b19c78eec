package safedialprom_test

import (
	"os"
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles the snippets of the repository's pages that
// name Prometheus packages (the root module's TestREADMESnippets compiles
// the others), against the versions this module requires: at least the
// Dialer collector's.
func TestREADMESnippets(t *testing.T) {
	if _, err := os.Stat("README.md"); err != nil {
		t.Skip("prometheus/README.md does not exist yet:", err)
	}
	readmecheck.TestNested(t, "..", readmecheck.Prometheus, 1)
}
