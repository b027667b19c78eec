//go:build linux

package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestExporter runs the exporter in a namespace with a 100-port range and
// checks what /metrics and / serve, with -top 0 (the named pairs only),
// -src and -dst, and that promtool check metrics finds nothing to say.
func TestExporter(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		sockets(t, "127.0.0.1", "127.0.0.2:5432", 12, 3)
		sockets(t, "127.0.0.1", "127.0.0.3:6379", 30, 0) // not named: cut by -top 0

		ctx, cancel := context.WithCancel(context.Background())
		ready, done := make(chan string, 1), make(chan error, 1)
		var logs strings.Builder
		go func() {
			done <- exporter(ctx, []string{"-listen", "127.0.0.1:9477", "-top", "0", "-src", "127.0.0.1,127.0.0.9", "-dst", "127.0.0.2:5432"}, io.Discard, &logs, ready)
		}()
		var addr string
		select {
		case addr = <-ready:
		case err := <-done:
			t.Fatalf("exporter: %v\n%s", err, logs.String())
		}
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("exporter: %v", err)
			}
		}()

		code, body := httpGet(t, "http://"+addr+"/")
		if code != http.StatusOK || !strings.Contains(body, "/metrics") {
			t.Errorf("GET /: %d %q", code, body)
		}
		for path, want := range map[string]string{"/-/healthy": "Healthy\n", "/-/ready": "Ready\n"} {
			if code, body := httpGet(t, "http://"+addr+path); code != http.StatusOK || body != want {
				t.Errorf("GET %s: %d %q, want 200 %q", path, code, body, want)
			}
		}
		code, body = httpGet(t, "http://"+addr+"/metrics")
		if code != http.StatusOK {
			t.Fatalf("GET /metrics: %d\n%s", code, body)
		}
		for _, want := range []string{
			`safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1",state="time_wait"} 3`,
			`safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.1",state="free"} 85`,
			// Named by -src and -dst, without a socket: exported all the same.
			`safedial_headroom_ports{destination="127.0.0.2:5432",protocol="tcp",source="127.0.0.9",state="free"} 100`,
			`safedial_headroom_pairs{protocol="tcp"} 4`, // 5432, 6379, the named empty pair, and this GET
			`safedial_headroom_pairs_exported{protocol="tcp"} 2`,
			`safedial_local_port_range_ports 100`,
			`safedial_tcp_tw_reuse 0`,
			`safedial_headroom_probe_errors_total{protocol="tcp"} 0`,
			`process_resident_memory_bytes `,
			`safedial_build_info{branch="unknown",goarch="` + runtime.GOARCH + `",goos="linux",goversion="` + runtime.Version() + `",revision="`,
			`,version="(devel)"} 1`,
		} {
			if !strings.Contains(body, want+"\n") && !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		if promtool, err := exec.LookPath("promtool"); err == nil {
			// The command's whole exposition, Go and process metrics too.
			cmd := exec.Command(promtool, "check", "metrics")
			cmd.Stdin = strings.NewReader(body)
			if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("promtool check metrics: %v\n%s", err, out)
			}
		} else if os.Getenv("CI") == "true" {
			t.Errorf("promtool is needed (CI=true): %v", err)
		} else {
			t.Logf("promtool check metrics skipped: %v", err)
		}
		if strings.Contains(body, "6379") {
			t.Errorf("/metrics has the pair toward 6379, which -top 0 cuts")
		}
		if t.Failed() {
			t.Logf("/metrics:\n%s", body)
		}
	})
}

