//go:build linux

package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
)

// sockets makes est held connections and tw connections closed by the
// client from src to a server at dst that closes on EOF.
func sockets(t *testing.T, src, dst string, est, tw int) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, ControlContext: (&safedial.Dialer{}).ControlContext}
	dst, closed := netnstest.EOFServer(t, dst)
	for i := range est + tw {
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		if i < est {
			t.Cleanup(func() { c.Close() })
			continue
		}
		c.Close()
		<-closed // the server has closed its side too
	}
}

// TestHeadroomCommand builds a host in a namespace with a 100-port range, 5
// of them reserved and one taken by a listener: a database pool from
// 127.0.0.1 that has closed 20 of its 85 connections (TIME_WAIT), a cache
// client, and a web client from 127.0.0.5; the output in the README's
// "Watching headroom" is this test's log
// (go test -count=1 -v -run TestHeadroomCommand ./cmd/safedial).
func TestHeadroomCommand(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_reserved_ports", []byte("40095-40099"), 0); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.8:40050") // an admin endpoint on a port of the range
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		sockets(t, "127.0.0.1", "127.0.0.2:5432", 65, 20)
		sockets(t, "127.0.0.1", "127.0.0.3:6379", 30, 0)
		sockets(t, "127.0.0.5", "127.0.0.2:443", 7, 5)

		var out strings.Builder
		if err := run(context.Background(), nil, &out); err != nil {
			t.Fatal(err)
		}
		t.Logf("safedial headroom:\n%s", out.String())
		wantText := `ip_local_port_range 40000-40099 (100 ports), tcp_tw_reuse 0 (TIME_WAIT never reused), ip_local_reserved_ports 40095-40099

source     destination     in use  TIME_WAIT  reserved  bound  free  used    
127.0.0.1  127.0.0.2:5432  65      20         5         1      9      91.0%  [##################..]
127.0.0.1  127.0.0.3:6379  30      0          5         1      64     36.0%  [#######.............]
127.0.0.5  127.0.0.2:443   7       5          5         1      82     18.0%  [####................]
`
		if diff := cmp.Diff(wantText, out.String()); diff != "" {
			t.Errorf("safedial headroom (-want +got):\n%s", diff)
		}

		out.Reset()
		if err := run(context.Background(), []string{"-json"}, &out); err != nil {
			t.Fatal(err)
		}
		var r jsonReport
		if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		rng := safedial.PortRange{Lo: 40000, Hi: 40099}
		zero := 0
		want := jsonReport{Schema: 1, Time: r.Time, Range: rng, TWReuse: &zero, ReservedPorts: "40095-40099", Network: "tcp", Pairs: []jsonPair{
			{safedial.Headroom{Source: netip.MustParseAddr("127.0.0.1"), Range: rng, InUse: 65, TimeWait: 20, Reserved: 5, Bound: 1, Free: 9}, "127.0.0.2:5432"},
			{safedial.Headroom{Source: netip.MustParseAddr("127.0.0.1"), Range: rng, InUse: 30, Reserved: 5, Bound: 1, Free: 64}, "127.0.0.3:6379"},
			{safedial.Headroom{Source: netip.MustParseAddr("127.0.0.5"), Range: rng, InUse: 7, TimeWait: 5, Reserved: 5, Bound: 1, Free: 82}, "127.0.0.2:443"},
		}}
		if !strings.Contains(out.String(), `"tcp_tw_reuse":0,`) {
			t.Errorf("-json: tcp_tw_reuse is not the number 0: %s", out.String())
		}
		if r.Time.IsZero() {
			t.Errorf("-json has no time: %s", out.String())
		}
		cmpAddrs := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })}
		if diff := cmp.Diff(want, r, cmpAddrs); diff != "" {
			t.Errorf("headroom -json (-want +got):\n%s", diff)
		}

		out.Reset()
		if err := run(context.Background(), []string{"-src", "127.0.0.5"}, &out); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		if !strings.Contains(text, "127.0.0.5  127.0.0.2:443  7       5          5         1      82     18.0%  [####................]") || strings.Contains(text, "127.0.0.1 ") {
			t.Errorf("-src 127.0.0.5 shows:\n%s", text)
		}
		out.Reset()
		if err := run(context.Background(), []string{"-dst", "127.0.0.3:6379"}, &out); err != nil {
			t.Fatal(err)
		}
		if text := out.String(); !strings.Contains(text, "127.0.0.1  127.0.0.3:6379  30") || strings.Contains(text, "5432") {
			t.Errorf("-dst 127.0.0.3:6379 shows:\n%s", text)
		}

		// Both -src and -dst: the pair is shown without sockets too.
		out.Reset()
		if err := run(context.Background(), []string{"-json", "-src", "127.0.0.9", "-dst", "127.0.0.2:5432"}, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), `"in_use":0`) || !strings.Contains(out.String(), `"free":94`) {
			t.Errorf("an empty pair: %s", out.String())
		}
	})
}

