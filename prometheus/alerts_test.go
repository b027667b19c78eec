package safedialprom_test

import (
	"os/exec"
	"testing"
)

// TestAlertRules checks alerts.yml with promtool and runs its unit tests
// (testdata/alerts_test.yml): SafedialHeadroomLow fires after 5 minutes
// above 80% and not before, nor for a pair back under it, nor at exactly
// 80%; SafedialHeadroomProbeErrors fires for probes that keep failing, not
// for one error.
func TestAlertRules(t *testing.T) {
	promtool := need(t, "promtool", "prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "testdata/alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		} else {
			t.Logf("promtool %v:\n%s", args, out)
		}
	}
}
