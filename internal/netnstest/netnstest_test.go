//go:build linux

package netnstest_test

import (
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
)

// TestNamespace checks, from inside, that the namespace is private and set
// up as configured.
func TestNamespace(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		for name, want := range map[string]string{
			"/proc/sys/net/ipv4/ip_local_port_range": "40000\t40099",
			"/proc/sys/net/ipv4/tcp_tw_reuse":        "0",
			"/proc/sys/net/ipv4/tcp_rfc1337":         "1",
		} {
			b, err := os.ReadFile(name)
			if err != nil || strings.TrimSpace(string(b)) != want {
				t.Errorf("%s = %q (%v), want %q", name, b, err, want)
			}
		}
		ifs, err := net.Interfaces()
		if err != nil {
			t.Fatal(err)
		}
		if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
			t.Errorf("interfaces = %v, want only lo, up", ifs)
		}
		ln, err := net.Listen("tcp", "127.0.0.9:80") // any 127/8 address is local
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	})
}

// TestUnavailable runs TestNamespace where namespaces cannot be made: it must
// skip, with the reason, and fail instead when CI=true, so that the
// real-kernel tests never silently vanish from CI.
func TestUnavailable(t *testing.T) {
	if os.Getenv("SAFEDIAL_NETNS_UNAVAILABLE") != "" {
		t.Skip("this is the child")
	}
	for _, tc := range []struct {
		ci, want string
		fail     bool
	}{
		{"", "--- SKIP: TestNamespace", false},
		{"true", "--- FAIL: TestNamespace", true},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestNamespace$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), "SAFEDIAL_NETNS_UNAVAILABLE=1", "CI="+tc.ci)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.fail || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "cannot build a private network namespace") {
			t.Errorf("CI=%q: exit %v, output:\n%s\nwant %q and the reason", tc.ci, err, out, tc.want)
		}
	}
}
