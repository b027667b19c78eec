package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/safedial/safedial"
)

// probeRow is one line of the probe mode: the cost of one headroom reading
// with n sockets in the namespace, three ways.
type probeRow struct {
	Sockets       int     `json:"sockets"`
	Matching      int     `json:"matching"`
	ProbeMS       float64 `json:"probe_ms"`
	ProbeAllocs   float64 `json:"probe_allocs"`
	ProcMS        float64 `json:"proc_net_tcp_ms"`
	ProcMatching  int     `json:"proc_matching"`
	SSMS          float64 `json:"ss_ms"`
	SSMatching    int     `json:"ss_matching"`
	ProbeVsProcX  float64 `json:"probe_vs_proc"`
	ProbeVsSSX    float64 `json:"probe_vs_ss"`
	SSUnavailable string  `json:"ss_unavailable,omitempty"`
}

// probeSizes are the socket counts the probe mode measures at.
var probeSizes = []int{1000, 20000, 45000}

const probeLo, probeHi = 30000, 60999

// probeCost fills the namespace with n sockets in TIME_WAIT, spread over 4
// destinations from 127.0.0.1, then times reading the headroom of
// 127.0.0.1 -> 127.0.0.2:8080 (a quarter of them) with ProbeHeadroom, with a
// parse of /proc/net/tcp{,6} and with ss and the same filter.
func probeCost(c config) (probeRow, error) {
	n := c.Sockets
	row := probeRow{Sockets: n}
	dests := make([]string, 4)
	for i := range dests {
		addr := fmt.Sprintf("127.0.0.%d:8080", i+2)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return row, err
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { io.Copy(io.Discard, c); c.Close() }()
			}
		}()
		dests[i] = addr
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, ControlContext: (&safedial.Dialer{}).ControlContext}
	for i := range n {
		conn, err := d.Dial("tcp", dests[i%len(dests)])
		if err != nil {
			return row, fmt.Errorf("socket %d: %w", i, err)
		}
		conn.Close()
	}
	src, dst := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort(dests[0])
	// Wait until the server side has closed every connection (each client
	// socket then is in TIME_WAIT): the count stops changing.
	for prev := -1; ; time.Sleep(100 * time.Millisecond) {
		h, err := safedial.ProbeHeadroom(context.Background(), "tcp", src, dst)
		if err != nil {
			return row, err
		}
		if h.TimeWait == prev && h.InUse == 0 {
			row.Matching = h.TimeWait
			break
		}
		prev = h.TimeWait
	}

	const rounds = 15
	probe := median(rounds, func() {
		safedial.ProbeHeadroom(context.Background(), "tcp", src, dst)
	})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range rounds {
		safedial.ProbeHeadroom(context.Background(), "tcp", src, dst)
	}
	runtime.ReadMemStats(&after)
	row.ProbeMS = ms(probe)
	row.ProbeAllocs = float64(after.Mallocs-before.Mallocs) / rounds

	var procErr error
	row.ProcMS = ms(median(rounds, func() { row.ProcMatching, procErr = procCount(src, dst) }))
	if procErr != nil {
		return row, procErr
	}
	row.ProbeVsProcX = row.ProbeMS / row.ProcMS

	ss, err := exec.LookPath("ss")
	if err != nil {
		row.SSUnavailable = err.Error()
		return row, nil
	}
	var ssErr error
	row.SSMS = ms(median(rounds, func() {
		out, err := exec.Command(ss, "-Htan", "state", "all", "src", src.String(), "dst", dst.String()).Output()
		row.SSMatching, ssErr = bytes.Count(out, []byte("\n")), err
	}))
	if ssErr != nil {
		return row, ssErr
	}
	row.ProbeVsSSX = row.ProbeMS / row.SSMS
	return row, nil
}

func median(rounds int, f func()) time.Duration {
	ds := make([]time.Duration, rounds)
	for i := range ds {
		start := time.Now()
		f()
		ds[i] = time.Since(start)
	}
	return time.Duration(quantile(ds, 0.5) * 1e3)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

// procCount counts the sockets from src to dst the way a program without
// sock_diag would: parsing /proc/net/tcp and /proc/net/tcp6.
func procCount(src netip.Addr, dst netip.AddrPort) (int, error) {
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			return 0, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			fields := bytes.Fields(sc.Bytes())
			if len(fields) < 4 {
				continue
			}
			l, okL := procAddr(fields[1])
			r, okR := procAddr(fields[2])
			if okL && okR && l.Addr() == src && r == dst && l.Port() >= probeLo && l.Port() <= probeHi {
				n++
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// procAddr parses "0100007F:1F90" (the address as the kernel stores it, in
// host order per 32-bit word; the port in hex).
func procAddr(b []byte) (netip.AddrPort, bool) {
	i := bytes.IndexByte(b, ':')
	if i < 0 {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(string(b[:i]))
	port, err2 := strconv.ParseUint(string(b[i+1:]), 16, 16)
	if err != nil || err2 != nil {
		return netip.AddrPort{}, false
	}
	for w := 0; w+4 <= len(raw); w += 4 { // each 32-bit word is little-endian here
		raw[w], raw[w+1], raw[w+2], raw[w+3] = raw[w+3], raw[w+2], raw[w+1], raw[w]
	}
	a, ok := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a.Unmap(), uint16(port)), ok
}

func printProbe(w io.Writer, rows []probeRow) {
	fmt.Fprintf(w, "headroom of one (source, destination) pair: a quarter of the sockets, all in TIME_WAIT; range %d-%d; median of 15\n\n", probeLo, probeHi)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "sockets\tmatching\tProbeHeadroom ms\tallocs/probe\t/proc/net/tcp ms\tss ms\tprobe/proc\tprobe/ss\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%d\t%.2f\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", r.Sockets, r.Matching, r.ProbeMS, r.ProbeAllocs, r.ProcMS, r.SSMS, r.ProbeVsProcX, r.ProbeVsSSX)
	}
	tw.Flush()
}
