package safedialprom_test

import (
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles the snippets of this module's README.md (the
// operator's page) that name Prometheus packages, against the versions this
// module requires: at least the Dialer collector's.
func TestREADMESnippets(t *testing.T) {
	readmecheck.TestNested(t, "README.md", readmecheck.Prometheus, 1)
}
