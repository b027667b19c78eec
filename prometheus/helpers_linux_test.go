package safedialprom_test

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netnstest"
)

// sockets makes est held connections and tw connections closed by the
// client from src to a server at dst that closes on EOF, so that the tw
// ones end in TIME_WAIT on the client's side. The client binds src with
// safedial's hook (IP_BIND_ADDRESS_NO_PORT), so that the port is chosen at
// connect time and no bind holds it for other destinations.
func sockets(t testing.TB, src, dst string, est, tw int) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, ControlContext: (&safedial.Dialer{}).ControlContext}
	dst, closed := netnstest.EOFServer(t, dst)
	for i := range est + tw {
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatalf("dial %d from %s to %s: %v", i, src, dst, err)
		}
		if i < est {
			t.Cleanup(func() { c.Close() })
			continue
		}
		c.Close()
		<-closed // the server has closed its side too: ours is in TIME_WAIT
	}
}

// ssStates counts what ss lists from src to dst with a local port in
// lo..hi: sockets not in TIME-WAIT, and sockets in TIME-WAIT.
func ssStates(t *testing.T, src netip.Addr, dst netip.AddrPort, lo, hi int) (inUse, timeWait int) {
	t.Helper()
	args := []string{"-Htn", "state", "all", "src", src.String(), "dst", dst.String(),
		"sport", ">=", fmt.Sprintf(":%d", lo), "sport", "<=", fmt.Sprintf(":%d", hi)}
	out, err := exec.Command("ss", args...).Output()
	if err != nil {
		t.Fatalf("ss %s: %v", strings.Join(args, " "), err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case line == "":
		case strings.Contains(line, "TIME-WAIT"):
			timeWait++
		default:
			inUse++
		}
	}
	return inUse, timeWait
}

// ssBound counts the TCP and UDP sockets ss lists as listening, or bound
// and not connected (state closed: UNCONN), with a local port in lo..hi:
// ports a bind holds for every destination.
func ssBound(t *testing.T, lo, hi int) int {
	t.Helper()
	args := []string{"-Hn", "-tu", "state", "listening", "state", "closed", "sport", ">=", fmt.Sprintf(":%d", lo), "sport", "<=", fmt.Sprintf(":%d", hi)}
	out, err := exec.Command("ss", args...).Output()
	if err != nil {
		t.Fatalf("ss %s: %v", strings.Join(args, " "), err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) != "" {
			n++
		}
	}
	return n
}
