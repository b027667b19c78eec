package safedialprom_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	safedialprom "github.com/safedial/safedial/prometheus"
)

// The test's namespace: a 100-port range, and fixed addresses outside it
// for the exporter and Prometheus (a port 0 would take one of the range).
const (
	testLo, testHi = 40000, 40099
	exporterAddr   = "127.0.0.1:9477"
	prometheusAddr = "127.0.0.1:9090"
)

// serveExporter serves a registry with a HeadroomCollector on addr until
// the test ends, as the command's exporter does.
func serveExporter(t *testing.T, addr string, opts safedialprom.HeadroomOpts) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(safedialprom.NewHeadroomCollector(opts))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: testLogger{t}})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

type testLogger struct{ t *testing.T }

func (l testLogger) Println(v ...any) { l.t.Log(v...) }

func get(t *testing.T, u string) []byte {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", u, resp.Status, b)
	}
	return b
}

// promtoolCheck runs promtool check metrics on an exposition.
func promtoolCheck(t *testing.T, promtool string, exposition []byte) {
	t.Helper()
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(exposition)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// startPrometheus runs the prometheus server on prometheusAddr, scraping
// target every second, with its configuration and TSDB in a directory of
// the test's; it is killed when the test ends, whatever the path.
func startPrometheus(t *testing.T, bin, target string) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: safedial
    static_configs:
      - targets: [%q]
`, target)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+prometheusAddr,
		"--web.console.templates="+filepath.Join(dir, "consoles"),
		"--web.console.libraries="+filepath.Join(dir, "console_libraries"),
	)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	// Should the test binary die without its cleanups, the kernel kills
	// Prometheus.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus's log:\n%s", logs.String())
		}
	})
}

// sample is one element of an instant vector from Prometheus's HTTP API.
type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) float(t *testing.T) float64 {
	t.Helper()
	str, _ := s.Value[1].(string)
	f, err := strconv.ParseFloat(str, 64)
	if err != nil {
		t.Fatalf("value %v of %v: %v", s.Value, s.Metric, err)
	}
	return f
}

// labelString writes labels as PromQL does, in name order.
func labelString(m map[string]string) string {
	var ls []string
	for k, v := range m {
		if k != "__name__" {
			ls = append(ls, fmt.Sprintf("%s=%q", k, v))
		}
	}
	sort.Strings(ls)
	return m["__name__"] + "{" + strings.Join(ls, ",") + "}"
}

// query runs an instant query through Prometheus's HTTP API. A Prometheus
// still starting is no error: ok is false then.
func query(t *testing.T, q string) (v []sample, ok bool) {
	t.Helper()
	resp, err := http.Get("http://" + prometheusAddr + "/api/v1/query?" + url.Values{"query": {q}}.Encode())
	if err != nil {
		return nil, false // not listening yet
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string   `json:"resultType"`
			Result     []sample `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, false // not ready: its answer is not the API's JSON
	}
	if r.Status != "success" || r.Data.ResultType != "vector" {
		t.Fatalf("query %s: status %q, result type %q: %s", q, r.Status, r.Data.ResultType, r.Error)
	}
	return r.Data.Result, true
}

// awaitQuery polls q until it returns n samples, for at most a minute.
func awaitQuery(t *testing.T, q string, n int) []sample {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		v, ok := query(t, q)
		if ok && len(v) == n {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("query %s: still %d samples (ready %v) after a minute, want %d: %v", q, len(v), ok, n, v)
		}
		<-tick.C
	}
}