func TestIsExporter(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"exporter"}, true},
		{[]string{"exporter", "-listen", ":9477"}, true},
		{[]string{"headroom", "-listen", "127.0.0.1:9477"}, true},
		{[]string{"headroom", "--listen=127.0.0.1:9477", "-top", "5"}, true},
		{[]string{"headroom", "--web.listen-address=127.0.0.1:9477"}, true},
		{[]string{"headroom", "-src", "127.0.0.1"}, false},
		{[]string{"headroom", "--", "-listen"}, false},
		{[]string{"headroom"}, false},
		{nil, false},
		{[]string{"-listen"}, false},
	} {
		if got := isExporter(tc.args); got != tc.want {
			t.Errorf("isExporter(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

func TestExporterUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-listen", "127.0.0.1:9477", "extra"},
		{"-listen", ""},
		{"-scrape-timeout", "0s"},
		{"-listen", "127.0.0.1:9477", "-top", "-1"},
		{"-listen", "127.0.0.1:9477", "-src", "nope"},
		{"-listen", "127.0.0.1:9477", "-dst", "nohostport"},
		{"-listen", "127.0.0.1:9477", "-dst", ":8080"},
		{"-listen", "127.0.0.1:9477", "-min-interval", "-1s"},
		{"-listen", "127.0.0.1:9477", "-udp"}, // a headroom flag, not an exporter one
	} {
		err := exporter(context.Background(), args, io.Discard, io.Discard, nil)
		var u *usageError
		if !errors.As(err, &u) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}

// TestExporterCommandLine: the exporter is a subcommand of safedial's, with
// the conventions of the others, and headroom -listen is the exporter.
func TestExporterCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string // a part of it
		stderr string
	}{
		{[]string{"help"}, 0, "exporter ", ""},
		{[]string{"help", "exporter"}, 0, "usage: safedial exporter [--web.listen-address ADDR]", ""},
		{[]string{"help", "headroom"}, 0, "With -listen ADDR, headroom serves Prometheus", ""}, // headroom's help says -listen exists
		{[]string{"exporter", "-h"}, 0, "default :9477", ""},
		{[]string{"exporter", "--help"}, 0, "--web.config.file", ""},
		{[]string{"headroom", "-listen", "127.0.0.1:9477", "-h"}, 0, "usage: safedial exporter", ""},
		{[]string{"headroom", "--web.listen-address", "127.0.0.1:9477", "-h"}, 0, "usage: safedial exporter", ""},
		{[]string{"--version"}, 0, "(devel)\n", ""}, // a test binary's module version
		{[]string{"exporter", "--version"}, 0, "(devel)\n", ""},
		{[]string{"exporter", "--web.max-requests", "-1"}, 2, "", "safedial exporter: --web.max-requests -1: must not be negative (0: no limit)\n"},
		{[]string{"exporter", "-dst", "127.0.0.1:70000"}, 2, "", "safedial exporter: invalid value"},
		{[]string{"headroom", "-listen", "127.0.0.1:9477", "-udp"}, 2, "", "safedial exporter: flag provided but not defined: -udp\n"},
	} {
		var stdout, stderr strings.Builder
		code := runMain(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String(), tc.stdout) || !strings.HasPrefix(stderr.String(), tc.stderr) {
			t.Errorf("safedial %q: exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr starting %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}

// TestExporterIdleTimeout: the exporter closes a keep-alive connection left
// idle, rather than holding its descriptor and goroutine for good.
func TestExporterIdleTimeout(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		old := exporterIdleTimeout
		exporterIdleTimeout = time.Millisecond
		t.Cleanup(func() { exporterIdleTimeout = old })
		ctx, cancel := context.WithCancel(context.Background())
		ready, done := make(chan string, 1), make(chan error, 1)
		go func() {
			done <- exporter(ctx, []string{"-listen", "127.0.0.1:0"}, io.Discard, io.Discard, ready)
		}()
		var addr string
		select {
		case addr = <-ready:
		case err := <-done:
			t.Fatalf("exporter: %v", err)
		}
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("exporter: %v", err)
			}
		}()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// Not a measure of time: a bound on how long a broken exporter
		// keeps the test waiting for the close it never makes.
		c.SetReadDeadline(time.Now().Add(time.Minute))
		b, err := io.ReadAll(c)
		if err != nil || !strings.Contains(string(b), "/metrics") {
			t.Errorf("a keep-alive connection after one request: %v, read %q; want the answer then the exporter's close", err, b)
		}
	})
}

// TestMaxRequestsZero: --web.max-requests 0 is no limit, as node_exporter's.
func TestMaxRequestsZero(t *testing.T) {
	o, err := parseExporter([]string{"--web.max-requests", "0"}, io.Discard)
	if err != nil || o.maxRequests != 0 {
		t.Fatalf("--web.max-requests 0: %+v, %v", o.maxRequests, err)
	}
	const n = 50
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(n)
	h := limitInFlight(0, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Done()
		<-release
	}))
	codes := make(chan int, n)
	for range n {
		go func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
			codes <- rec.Code
		}()
	}
	started.Wait() // all n are in the handler at once: none was turned away
	close(release)
	for range n {
		if c := <-codes; c != http.StatusOK {
			t.Errorf("status %d, want 200", c)
		}
	}
}
