package safedialprom_test

import (
	"os/exec"
	"testing"
)

// TestAlertRules checks alerts.yml with promtool and runs its unit tests
// (testdata/alerts_test.yml): levels (SafedialHeadroomLow after 2 minutes
// above 80%, not for a minute above nor at exactly 80%; probe errors that
// keep coming, not one); a slow ramp (the prediction and the level both
// fire before 0 free); a fast ramp (only SafedialDialsExhausted fires by
// the first failed dial); a flapping probe (the level keeps firing).
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