// TestPrometheus runs the real Prometheus server against the exporter in a
// namespace with a 100-port range and known load: from 127.0.0.1, 60
// connections in use and 20 in TIME_WAIT toward 127.0.0.2:5432, and 30 in
// use toward 127.0.0.3:6379. Once Prometheus has scraped, the value of each
// state of each pair, queried through its HTTP API, must equal what
// ProbeHeadroom returns and what ss shows, and promtool check metrics must
// find no problem in the exposition.
func TestPrometheus(t *testing.T) {
	promBin := need(t, "prometheus", "prometheus")
	promtool := need(t, "promtool", "prometheus")
	need(t, "ss", "iproute2")
	netnstest.Run(t, netns.Config{PortLo: testLo, PortHi: testHi}, func(t *testing.T) {
		src := netip.MustParseAddr("127.0.0.1")
		db, cache := netip.MustParseAddrPort("127.0.0.2:5432"), netip.MustParseAddrPort("127.0.0.3:6379")
		sockets(t, src.String(), db.String(), 60, 20)
		sockets(t, src.String(), cache.String(), 30, 0)

		serveExporter(t, exporterAddr, safedialprom.HeadroomOpts{})
		scrape := get(t, "http://"+exporterAddr+"/metrics")
		t.Logf("one scrape of this namespace (GET http://%s/metrics):\n%s", exporterAddr, scrape)
		promtoolCheck(t, promtool, scrape)

		startPrometheus(t, promBin, exporterAddr)
		pairsQ := fmt.Sprintf(`safedial_headroom_ports{job="safedial",protocol="tcp",destination=~%q}`, db.String()+"|"+cache.String())
		got := awaitQuery(t, pairsQ, 2*5)
		sort.Slice(got, func(i, j int) bool {
			a, b := got[i].Metric, got[j].Metric
			return a["destination"]+a["state"] < b["destination"]+b["state"]
		})
		var log strings.Builder
		fmt.Fprintf(&log, "%s\n", pairsQ)
		values := map[string]float64{} // destination/state
		for _, s := range got {
			v := s.float(t)
			values[s.Metric["destination"]+"/"+s.Metric["state"]] = v
			fmt.Fprintf(&log, "  source=%s destination=%s state=%s  %g\n", s.Metric["source"], s.Metric["destination"], s.Metric["state"], v)
			if s.Metric["source"] != src.String() {
				t.Errorf("a series of source %q: %v", s.Metric["source"], s.Metric)
			}
		}
		ratios := map[string]float64{}
		ratioQ := fmt.Sprintf(`safedial_headroom_used_ratio{job="safedial",protocol="tcp",destination=~%q}`, db.String()+"|"+cache.String())
		fmt.Fprintf(&log, "%s\n", ratioQ)
		for _, s := range awaitQuery(t, ratioQ, 2) {
			ratios[s.Metric["destination"]] = s.float(t)
			fmt.Fprintf(&log, "  destination=%s  %g\n", s.Metric["destination"], s.float(t))
		}
		for _, q := range []struct {
			query string
			want  []float64
		}{
			{`safedial_local_port_range_ports{job="safedial"}`, []float64{100}},
			{`safedial_tcp_tw_reuse{job="safedial"}`, []float64{0}},
			{`safedial_headroom_probe_errors_total{job="safedial"}`, []float64{0, 0}}, // tcp, udp
		} {
			fmt.Fprintf(&log, "%s\n", q.query)
			for i, s := range awaitQuery(t, q.query, len(q.want)) {
				fmt.Fprintf(&log, "  %s  %g\n", labelString(s.Metric), s.float(t))
				if s.float(t) != q.want[i] {
					t.Errorf("%s: %v = %g, want %g", q.query, s.Metric, s.float(t), q.want[i])
				}
			}
		}
		t.Logf("PromQL through Prometheus's HTTP API (http://%s/api/v1/query):\n%s", prometheusAddr, log.String())

		for _, dst := range []netip.AddrPort{db, cache} {
			h, err := safedial.ProbeHeadroom(context.Background(), "tcp", src, dst)
			if err != nil {
				t.Fatal(err)
			}
			probe := map[string]int{"in_use": h.InUse, "time_wait": h.TimeWait, "reserved": h.Reserved, "bound": h.Bound, "free": h.Free}
			for state, want := range probe {
				if got := values[dst.String()+"/"+state]; got != float64(want) {
					t.Errorf("%v -> %v %s: Prometheus has %g, ProbeHeadroom says %d", src, dst, state, got, want)
				}
			}
			if want := float64(100-h.Free) / 100; ratios[dst.String()] != want {
				t.Errorf("%v -> %v: used ratio %g in Prometheus, want 1 - free/100 = %g", src, dst, ratios[dst.String()], want)
			}

			// ss, state by state: in_use is the sockets it lists not in
			// TIME-WAIT, time_wait those in TIME-WAIT; nothing is reserved
			// (the namespace's ip_local_reserved_ports is empty) or bound
			// (ss lists no listening or unconnected socket in the range);
			// free is the rest of the range.
			inUse, tw := ssStates(t, src, dst, testLo, testHi)
			bound := ssBound(t, testLo, testHi)
			if r, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports"); err != nil || strings.TrimSpace(string(r)) != "" {
				t.Fatalf("ip_local_reserved_ports = %q, %v; want it empty", r, err)
			}
			ss := map[string]int{"in_use": inUse, "time_wait": tw, "reserved": 0, "bound": bound, "free": 100 - inUse - tw - bound}
			if sum := h.InUse + h.TimeWait + h.Reserved + h.Bound + h.Free; sum != 100 {
				t.Errorf("%v -> %v: the probe's five counts sum to %d, not the range's 100", src, dst, sum)
			}
			for state, want := range ss {
				if got := values[dst.String()+"/"+state]; got != float64(want) {
					t.Errorf("%v -> %v %s: Prometheus has %g, ss shows %d", src, dst, state, got, want)
				}
			}
		}
		// And the load the test built.
		for key, want := range map[string]float64{
			db.String() + "/in_use": 60, db.String() + "/time_wait": 20, db.String() + "/free": 20,
			cache.String() + "/in_use": 30, cache.String() + "/time_wait": 0, cache.String() + "/free": 70,
		} {
			if values[key] != want {
				t.Errorf("%s: Prometheus has %g, the test built %g", key, values[key], want)
			}
		}
	})
}
