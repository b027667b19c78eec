// Command exhaustion reproduces ephemeral-port exhaustion on the real kernel
// and measures how far each dialer gets, each in a fresh private network
// namespace with a narrow ephemeral port range (the host is never touched).
//
// Modes:
//
//	-mode capacity  connections each dialer holds open before its first error
//	-mode churn     dial + client-side close until the first error (TIME_WAIT
//	                piles up), and the sustained rate that implies
//	-mode latency   median and p99 connect latency at 0, 50, 90, 99% of the
//	                range in use (-svg writes a chart to a new file in the
//	                temporary directory, -svg=FILE to FILE)
//	-mode pool      the cost of a pool whose sources fill unevenly: one source
//	                of two full, every source full, ports coming free
//	-mode udp       connected UDP sockets each dialer holds (ShareUDPPorts
//	                shares ports between destinations), and the cost of a
//	                shared dial at 0, 50 and 95% of the range in use; with
//	                -udp-sockets N,M,..., the cost of a dial with N unrelated
//	                UDP sockets on the host
//	-mode probe     the cost of a headroom probe (ProbeHeadroom) against
//	                parsing /proc/net/tcp and running ss, at 1,000, 20,000
//	                and 45,000 sockets
//	-mode poolchurn connections churning at capacity (workers dial, hold,
//	                close, dial again): pools against net.Dialers of the
//	                same capacity
//
// It needs root, or unprivileged user namespaces, on Linux.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
)

const portLo = 40000

type config struct {
	Mode        string `json:"mode"`
	Ports       int    `json:"ports"`
	Hosts       int    `json:"hosts"`
	DestPorts   int    `json:"dest_ports"`
	Sources     int    `json:"sources"`
	Samples     int    `json:"samples"`
	LatencyPort int    `json:"latency_ports"`
	PoolPorts   int    `json:"pool_ports"`
	Pairs       int    `json:"pairs"`
	Sockets     int    `json:"sockets,omitempty"` // probe mode, per namespace

	// poolchurn mode (churn.go)
	ChurnPorts int           `json:"churn_ports,omitempty"`
	Workers    int           `json:"workers,omitempty"`
	Hold       time.Duration `json:"hold,omitempty"`
	Duration   time.Duration `json:"duration,omitempty"`
	Retry      time.Duration `json:"retry,omitempty"`
	Rounds     int           `json:"rounds,omitempty"`

	UDPSockets string `json:"udp_sockets,omitempty"` // udp mode: unrelated UDP socket counts for the cost table
}

// result is one row of capacity or churn output.
type result struct {
	Dialer      string   `json:"dialer"`
	Connections int      `json:"connections"`
	Limit       int      `json:"limit"`
	FirstError  string   `json:"first_error"`
	RatePerSec  *float64 `json:"sustained_per_sec,omitempty"`
}

// latencyRow is one row of latency output.
type latencyRow struct {
	Dialer    string  `json:"dialer"`
	FillPct   int     `json:"fill_pct"`
	MedianUS  float64 `json:"median_us"`
	P99US     float64 `json:"p99_us"`
	FirstFail string  `json:"first_error,omitempty"`
}

// childEnv carries the scenario to the copy of this program that runs in the
// namespace.
const childEnv = "EXHAUSTION_SCENARIO"

type scenario struct {
	Config config `json:"config"`
	Name   string `json:"name"`
}

