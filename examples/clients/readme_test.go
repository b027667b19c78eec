package clients

import (
	"testing"

	"github.com/safedial/safedial/internal/readmecheck"
)

// TestREADMESnippets compiles the pages' snippets that name pgx, go-redis,
// x/net/proxy or gRPC (the root module's TestREADMESnippets compiles the
// others), against the versions this module requires: at least the clients
// line, pgx's and go-redis's.
func TestREADMESnippets(t *testing.T) {
	readmecheck.TestNested(t, "../..", readmecheck.Clients, 3)
}
