//go:build linux

package safedial_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
)

// readmeErrors returns the example errors of docs/errors.md: its plain
// blocks that begin with "dial ".
func readmeErrors(t *testing.T) []string {
	t.Helper()
	md, err := os.ReadFile("docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, block := range strings.Split(string(md), "```") {
		if b := strings.TrimSpace(block); i%2 == 1 && strings.HasPrefix(b, "dial ") {
			out = append(out, b)
		}
	}
	return out
}

// TestREADMEErrors: the example errors of docs/errors.md are, whole, what a
// dial returns in the situation the page describes: every port of
// 40000-40099 from 127.0.0.1 in use toward 127.0.0.2:8080, and a source
// that is not an address of this host.
func TestREADMEErrors(t *testing.T) {
	want := readmeErrors(t)
	if len(want) != 2 {
		t.Fatalf("docs/errors.md shows %d example errors, want 2:\n%q", len(want), want)
	}
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dests := servers(t, "tcp", []string{"127.0.0.2"}, []int{8080})
		d := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}}
		n, full := fill(t, d.DialContext, "tcp", dests, 101)
		if n != 100 || full == nil {
			t.Fatalf("%d connections before %v, want 100 and then exhaustion", n, full)
		}
		notLocal := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("192.0.2.1:0")}}
		_, other := notLocal.DialContext(context.Background(), "tcp", dests[0])
		if other == nil {
			t.Fatal("dial from 192.0.2.1 succeeded")
		}
		if diff := cmp.Diff(want, []string{full.Error(), other.Error()}); diff != "" {
			t.Errorf("docs/errors.md's errors (-page +dials):\n%s", diff)
		}
	})
}
