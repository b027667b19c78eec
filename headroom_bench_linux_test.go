package safedial_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"golang.org/x/sys/unix"
)

// inBenchNamespace runs b in a fresh network namespace configured by c: in
// the parent it re-executes the test binary for b alone and skips b (the
// child's results are printed above); in the child it sets the namespace up
// and returns true.
func inBenchNamespace(b *testing.B, c netns.Config) bool {
	b.Helper()
	if netns.Inside() {
		if err := netns.Setup(); err != nil {
			b.Fatal(err)
		}
		return true
	}
	args := []string{"-test.run=^$", "-test.bench=^" + b.Name() + "$", "-test.benchmem"}
	for _, name := range []string{"test.benchtime", "test.count", "test.timeout"} {
		if f := flag.Lookup(name); f != nil {
			args = append(args, "-"+name+"="+f.Value.String())
		}
	}
	cmd, err := netns.Command(c, os.Args[0], args...)
	if err == nil {
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		err = cmd.Run()
	}
	switch {
	case err != nil && os.Getenv("CI") == "true":
		b.Fatalf("benchmark in a namespace (CI=true, so this fails instead of skipping): %v", err)
	case err != nil:
		b.Skipf("cannot run in a private network namespace, skipping: %v", err)
	}
	b.Skip("measured in a namespace child: its results are above")
	return false
}

// BenchmarkHeadroomPlainSockets (issue 22, item 5) measures, in one run, the
// probes over 18,000 connected sockets to 9,000 destinations (two each; in
// SYN_SENT, on a link whose far end answers nothing), range 30000-60999:
// first plain sockets (net.Dial's: unbound, no IP_BIND_ADDRESS_NO_PORT,
// each judged by a route lookup), then the same number bound to the source
// with IP_BIND_ADDRESS_NO_PORT (safedial's). Each figure is the median of 15
// rounds, in three cycles of the two kinds; the ratios are the targets':
//
//	go test -run '^$' -bench BenchmarkHeadroomPlainSockets -benchtime 1x .
//
// plain/noport: a one-pair ProbeHeadroom over plain sockets against the
// same over NO_PORT ones; all/ss: ProbeAllHeadroom("tcp") against ss with
// the same filter (every TCP socket with a local port in the range).
func BenchmarkHeadroomPlainSockets(b *testing.B) {
	if !inBenchNamespace(b, netns.Config{PortLo: 30000, PortHi: 60999}) {
		return
	}
	ss, err := exec.LookPath("ss")
	if err != nil {
		b.Skipf("ss is needed for the comparison: %v", err)
	}
	for _, args := range [][]string{
		{"link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"link", "set", "v0", "up"}, {"link", "set", "v1", "up"},
		{"addr", "add", "10.1.0.1/24", "dev", "v0"},
		{"neigh", "add", "10.1.0.254", "lladdr", "02:00:00:00:00:01", "dev", "v0"},
		{"route", "add", "10.9.0.0/16", "via", "10.1.0.254", "dev", "v0"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	src := netip.MustParseAddr("10.1.0.1")
	for end := time.Now().Add(10 * time.Second); ; {
		if out, _ := exec.Command("ip", "route", "get", "10.9.0.1").Output(); bytes.Contains(out, []byte("src 10.1.0.1")) {
			break
		} else if time.Now().After(end) {
			b.Fatalf("no route to 10.9.0.0/16 from 10.1.0.1 after 10 s: %s", out)
		}
	}
	const dests, perDest, rounds = 9000, 2, 15
	dst := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, byte(i / 250), byte(i%250 + 1)}), 80)
	}
	build := func(noPort bool) []int {
		fds := make([]int, 0, dests*perDest)
		for i := range dests * perDest {
			s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			fds = append(fds, s)
			if noPort {
				unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				if err := unix.Bind(s, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
					b.Fatal(err)
				}
			}
			d := dst(i % dests)
			if err := unix.Connect(s, &unix.SockaddrInet4{Addr: d.Addr().As4(), Port: int(d.Port())}); err != nil && err != unix.EINPROGRESS {
				b.Fatalf("socket %d: %v", i, err)
			}
		}
		return fds
	}
	timed := func(f func() error) time.Duration {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	med := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1e3
	}
	ctx := context.Background()
	pair := func() error {
		h, err := safedial.ProbeHeadroom(ctx, "tcp", src, dst(0))
		if err == nil && (h.InUse != perDest || h.Bound != 0) {
			err = fmt.Errorf("ProbeHeadroom: %+v, want %d in use and nothing bound", h, perDest)
		}
		return err
	}
	all := func() error {
		hs, err := safedial.ProbeAllHeadroom(ctx, "tcp")
		if err == nil && len(hs) != dests {
			err = fmt.Errorf("ProbeAllHeadroom: %d pairs, want %d", len(hs), dests)
		}
		return err
	}
	ssAll := func() error {
		out, err := exec.Command(ss, "-Htan", "state", "all", "( sport >= :30000 and sport <= :60999 )").Output()
		if n := bytes.Count(out, []byte("\n")); err == nil && n != dests*perDest {
			err = fmt.Errorf("ss: %d sockets, want %d", n, dests*perDest)
		}
		return err
	}
	b.ResetTimer()
	for range b.N {
		// Three cycles of each kind, so that a change of the machine's
		// load weighs on both alike.
		var plain, whole, ssd, noPort []time.Duration
		for range 3 {
			fds := build(false)
			for range rounds / 3 {
				plain = append(plain, timed(pair))
				whole = append(whole, timed(all))
				ssd = append(ssd, timed(ssAll))
			}
			for _, s := range fds {
				unix.Close(s)
			}
			fds = build(true)
			for range rounds / 3 {
				// The same sequence as above, so that both kinds
				// are timed between the same other work.
				noPort = append(noPort, timed(pair))
				timed(all)
				timed(ssAll)
			}
			for _, s := range fds {
				unix.Close(s)
			}
		}
		b.ReportMetric(med(plain), "pair-plain-ms")
		b.ReportMetric(med(noPort), "pair-noport-ms")
		b.ReportMetric(med(plain)/med(noPort), "plain/noport")
		b.ReportMetric(med(whole), "all-plain-ms")
		b.ReportMetric(med(ssd), "ss-ms")
		b.ReportMetric(med(whole)/med(ssd), "all/ss")
	}
}