func main() {
	if os.Getenv(childEnv) != "" {
		if err := runChild(); err != nil {
			fmt.Fprintln(os.Stderr, "exhaustion:", err)
			os.Exit(1)
		}
		return
	}

	var c config
	flag.StringVar(&c.Mode, "mode", "capacity", "capacity, churn, latency, pool, udp, probe or poolchurn")
	churnFlags(&c) // the poolchurn mode's (churn.go)
	flag.IntVar(&c.Ports, "ports", 100, "size of the namespace's ephemeral port range (from 40000)")
	flag.IntVar(&c.Hosts, "hosts", 3, "destination addresses (127.0.0.1 up)")
	flag.IntVar(&c.DestPorts, "dports", 2, "listening ports per destination address")
	flag.IntVar(&c.Sources, "sources", 4, "source addresses in the pool variant (127.0.1.1 up)")
	flag.IntVar(&c.Samples, "samples", 1000, "connects measured per fill level (latency)")
	flag.IntVar(&c.LatencyPort, "latency-ports", 4000, "range size for the latency mode")
	flag.IntVar(&c.PoolPorts, "pool-ports", 4000, "range size for the pool mode")
	flag.IntVar(&c.Pairs, "pairs", 20000, "interleaved dial pairs measured in the pool mode")
	flag.IntVar(&c.Sockets, "sockets", 0, "probe mode: measure at this many sockets only (default 1000, 20000 and 45000)")
	flag.StringVar(&c.UDPSockets, "udp-sockets", "", "udp mode: only the cost of a dial with this many unrelated UDP sockets held, comma-separated (e.g. 0,1000,15000)")
	asJSON := flag.Bool("json", false, "print JSON instead of a table")
	var svg svgFlag
	flag.Var(&svg, "svg", "latency mode: write a chart of latency vs fill to a new file in the temporary directory (-svg=FILE: to FILE)")
	flag.Parse()
	if err := c.check(flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "exhaustion:", err)
		os.Exit(2)
	}
	if svg.set && c.Mode != "latency" {
		fmt.Fprintln(os.Stderr, "exhaustion: -svg draws the latency mode's chart: use it with -mode latency")
		os.Exit(2)
	}
	chart := ""
	if svg.set {
		var err error
		if chart, err = svg.file(); err != nil {
			fmt.Fprintln(os.Stderr, "exhaustion:", err)
			os.Exit(1)
		}
	}
	if err := run(c, *asJSON, chart, os.Stdout); err != nil {
		if svg.set && svg.path == "" {
			os.Remove(chart)
		}
		fmt.Fprintln(os.Stderr, "exhaustion:", err)
		os.Exit(1)
	}
	if chart != "" {
		fmt.Fprintln(os.Stderr, "exhaustion: chart written to", chart)
	}
}

func run(c config, asJSON bool, svg string, w io.Writer) error {
	switch c.Mode {
	case "capacity", "churn":
		var rows []result
		for _, d := range variants(c) {
			if c.Mode == "churn" && !d.churn {
				continue
			}
			var r result
			if err := inNamespace(c, c.Ports, d.name, &r); err != nil {
				return err
			}
			rows = append(rows, r)
		}
		if asJSON {
			return json.NewEncoder(w).Encode(rows)
		}
		printResults(w, c, rows)
	case "latency":
		var rows []latencyRow
		for _, name := range []string{"net.Dialer", "net.Dialer+LocalAddr", "safedial+LocalAddr"} {
			var rs []latencyRow
			if err := inNamespace(c, c.LatencyPort, name, &rs); err != nil {
				return err
			}
			rows = append(rows, rs...)
		}
		if svg != "" {
			if err := os.WriteFile(svg, latencySVG(c, rows), 0o644); err != nil {
				return err
			}
		}
		if asJSON {
			return json.NewEncoder(w).Encode(rows)
		}
		printLatency(w, c, rows)
	case "pool":
		var f poolFigures
		if err := inNamespace(c, c.PoolPorts, "pool", &f); err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(w).Encode(f)
		}
		printPool(w, c, f)
	case "udp":
		if c.UDPSockets != "" {
			return udpTable(c, asJSON, w)
		}
		var rows []result
		for _, v := range udpVariants(c) {
			var r result
			if err := inNamespace(c, c.Ports, v.name, &r); err != nil {
				return err
			}
			rows = append(rows, r)
		}
		var cost []latencyRow
		for _, name := range []string{"net.Dialer+LocalAddr", "safedial+LocalAddr+ShareUDPPorts"} {
			var rs []latencyRow
			if err := inNamespace(c, c.LatencyPort, "cost:"+name, &rs); err != nil {
				return err
			}
			cost = append(cost, rs...)
		}
		if asJSON {
			return json.NewEncoder(w).Encode(struct {
				Capacity []result     `json:"capacity"`
				Cost     []latencyRow `json:"cost"`
			}{rows, cost})
		}
		printUDP(w, c, rows, cost)
	case "probe":
		var rows []probeRow
		sizes := probeSizes
		if c.Sockets > 0 {
			sizes = []int{c.Sockets}
		}
		for _, n := range sizes {
			c.Sockets = n
			var r probeRow
			if err := inNamespaceRange(c, probeLo, probeHi, "probe", &r); err != nil {
				return err
			}
			rows = append(rows, r)
		}
		if asJSON {
			return json.NewEncoder(w).Encode(rows)
		}
		printProbe(w, rows)
	case "poolchurn":
		rows, err := runPoolChurn(c)
		if err != nil {
			return err
		}
		if asJSON {
			return json.NewEncoder(w).Encode(rows)
		}
		printPoolChurn(w, c, rows)
	default:
		return fmt.Errorf("unknown -mode %q: use capacity, churn, latency, pool, udp, probe or poolchurn", c.Mode)
	}
	return nil
}

// inNamespace runs this program for one scenario in a fresh namespace whose
// range has size ports, and decodes its JSON answer into out.
func inNamespace(c config, ports int, name string, out any) error {
	if ports < 2 || portLo+ports-1 > 65535 {
		return fmt.Errorf("range size %d: must be 2 to %d", ports, 65535-portLo+1)
	}
	return inNamespaceRange(c, portLo, portLo+ports-1, name, out)
}

