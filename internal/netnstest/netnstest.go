// Package netnstest runs one test in a private network namespace, in a child
// process that re-executes the test binary. See [Run].
package netnstest

import (
	"bytes"
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/safedial/safedial/internal/netns"
)

// envTest names the test a child process is to run its body for.
const envTest = "SAFEDIAL_NETNS_TEST"

// setupFailed starts the line a child prints when it could not prepare its
// namespace, so the parent can tell that from a failing test body.
const setupFailed = "netnstest: namespace setup failed: "

// Run runs body in a fresh network namespace configured by c.
//
// In the parent it re-executes the test binary for exactly this test with
// [netns.Command], streams nothing, and checks that the child printed this
// test's PASS line; the child's output is logged. In the child (the same call,
// made again by the re-executed test) it sets the namespace up and runs body.
//
// Where a namespace cannot be made, the test is skipped with the reason, or
// fails when the environment variable CI is "true", so that the real-kernel
// tests can never silently vanish from CI.
func Run(t *testing.T, c netns.Config, body func(t *testing.T)) {
	t.Helper()
	if os.Getenv(envTest) == t.Name() {
		if err := netns.Setup(); err != nil {
			t.Log(setupFailed + err.Error())
			t.FailNow()
		}
		body(t)
		return
	}
	if netns.Inside() {
		t.Fatalf("netnstest: %s runs inside another test's namespace; nested namespaces are not supported", t.Name())
	}

	timeout := 10 * time.Minute
	if dl, ok := t.Deadline(); ok {
		// Time out (with a goroutine dump) before the parent does.
		timeout = time.Until(dl) * 9 / 10
	}
	args := []string{"-test.run=" + runPattern(t.Name()), "-test.v", "-test.count=1", "-test.timeout=" + timeout.String()}
	args = append(args, CoverArgs()...)
	cmd, err := netns.Command(c, os.Args[0], args...)
	if err != nil {
		unavailable(t, err)
	}
	cmd.Env = append(cmd.Env, envTest+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if bytes.Contains(out, []byte(setupFailed)) {
		unavailable(t, lineWith(out, setupFailed))
	}
	if err != nil && !bytes.Contains(out, []byte("=== RUN")) {
		// The child never started running tests: the namespace could not be made.
		unavailable(t, err)
	}
	t.Logf("child process in namespace %s:\n%s", c, out)
	switch {
	case bytes.Contains(out, []byte("--- SKIP: "+t.Name()+" ")):
		t.Skip("skipped inside the namespace (see the child's output above)")
	case err != nil || !bytes.Contains(out, []byte("--- PASS: "+t.Name()+" ")):
		t.Fatalf("test failed in its namespace (exit: %v)", err)
	}
}

// CoverArgs passes coverage through to a child process of the test binary
// (a namespace child, or a helper process a test starts): under go test
// -cover the test binary gets -test.gocoverdir, and each process given it
// writes its counters there when it exits; the parent merges every file of
// that directory into the profile. Without it the code that only runs in a
// child would count as never run.
func CoverArgs() []string {
	if f := flag.Lookup("test.gocoverdir"); f != nil && f.Value.String() != "" {
		return []string{"-test.gocoverdir=" + f.Value.String()}
	}
	return nil
}

// unavailable skips t, or fails it when CI=true.
func unavailable(t *testing.T, why any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("cannot build a private network namespace (CI=true, so this fails instead of skipping): %v", why)
	}
	t.Skipf("cannot build a private network namespace, skipping: %v (run as root, or enable unprivileged user namespaces)", why)
}

// runPattern anchors every element of a (sub)test name for -test.run.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

func lineWith(out []byte, s string) string {
	i := bytes.Index(out, []byte(s))
	line, _, _ := strings.Cut(string(out[i:]), "\n")
	return strings.TrimSpace(line)
}
