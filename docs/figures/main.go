// Command figures measures the timing figures of the README: it runs each
// figure's command several times (examples/exhaustion with -json, or the
// dial benchmarks with -count) and prints, for every figure, the median and
// the range of the runs, with the machine they ran on.
//
//	go run ./docs/figures                  every figure, 5 runs each
//	go run ./docs/figures -runs 7 latency  one mode, 7 runs
//
// Figures: latency, udp, pool, probe (examples/exhaustion -mode NAME) and
// bench (BenchmarkDial and BenchmarkDialRatio). A figure whose claim in the
// README is a bound must hold at the low (or high) end of the range printed
// here, not only at the median. Counts that do not vary (capacity, churn, the
// reverse proxy) are asserted exactly by the tests instead.
//
// It needs what examples/exhaustion needs: Linux, and root or unprivileged
// user namespaces. The machine should be otherwise idle; the load average is
// printed before and after.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

func main() {
	runs := flag.Int("runs", 5, "runs of each figure's command")
	flag.StringVar(&chart, "latency-svg", "", "the last latency run also draws its chart to `FILE` (-svg=FILE)")
	flag.StringVar(&from, "from", "", "read each run's output of a mode from `DIR`/MODE.N.json (N from 1) instead of running the command")
	flag.Parse()
	names := flag.Args()
	if len(names) == 0 {
		names = []string{"latency", "udp", "pool", "probe", "bench"}
	}
	if *runs < 1 {
		fail(fmt.Errorf("-runs %d: must be at least 1", *runs))
	}
	for _, n := range names {
		if _, ok := figures[n]; !ok {
			fail(fmt.Errorf("unknown figure %q: use latency, udp, pool, probe or bench", n))
		}
	}
	machine(os.Stdout)
	bin, err := os.MkdirTemp("", "figures")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(bin)
	exe := filepath.Join(bin, "exhaustion")
	if out, err := exec.Command("go", "build", "-o", exe, "./examples/exhaustion").CombinedOutput(); err != nil {
		fail(fmt.Errorf("go build ./examples/exhaustion (run this from the repository's root): %v\n%s", err, out))
	}
	for _, n := range names {
		f := figures[n]
		fmt.Printf("\n%s: %s, %d runs: median (min-max)\n\n", n, f.command(*runs), *runs)
		var s series
		if err := f.measure(exe, *runs, &s); err != nil {
			fail(fmt.Errorf("%s: %v", n, err))
		}
		s.print(os.Stdout)
	}
	fmt.Printf("\nload average after: %s\n", loadavg())
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "figures:", err)
	os.Exit(1)
}

