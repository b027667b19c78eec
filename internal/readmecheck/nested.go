package readmecheck

import (
	"os"
	"os/exec"
	"testing"
)

// TestNested is the test of a nested module's share of the pages of the
// repository at root (see [Pages]): it compiles, with Check in the current
// directory (the module's own), every fragment whose Module is module, and
// fails when there are fewer than min of them (so that a module's snippets
// cannot silently leave the pages). It skips where the go command is
// missing, except under CI=true, where it fails.
func TestNested(t testing.TB, root, module string, min int) {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip("needs the go command:", err)
	}
	frags, err := ExtractPages(root)
	if err != nil {
		t.Fatal(err)
	}
	var mine []Fragment
	for _, f := range frags {
		mod, err := f.Module()
		if err != nil {
			t.Fatal(err)
		}
		if mod == module {
			mine = append(mine, f)
		}
	}
	t.Logf("%d fragments of the pages under %s belong to %s", len(mine), root, module)
	if len(mine) < min {
		t.Fatalf("%d fragments of the pages under %s belong to %s, want at least %d", len(mine), root, module, min)
	}
	if err := Check(".", mine); err != nil {
		t.Fatal(err)
	}
}
