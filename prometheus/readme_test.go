package safedialprom_test

import (
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles the snippets of the repository's pages
// (prometheus/README.md, the operator's page, among them) that name
// Prometheus packages (the root module's TestREADMESnippets compiles the
// others), against the versions this module requires: at least the Dialer
// collector's.
func TestREADMESnippets(t *testing.T) {
	readmecheck.TestNested(t, "..", readmecheck.Prometheus, 1)
}
