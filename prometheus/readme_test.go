package safedialprom_test

import (
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles the README's snippets that name Prometheus
// packages (the root module's TestREADMESnippets compiles the others),
// against the versions this module requires: at least the Dialer
// collector's.
func TestREADMESnippets(t *testing.T) {
	readmecheck.TestNested(t, "../README.md", readmecheck.Prometheus, 1)
}