// inNamespaceRange is inNamespace with the range lo-hi.
func inNamespaceRange(c config, lo, hi int, name string, out any) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	const how = "this program needs Linux, and root or unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 where that exists); it never changes the host's settings"
	cmd, err := netns.Command(netns.Config{PortLo: uint16(lo), PortHi: uint16(hi)}, exe)
	if err != nil {
		return fmt.Errorf("cannot create a private network namespace (%w): %s", err, how)
	}
	sc, err := json.Marshal(scenario{Config: c, Name: name})
	if err != nil {
		return err
	}
	cmd.Env = append(cmd.Env, childEnv+"="+string(sc))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("cannot create a private network namespace (%v): %s", err, how)
		}
		return fmt.Errorf("scenario %s: %v: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	return json.Unmarshal(b, out)
}

func printResults(w io.Writer, c config, rows []result) {
	fmt.Fprintf(w, "%s: range %d ports (%d-%d), %s x %s\n\n",
		c.Mode, c.Ports, portLo, portLo+c.Ports-1, count(c.Hosts, "destination address", "destination addresses"), count(c.DestPorts, "port", "ports"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if c.Mode == "churn" {
		fmt.Fprintln(tw, "dialer\tconnections\tlimit\tsustained/s (28232 ports, 60 s TIME_WAIT)\tfirst error")
	} else {
		fmt.Fprintln(tw, "dialer\tconnections\tlimit\tfirst error")
	}
	for _, r := range rows {
		if c.Mode == "churn" {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%s\n", r.Dialer, r.Connections, r.Limit, *r.RatePerSec, r.FirstError)
		} else {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Dialer, r.Connections, r.Limit, r.FirstError)
		}
	}
	tw.Flush()
}

func printLatency(w io.Writer, c config, rows []latencyRow) {
	fmt.Fprintf(w, "connect latency vs fill: range %d ports, one destination, %d connects per level\n\n", c.LatencyPort, c.Samples)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "dialer\tfill\tmedian µs\tp99 µs\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d%%\t%.1f\t%.1f\t%s\n", r.Dialer, r.FillPct, r.MedianUS, r.P99US, r.FirstFail)
	}
	tw.Flush()
}

// A variant is one dialer under test.
type variant struct {
	name  string
	churn bool // also measured in churn mode
	limit int  // connections the 4-tuples allow
	dial  func(ctx context.Context, network, address string) (net.Conn, error)
}

func variants(c config) []variant {
	dests := c.Hosts * c.DestPorts
	src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	var pool []netip.Addr
	for i := 1; i <= c.Sources; i++ {
		pool = append(pool, netip.AddrFrom4([4]byte{127, 0, 1, byte(i)}))
	}
	half := safedial.PortRange{Lo: portLo, Hi: uint16(portLo + c.Ports/2 - 1)}
	return []variant{
		{"net.Dialer", true, c.Ports * dests, (&net.Dialer{}).DialContext},
		{"net.Dialer+LocalAddr", true, c.Ports * dests, (&net.Dialer{LocalAddr: src}).DialContext},
		{"net.Dialer+LocalAddr+SO_REUSEADDR", false, c.Ports * dests, (&net.Dialer{LocalAddr: src, Control: reuseAddr}).DialContext},
		{"safedial+LocalAddr", true, c.Ports * dests, (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}}).DialContext},
		{fmt.Sprintf("safedial+Sources(%d)", c.Sources), true, c.Sources * c.Ports * dests, (&safedial.Dialer{Sources: pool}).DialContext},
		{fmt.Sprintf("safedial+PortRange(%v)", half), false, c.Ports / 2 * dests, (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}, PortRange: half}).DialContext},
	}
}

// reuseAddr is the classic fix, SO_REUSEADDR alone, set the way most code
// does it.
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) { serr = setReuseAddr(fd) }); err != nil {
		return err
	}
	return serr
}