// TestCommandLine: help goes to standard output with status 0, usage errors
// name the problem once on standard error with status 2.
func TestCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string // contained
		stderr     string // contained; "" means empty
		stderrOnce string // said exactly once
	}{
		{args: nil, code: 2, stderr: "Subcommands:"},
		{args: []string{"-h"}, code: 0, stdout: "Subcommands:\n\n\theadroom"},
		{args: []string{"--help"}, code: 0, stdout: "ephemeral-port exhaustion"},
		{args: []string{"help"}, code: 0, stdout: "Run 'safedial help <subcommand>'"},
		{args: []string{"help", "headroom"}, code: 0, stdout: "usage: safedial headroom"},
		{args: []string{"help", "nope"}, code: 2, stderr: `unknown subcommand "nope"`},
		{args: []string{"nope"}, code: 2, stderr: `unknown subcommand "nope"`},
		{args: []string{"headroom", "-h"}, code: 0, stdout: "-watch period"},
		{args: []string{"headroom", "--help"}, code: 0, stdout: "usage: safedial headroom"},
		{args: []string{"headroom", "-bogus"}, code: 2, stderrOnce: "flag provided but not defined: -bogus"},
		{args: []string{"headroom", "extra"}, code: 2, stderrOnce: `unexpected argument "extra"`},
		{args: []string{"headroom", "-src", "nope"}, code: 2, stderrOnce: `-src "nope" is not an IP address`},
		{args: []string{"headroom", "-src", "::1", "-dst", "127.0.0.2:5432"}, code: 2, stderrOnce: "different address families"},
		{args: []string{"headroom", "-src", "127.0.0.1", "-dst", "[::1]:5432"}, code: 2, stderrOnce: "different address families"},
		{args: []string{"headroom", "-src", "0.0.0.0"}, code: 2, stderrOnce: "the unspecified address is no source"},
		{args: []string{"headroom", "-src", "::"}, code: 2, stderrOnce: "the unspecified address is no source"},
		{args: []string{"headroom", "-src", "192.0.2.1"}, code: 2, stderrOnce: "-src 192.0.2.1 is not an address of this host"},
		{args: []string{"headroom", "-src", "224.0.0.1"}, code: 2, stderrOnce: "multicast or broadcast"},
		{args: []string{"headroom", "-src", "fe80::1%nosuchif0"}, code: 2, stderrOnce: `unknown zone "nosuchif0"`},
		{args: []string{"headroom", "-dst", ":8080"}, code: 2, stderrOnce: "give the destination's host"},
		{args: []string{"headroom", "-dst", "0.0.0.0:8080"}, code: 2, stderrOnce: "give the destination's host"},
		{args: []string{"headroom", "-dst", "127.0.0.2:0"}, code: 2, stderrOnce: "the port must be 1-65535"},
		{args: []string{"headroom", "-dst", "127.0.0.2:70000"}, code: 2, stderrOnce: "the port must be 1-65535"},
		{args: []string{"headroom", "-dst", "127.0.0.2:nosuchservice"}, code: 2, stderrOnce: "unknown port"},
		{args: []string{"headroom", "-dst", "nohostport"}, code: 2, stderrOnce: "want host:port"},
		{args: []string{"headroom", "-watch", "-1s"}, code: 2, stderrOnce: "the period must be positive"},
	} {
		var stdout, stderr strings.Builder
		code := runMain(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code {
			t.Errorf("safedial %v: exit %d, want %d (stderr %q)", tc.args, code, tc.code, stderr.String())
		}
		if !strings.Contains(stdout.String(), tc.stdout) || tc.stdout == "" && stdout.Len() > 0 {
			t.Errorf("safedial %v: stdout %q, want it to contain %q", tc.args, stdout.String(), tc.stdout)
		}
		switch {
		case tc.stderrOnce != "":
			if n := strings.Count(stderr.String(), tc.stderrOnce); n != 1 {
				t.Errorf("safedial %v: stderr says %q %d times, want once:\n%s", tc.args, tc.stderrOnce, n, stderr.String())
			}
		case tc.stderr == "" && stderr.Len() > 0, !strings.Contains(stderr.String(), tc.stderr):
			t.Errorf("safedial %v: stderr %q, want %q", tc.args, stderr.String(), tc.stderr)
		}
	}
}

