//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		// This test binary is the copy running inside a namespace.
		if err := runChild(); err != nil {
			os.Stderr.WriteString("exhaustion: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func unavailable(t *testing.T, err error) {
	t.Helper()
	if strings.Contains(err.Error(), "cannot create a private network namespace") && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	t.Fatal(err)
}

// runJSON runs the program's mode c with -json and decodes its rows.
func runJSON(t *testing.T, c config) []result {
	t.Helper()
	var out strings.Builder
	if err := run(c, true, "", &out); err != nil {
		unavailable(t, err)
	}
	var got []result
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestCapacityTable runs the program's default experiment and checks the
// exact numbers the README shows.
func TestCapacityTable(t *testing.T) {
	got := runJSON(t, config{Mode: "capacity", Ports: 100, Hosts: 3, DestPorts: 2, Sources: 4})
	connect := "connect: cannot assign requested address (exhaustion)"
	bind := "bind: address already in use (exhaustion)"
	want := []result{
		{"net.Dialer", 600, 600, connect, nil},
		{"net.Dialer+LocalAddr", 100, 600, bind, nil},
		{"net.Dialer+LocalAddr+SO_REUSEADDR", 100, 600, bind, nil},
		{"safedial+LocalAddr", 600, 600, connect, nil},
		{"safedial+Sources(4)", 2400, 2400, connect, nil},
		{"safedial+PortRange(40000-40049)", 300, 300, connect, nil},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("capacity table (-want +got):\n%s", diff)
	}
}

// TestChurnTable: with client-side close and tcp_tw_reuse=0, TIME_WAIT holds
// each 4-tuple, so the counts equal the capacity limits, except for a bound
// net.Dialer, which cannot reuse a port toward another destination.
func TestChurnTable(t *testing.T) {
	got := runJSON(t, config{Mode: "churn", Ports: 50, Hosts: 2, DestPorts: 2, Sources: 2})
	counts := map[string]int{}
	for _, r := range got {
		counts[r.Dialer] = r.Connections
	}
	want := map[string]int{"net.Dialer": 200, "net.Dialer+LocalAddr": 50, "safedial+LocalAddr": 200, "safedial+Sources(2)": 400}
	if diff := cmp.Diff(want, counts); diff != "" {
		t.Errorf("churn counts (-want +got):\n%s", diff)
	}
}

// TestNoNamespace: where a namespace cannot be made the program says why.
func TestNoNamespace(t *testing.T) {
	t.Setenv("SAFEDIAL_NETNS_UNAVAILABLE", "1")
	err := run(config{Mode: "capacity", Ports: 10, Hosts: 1, DestPorts: 1, Sources: 1}, false, "", io.Discard)
	if err == nil || !strings.Contains(err.Error(), "cannot create a private network namespace") || !strings.Contains(err.Error(), "root or unprivileged user namespaces") {
		t.Errorf("err = %v, want an explanation", err)
	}
}

// TestPoolMode: the pool mode runs to the end: with one source of two full,
// every pool dial succeeds; with both full, every later dial is exhaustion;
// freed ports are used again. (Its timings are measurements, printed by the
// program, not asserted.)
func TestPoolMode(t *testing.T) {
	var out strings.Builder
	if err := run(config{Mode: "pool", PoolPorts: 1000, Pairs: 200}, true, "", &out); err != nil {
		unavailable(t, err)
	}
	var f poolFigures
	if err := json.Unmarshal([]byte(out.String()), &f); err != nil {
		t.Fatal(err)
	}
	if f.Pairs != 200 || f.PoolFailed != 0 || f.LaterExhausted != 100 || !f.Recovered {
		t.Errorf("figures %+v: want 200 pairs, no failed pool dial, 100 later exhausted dials, recovered", f)
	}
}

// TestProbeMode: the three ways of reading a pair's headroom agree on the
// count (the timings are the program's to print, not asserted).
func TestProbeMode(t *testing.T) {
	var out strings.Builder
	if err := run(config{Mode: "probe", Sockets: 400}, true, "", &out); err != nil {
		unavailable(t, err)
	}
	var rows []probeRow
	if err := json.Unmarshal([]byte(out.String()), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 {
		t.Fatalf("rows %+v, want one", rows)
	}
	r := rows[0]
	if r.SSUnavailable != "" && os.Getenv("CI") != "true" {
		r.SSMatching = r.Matching
	}
	if r.Sockets != 400 || r.Matching != 100 || r.ProcMatching != 100 || r.SSMatching != 100 {
		t.Errorf("probe row %+v: want 400 sockets, 100 matching by the probe, /proc/net/tcp and ss alike", r)
	}
}

// TestUDPMode: the udp mode's capacity table, exactly: without sharing, the
// range whatever the destinations; with ShareUDPPorts, the range per
// destination.
func TestUDPMode(t *testing.T) {
	var out strings.Builder
	if err := run(config{Mode: "udp", Ports: 20, Hosts: 3, Sources: 2, LatencyPort: 100, Samples: 20}, true, "", &out); err != nil {
		unavailable(t, err)
	}
	var got struct {
		Capacity []result
		Cost     []latencyRow
	}
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatal(err)
	}
	eagain := "connect: resource temporarily unavailable (exhaustion)"
	want := []result{
		{"net.Dialer", 20, 20, eagain, nil},
		{"net.Dialer+LocalAddr", 20, 20, "bind: address already in use (exhaustion)", nil},
		{"safedial+LocalAddr", 20, 20, eagain, nil},
		{"safedial+LocalAddr+ShareUDPPorts", 60, 60, eagain, nil},
		{"safedial+ShareUDPPorts", 60, 60, eagain, nil},
		{"safedial+Sources(2)+ShareUDPPorts", 120, 120, eagain, nil},
	}
	if diff := cmp.Diff(want, got.Capacity); diff != "" {
		t.Errorf("udp capacity (-want +got):\n%s", diff)
	}
	if len(got.Cost) != 6 {
		t.Errorf("cost rows: %+v, want 3 fill levels x 2 dialers", got.Cost)
	}
	for _, r := range got.Cost {
		if r.FirstFail != "" {
			t.Errorf("cost row %+v: a dial failed", r)
		}
	}
}

// TestPoolChurn runs the poolchurn mode briefly: every dialer connects, and
// no dial fails for any reason but exhaustion. (Its figures are timing: the
// README shows a full run.)
func TestPoolChurn(t *testing.T) {
	var out strings.Builder
	c := config{Mode: "poolchurn", ChurnPorts: 4, Workers: 8, Hold: 5 * time.Millisecond, Duration: 200 * time.Millisecond, Retry: time.Millisecond, Rounds: 1}
	if err := run(c, true, "", &out); err != nil {
		unavailable(t, err)
	}
	var rows []churnRow
	if err := json.Unmarshal([]byte(out.String()), &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) != 5 {
		t.Fatalf("%d rows, want 5: %+v", len(rows), rows)
	}
	for _, r := range rows {
		if r.Connections == 0 || r.OtherErrors != 0 {
			t.Errorf("%s: %d connections, %d other errors (%s); want connections and only exhaustion errors", r.Dialer, r.Connections, r.OtherErrors, r.FirstOther)
		}
	}
}

// TestUDPSocketsMode: -udp-sockets gives, per count of unrelated UDP
// sockets held, a plain and a shared dial's cost and the 50 ms-deadline
// rows, every dial of the cost rows succeeding.
func TestUDPSocketsMode(t *testing.T) {
	var out strings.Builder
	if err := run(config{Mode: "udp", UDPSockets: "0,50", LatencyPort: 100, Samples: 5}, true, "", &out); err != nil {
		unavailable(t, err)
	}
	var got []tableRow
	if err := json.Unmarshal([]byte(out.String()), &got); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range got {
		names = append(names, fmt.Sprint(r.Sockets, " ", r.Dialer))
	}
	want := []string{
		"0 net.Dialer+LocalAddr", "0 safedial+LocalAddr+ShareUDPPorts",
		"0 plain, 50 ms deadline, another source full", "0 shared, 50 ms deadline, another source full",
		"50 net.Dialer+LocalAddr", "50 safedial+LocalAddr+ShareUDPPorts",
		"50 plain, 50 ms deadline, another source full", "50 shared, 50 ms deadline, another source full",
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
}
