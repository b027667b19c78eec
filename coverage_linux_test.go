package safedial_test

import (
	"flag"
	"slices"
	"testing"
)

// TestHelperCoverage: under go test -cover, a helper process that a
// namespace child starts (TestShareUDPPortsProcesses' dialers) writes its
// counters where the parent merges its profile from; without the flag the
// code that only runs in helpers (shareConnect there) counted as never run.
func TestHelperCoverage(t *testing.T) {
	f := flag.Lookup("test.gocoverdir")
	if f == nil {
		t.Fatal("the test binary has no -test.gocoverdir flag")
	}
	old := f.Value.String()
	defer f.Value.Set(old)
	dir := t.TempDir()
	if err := f.Value.Set(dir); err != nil {
		t.Fatal(err)
	}
	if args := helperCommand("TestShareUDPPortsHelper", "X=1").Args; !slices.Contains(args, "-test.gocoverdir="+dir) {
		t.Errorf("helper process arguments %q lack -test.gocoverdir=%s", args, dir)
	}
}