// runChild runs the scenario in childEnv and prints its result as JSON.
func runChild() error {
	var sc scenario
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &sc); err != nil {
		return err
	}
	if err := netns.Setup(); err != nil {
		return err
	}
	c := sc.Config
	switch c.Mode {
	case "pool":
		f, err := poolCost(c)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(f)
	case "poolchurn":
		r, err := poolChurn(c, strings.TrimPrefix(sc.Name, "poolchurn:"))
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(r)
	case "probe":
		r, err := probeCost(c)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(r)
	case "udp":
		var out any
		var err error
		if name, ok := strings.CutPrefix(sc.Name, "cost:"); ok {
			out, err = udpCost(c, name)
		} else if n, ok := strings.CutPrefix(sc.Name, "table:"); ok {
			out, err = udpTableCost(c, n)
		} else if n, ok := strings.CutPrefix(sc.Name, "hold:"); ok {
			return holdUDP(n)
		} else {
			for _, v := range udpVariants(c) {
				if v.name == sc.Name {
					out, err = udpCapacity(c, v)
				}
			}
		}
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	var v *variant
	for _, x := range variants(c) {
		if x.name == sc.Name {
			v = &x
		}
	}
	if v == nil {
		return fmt.Errorf("unknown scenario %q", sc.Name)
	}
	var out any
	var err error
	switch c.Mode {
	case "capacity":
		out, err = capacity(c, *v)
	case "churn":
		out, err = churn(c, *v)
	case "latency":
		out, err = latency(c, *v)
	}
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// listen starts hosts x ports servers that read each connection until EOF
// and close it, and returns their addresses.
func listen(hosts, ports int) ([]string, error) {
	var addrs []string
	for h := 1; h <= hosts; h++ {
		for p := 0; p < ports; p++ {
			ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", h, 8080+p))
			if err != nil {
				return nil, err
			}
			addrs = append(addrs, ln.Addr().String())
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						io.Copy(io.Discard, c)
						c.Close()
					}()
				}
			}()
		}
	}
	return addrs, nil
}

// capacity holds every connection open until the first error.
func capacity(c config, v variant) (result, error) { return dialUntilError(c, v, true) }

// churn dials and closes from the client side, so each connection leaves its
// port in TIME_WAIT (tcp_tw_reuse is 0), until the first error.
func churn(c config, v variant) (result, error) {
	r, err := dialUntilError(c, v, false)
	// Connections per TIME_WAIT period, scaled from this range to the
	// default one (32768-60999).
	rate := float64(r.Connections) / float64(c.Ports) * 28232 / 60
	r.RatePerSec = &rate
	return r, err
}

// dialUntilError dials the destinations in turn until the first error,
// holding the connections open or closing each at once.
func dialUntilError(c config, v variant, hold bool) (result, error) {
	dests, err := listen(c.Hosts, c.DestPorts)
	if err != nil {
		return result{}, err
	}
	return dialLoop(v, "tcp", dests, hold), nil
}

// dialLoop dials dests in turn with v until the first error (at most twice
// v's limit, plus one).
func dialLoop(v variant, network string, dests []string, hold bool) result {
	r := result{Dialer: v.name, Limit: v.limit}
	for i := 0; i < 2*v.limit+1; i++ {
		conn, err := v.dial(context.Background(), network, dests[i%len(dests)])
		if err != nil {
			r.FirstError = describe(err)
			break
		}
		if hold {
			defer conn.Close()
		} else {
			conn.Close()
		}
		r.Connections++
	}
	return r
}

// latency fills the range toward one destination to each level with held
// connections, then times connects that it closes with RST (so they leave
// no TIME_WAIT and the fill stays constant).
func latency(c config, v variant) ([]latencyRow, error) {
	dests, err := listen(1, 1)
	if err != nil {
		return nil, err
	}
	dst := dests[0]
	var rows []latencyRow
	// Warm up (first connects pay for goroutines and page faults).
	for i := 0; i < 50; i++ {
		if conn, err := v.dial(context.Background(), "tcp", dst); err == nil {
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
	}
	held := 0
	for _, pct := range []int{0, 50, 90, 99} {
		for ; held < c.LatencyPort*pct/100; held++ {
			conn, err := v.dial(context.Background(), "tcp", dst)
			if err != nil {
				return nil, fmt.Errorf("filling to %d%%: %w", pct, err)
			}
			defer conn.Close()
		}
		row := latencyRow{Dialer: v.name, FillPct: pct}
		ds := make([]time.Duration, 0, c.Samples)
		for i := 0; i < c.Samples; i++ {
			start := time.Now()
			conn, err := v.dial(context.Background(), "tcp", dst)
			elapsed := time.Since(start)
			if err != nil {
				row.FirstFail = describe(err)
				break
			}
			conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
			ds = append(ds, elapsed)
		}
		row.MedianUS, row.P99US = quantile(ds, 0.5), quantile(ds, 0.99)
		rows = append(rows, row)
	}
	return rows, nil
}

func quantile(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[int(q*float64(len(s)-1))].Nanoseconds()) / 1e3
}

// describe shortens an error to what the table needs: the system call and
// its errno, and whether safedial.Classify calls it exhaustion.
func describe(err error) string {
	s := err.Error()
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		s = sc.Error()
	}
	if errors.Is(safedial.Classify(err), safedial.ErrEphemeralExhausted) {
		s += " (exhaustion)"
	}
	return s
}
