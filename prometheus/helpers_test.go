package safedialprom_test

import (
	"os"
	"os/exec"
	"testing"
)

// need returns the path of the program name, or skips the test with a
// message (fails it when CI=true, where .ci/run has installed it).
func need(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is needed (CI=true, so this fails instead of skipping; apt-get install -y %s): %v", name, pkg, err)
		}
		t.Skipf("%s is needed, skipping (apt-get install -y %s): %v", name, pkg, err)
	}
	return p
}