// machine prints what the figures were measured on.
func machine(w io.Writer) {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	gov, _ := exec.Command("go", "version").Output()
	fmt.Fprintf(w, "machine: Linux %s, %d CPUs, %s; load average before: %s\n",
		strings.TrimSpace(string(kernel)), runtime.NumCPU(), strings.TrimSpace(string(gov)), loadavg())
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// A figure is a command run several times and the values read from each run.
type figure struct {
	command func(runs int) string
	measure func(exe string, runs int, s *series) error
}

var figures = map[string]figure{
	"latency": mode("latency", latencyValues),
	"udp":     mode("udp", udpValues),
	"pool":    mode("pool", poolValues),
	"probe":   mode("probe", probeValues),
	"bench": {
		command: func(runs int) string {
			return fmt.Sprintf("go test -run '^$' -bench 'BenchmarkDial$' -count %d . and go test -run '^$' -bench BenchmarkDialRatio -benchtime 20000x -count %d .", runs, runs)
		},
		measure: bench,
	},
}

// from is -from: a directory of saved outputs; chart is -latency-svg.
var from, chart string

// mode is the figure of examples/exhaustion -mode name, whose JSON output
// values reads.
func mode(name string, values func(out []byte, s *series) error) figure {
	return figure{
		command: func(int) string { return "go run ./examples/exhaustion -mode " + name },
		measure: func(exe string, runs int, s *series) error {
			for i := range runs {
				var out []byte
				var err error
				if from != "" {
					out, err = os.ReadFile(filepath.Join(from, fmt.Sprintf("%s.%d.json", name, i+1)))
				} else {
					args := []string{"-mode", name, "-json"}
					if name == "latency" && chart != "" && i == runs-1 {
						args = append(args, "-svg="+chart)
					}
					cmd := exec.Command(exe, args...)
					cmd.Stderr = os.Stderr
					out, err = cmd.Output()
				}
				if err != nil {
					return err
				}
				if err := values(out, s); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// series holds each figure's value in every run, in the order first seen.
type series struct {
	order []string
	runs  map[string][]float64
}

func (s *series) add(name string, v float64) {
	if s.runs == nil {
		s.runs = map[string][]float64{}
	}
	if _, ok := s.runs[name]; !ok {
		s.order = append(s.order, name)
	}
	s.runs[name] = append(s.runs[name], v)
}

// summary is the median, minimum and maximum of vs.
func summary(vs []float64) (med, lo, hi float64) {
	s := slices.Clone(vs)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[len(s)-1]
}

func (s *series) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tmedian\tmin\tmax\truns")
	for _, name := range s.order {
		vs := s.runs[name]
		med, lo, hi := summary(vs)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", name, num(med), num(lo), num(hi), len(vs))
	}
	tw.Flush()
}

// num prints v with four significant digits, without an exponent.
func num(v float64) string {
	return strconv.FormatFloat(v, 'f', max(0, 3-exponent(v)), 64)
}

func exponent(v float64) int {
	e := 0
	for v = max(v, -v); v >= 10; v /= 10 {
		e++
	}
	for ; v != 0 && v < 1; v *= 10 {
		e--
	}
	return e
}

type latencyRow struct {
	Dialer   string  `json:"dialer"`
	FillPct  int     `json:"fill_pct"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
}

// latencyValues: median and p99 per dialer and fill, and each dialer's
// median over net.Dialer's at the same fill.
func latencyValues(out []byte, s *series) error {
	var rows []latencyRow
	if err := json.Unmarshal(out, &rows); err != nil {
		return err
	}
	costs(rows, "net.Dialer", s)
	return nil
}

// costs adds the rows' medians and p99s, and each dialer's median over
// base's at the same fill.
func costs(rows []latencyRow, base string, s *series) {
	baseAt := map[int]float64{}
	for _, r := range rows {
		if r.Dialer == base {
			baseAt[r.FillPct] = r.MedianUS
		}
	}
	for _, r := range rows {
		s.add(fmt.Sprintf("%s %d%% median µs", r.Dialer, r.FillPct), r.MedianUS)
		s.add(fmt.Sprintf("%s %d%% p99 µs", r.Dialer, r.FillPct), r.P99US)
	}
	for _, r := range rows {
		if b := baseAt[r.FillPct]; r.Dialer != base && b > 0 {
			s.add(fmt.Sprintf("%s / %s %d%% median", r.Dialer, base, r.FillPct), r.MedianUS/b)
		}
	}
}

// udpValues: the cost table of the udp mode (its capacity table is exact
// and asserted by TestUDPMode), and a shared dial's extra cost.
func udpValues(out []byte, s *series) error {
	var v struct {
		Cost []latencyRow `json:"cost"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return err
	}
	costs(v.Cost, "net.Dialer+LocalAddr", s)
	plain := map[int]float64{}
	for _, r := range v.Cost {
		if r.Dialer == "net.Dialer+LocalAddr" {
			plain[r.FillPct] = r.MedianUS
		}
	}
	for _, r := range v.Cost {
		if r.Dialer != "net.Dialer+LocalAddr" {
			s.add(fmt.Sprintf("%s - net.Dialer+LocalAddr %d%% median µs", r.Dialer, r.FillPct), r.MedianUS-plain[r.FillPct])
		}
	}
	return nil
}

// poolValues: every timing of the pool mode, and its ratios.
func poolValues(out []byte, s *series) error {
	var f map[string]any
	if err := json.Unmarshal(out, &f); err != nil {
		return err
	}
	get := func(k string) float64 { v, _ := f[k].(float64); return v }
	for _, k := range []string{"pool_median_us", "pool_mean_us", "pool_p99_us", "alone_median_us", "alone_mean_us", "alone_p99_us", "first_exhausted_us", "later_exhausted_us"} {
		s.add(k, get(k))
	}
	s.add("recovered ms", get("recovered_us")/1e3)
	for _, q := range []string{"median", "mean", "p99"} {
		s.add("pool/alone "+q, get("pool_"+q+"_us")/get("alone_"+q+"_us"))
	}
	s.add("later/first exhausted", get("later_exhausted_us")/get("first_exhausted_us"))
	return nil
}

// probeValues: every column of the probe mode, per size.
func probeValues(out []byte, s *series) error {
	var rows []map[string]any
	if err := json.Unmarshal(out, &rows); err != nil {
		return err
	}
	for _, r := range rows {
		n, _ := r["sockets"].(float64)
		for _, k := range []string{"probe_ms", "probe_allocs", "proc_net_tcp_ms", "ss_ms", "probe_vs_proc", "probe_vs_ss"} {
			v, _ := r[k].(float64)
			s.add(fmt.Sprintf("%.0f sockets %s", n, k), v)
		}
	}
	return nil
}

// benchLine is a line of go test -bench output: the name, then value-unit
// pairs.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// bench runs the dial benchmarks with -count runs and adds ns/op, allocs/op
// and every ratio.
func bench(_ string, runs int, s *series) error {
	for _, args := range [][]string{
		{"test", "-run", "^$", "-bench", "BenchmarkDial$", "-count", strconv.Itoa(runs), "."},
		{"test", "-run", "^$", "-bench", "BenchmarkDialRatio", "-benchtime", "20000x", "-count", strconv.Itoa(runs), "."},
	} {
		cmd := exec.Command("go", args...)
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if err := benchValues(out, args[4] == "BenchmarkDialRatio", s); err != nil {
			return err
		}
	}
	return nil
}

// benchValues adds the values of go test -bench output: for the ratio
// benchmark only its ratios, for the others ns/op and allocs/op.
func benchValues(out []byte, ratios bool, s *series) error {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("%q: %v", sc.Text(), err)
			}
			unit := f[i+1]
			switch {
			case ratios && strings.Contains(unit, "/") && unit != "ns/op" && unit != "B/op" && unit != "allocs/op":
				s.add(m[1]+" "+unit, v)
			case !ratios && (unit == "ns/op" || unit == "allocs/op"):
				s.add(m[1]+" "+unit, v)
			}
		}
	}
	return sc.Err()
}