// TestHeadroomViews: the UDP view counts wildcard sockets against each
// source and has no TIME_WAIT column; -udp with -dst shows the source's
// headroom toward it; -src with a zone works; -watch keeps its period
// whatever the probes take and stamps each sample.
func TestHeadroomViews(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099, TWReuse: 2}, func(t *testing.T) {
		for _, la := range []string{"127.0.0.1:0", "127.0.0.1:0", "0.0.0.0:0"} {
			c, err := net.ListenPacket("udp4", la)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		c, err := net.ListenPacket("udp", ":0") // [::], dual-stack
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()

		var out strings.Builder
		if err := run(context.Background(), []string{"-udp"}, &out); err != nil {
			t.Fatal(err)
		}
		want := `ip_local_port_range 40000-40099 (100 ports), ip_local_reserved_ports (none)

source     destination  in use  reserved  free  used    
127.0.0.1  (any)        4       0         96      4.0%  [#...................]
::         (any)        1       0         99      1.0%  [#...................]
`
		if diff := cmp.Diff(want, out.String()); diff != "" {
			t.Errorf("headroom -udp (-want +got):\n%s", diff)
		}

		out.Reset()
		if err := run(context.Background(), []string{"-udp", "-dst", "127.0.0.2:53"}, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "127.0.0.1  127.0.0.2:53  4       0         96") {
			t.Errorf("headroom -udp -dst 127.0.0.2:53:\n%s", out.String())
		}

		out.Reset()
		if err := run(context.Background(), []string{"-src", "::1%lo", "-dst", "[::1]:5432"}, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "tcp_tw_reuse 2 (TIME_WAIT reused for loopback pairs only)") || !strings.Contains(out.String(), "::1%lo  [::1]:5432   0       0 reused") {
			t.Errorf("headroom -src ::1%%lo -dst [::1]:5432:\n%s", out.String())
		}

		// A failure at run time (here, no name server in the namespace):
		// exit 1, said once.
		var stdout, stderr strings.Builder
		if code := runMain(context.Background(), []string{"headroom", "-dst", "nohost.invalid:80"}, &stdout, &stderr); code != 1 || strings.Count(stderr.String(), `-dst "nohost.invalid:80"`) != 1 {
			t.Errorf("an unresolvable -dst: exit %d, stderr %q; want 1 and the problem said once", code, stderr.String())
		}

		// -watch on a fake clock: each probe takes 300 ms of it, the
		// period is 1 s: samples at 0, 1 s, 2 s, not 0, 1.3 s, 2.6 s.
		t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		now := t0
		samples := 0
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		o, err := parse([]string{"-json", "-watch", "1s"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		o.now = func() time.Time { return now }
		o.sleep = func(_ context.Context, d time.Duration) bool {
			now = now.Add(d)
			return samples < 3
		}
		out.Reset()
		w := writerFunc(func(p []byte) (int, error) {
			samples++
			now = now.Add(300 * time.Millisecond) // the probe's time, after the sample's
			return out.Write(p)
		})
		if err := watchLoop(ctx, o, w); err != nil {
			t.Fatal(err)
		}
		var times []time.Time
		for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var r report
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatal(err)
			}
			times = append(times, r.Time)
		}
		if diff := cmp.Diff([]time.Time{t0, t0.Add(time.Second), t0.Add(2 * time.Second)}, times); diff != "" {
			t.Errorf("-watch sample times (-want +got):\n%s", diff)
		}

		// Without -json, each sample starts with its time.
		now, o.json = t0, false
		sleeps := 0
		o.sleep = func(_ context.Context, d time.Duration) bool {
			now = now.Add(d)
			sleeps++
			return sleeps < 3
		}
		out.Reset()
		text := writerFunc(func(p []byte) (int, error) {
			now = now.Add(time.Millisecond) // the probe's and the printing's time
			return out.Write(p)
		})
		if err := watchLoop(ctx, o, text); err != nil {
			t.Fatal(err)
		}
		for _, at := range []time.Time{t0, t0.Add(time.Second), t0.Add(2 * time.Second)} {
			if want := at.Format(time.RFC3339) + "\nip_local_port_range"; !strings.Contains(out.String(), want) {
				t.Errorf("-watch output lacks the sample at %v:\n%q", at, out.String())
			}
		}
		// Into a file or a pipe (-watch 10s >> headroom.log), no
		// terminal escapes; on a terminal, each sample clears it.
		if strings.Contains(out.String(), "\033[") {
			t.Errorf("-watch wrote terminal escapes to a writer that is no terminal:\n%q", out.String())
		}
		now, sleeps, o.tty = t0, 0, true
		out.Reset()
		if err := watchLoop(ctx, o, text); err != nil {
			t.Fatal(err)
		}
		if want := "\033[H\033[2J" + t0.Format(time.RFC3339) + "\nip_local_port_range"; !strings.Contains(out.String(), want) {
			t.Errorf("-watch on a terminal does not clear it before a sample:\n%q", out.String())
		}
	})
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestJSONReport: -json has a schema version, numbers as numbers, no
// display text, and a dest for every row ("*" for a UDP port held for
// every destination).
func TestJSONReport(t *testing.T) {
	rng := safedial.PortRange{Lo: 40000, Hi: 40099}
	for _, tc := range []struct {
		r    report
		want string
	}{
		{report{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Range: rng, Network: "udp", Pairs: []safedial.Headroom{{Source: netip.MustParseAddr("127.0.0.1"), Range: rng, InUse: 3, Free: 97}}},
			`{"schema":1,"time":"2026-01-01T00:00:00Z","ip_local_port_range":{"lo":40000,"hi":40099},"ip_local_reserved_ports":"","network":"udp","pairs":[{"source":"127.0.0.1","range":{"lo":40000,"hi":40099},"in_use":3,"time_wait":0,"reserved":0,"bound":0,"free":97,"dest":"*"}]}`},
		{report{Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Range: rng, TWReuse: "2", ReservedPorts: "40095-40099", Network: "tcp", Pairs: []safedial.Headroom{}},
			`{"schema":1,"time":"2026-01-01T00:00:00Z","ip_local_port_range":{"lo":40000,"hi":40099},"tcp_tw_reuse":2,"ip_local_reserved_ports":"40095-40099","network":"tcp","pairs":[]}`},
	} {
		b, err := json.Marshal(tc.r.json())
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(tc.want, string(b)); diff != "" {
			t.Errorf("-json (-want +got):\n%s", diff)
		}
	}
}

// TestWatchFloor: a -watch period under 100ms is raised to 100ms (it would
// only spin a CPU), not refused; 0 is one sample.
func TestWatchFloor(t *testing.T) {
	for _, tc := range []struct {
		arg  string
		want time.Duration
	}{{"1ns", minWatch}, {"99ms", minWatch}, {"100ms", minWatch}, {"2s", 2 * time.Second}, {"0", 0}} {
		o, err := parse([]string{"-watch", tc.arg}, io.Discard)
		if err != nil || o.watch != tc.want {
			t.Errorf("-watch %s: period %v, err %v; want %v", tc.arg, o.watch, err, tc.want)
		}
	}
}
