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
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/safedial/safedial"
)

func headroomUsage(w io.Writer) {
	fmt.Fprint(w, `usage: safedial headroom [-src ADDR] [-dst HOST:PORT] [-udp] [-json] [-watch 2s]

Headroom lists every (source, destination) pair with sockets in the
ephemeral range, fewest free ports first. The columns split the range into
disjoint counts that add up to its size:

	in use     ports of the pair's sockets not in TIME_WAIT
	TIME_WAIT  ports of its TIME_WAIT sockets the kernel will not reuse now
	           ("reused" when tcp_tw_reuse lets the kernel reuse the old ones)
	reserved   ports of net.ipv4.ip_local_reserved_ports
	bound      ports a bind() took for every destination (listeners, bound
	           sockets, sockets bound before connecting)
	free       ports a new connection of the pair can still use

With -udp a UDP port is held for every destination: a row is a source, and
its ports in use include those of sockets on the wildcard address (0.0.0.0,
and [::] unless IPv6-only). There is no TIME_WAIT column. With -udp and
-dst, a row is the headroom of a socket bound to -src toward each address,
or without -src that of an unbound socket (as net.Dial makes it), whose
port no UDP socket of the family may hold on any address.

With -listen ADDR, headroom serves Prometheus instead, as the exporter
subcommand does (its flags: safedial help exporter).

Flags:

`)
	fs, _ := flags(new(options))
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// options are the headroom subcommand's flags.
type options struct {
	src   netip.Addr
	dst   string
	udp   bool
	json  bool
	watch time.Duration
	tty   bool // the output is a terminal: -watch clears it before each sample

	// The clock of -watch; tests replace it.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) bool // false: ctx is done
}

func flags(o *options) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("safedial headroom", flag.ContinueOnError)
	src := fs.String("src", "", "only this source `address` (an address of this host; an IPv6 zone must name an interface)")
	fs.StringVar(&o.dst, "dst", "", "only this destination, `host:port` (a name is resolved; the host must be given)")
	fs.BoolVar(&o.udp, "udp", false, "UDP ports, per source, instead of TCP")
	fs.BoolVar(&o.json, "json", false, "print JSON, one object per sample (with a \"schema\" version; dest \"*\" for a UDP port held for every destination)")
	fs.DurationVar(&o.watch, "watch", 0, "sample every `period`, such as 2s, until interrupted (shorter than 100ms: 100ms)")
	return fs, src
}

func parse(args []string, help io.Writer) (options, error) {
	o := options{now: time.Now, sleep: sleep}
	fs, src := flags(&o)
	fs.SetOutput(io.Discard) // errors are reported once, by the caller
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			headroomUsage(help)
			return o, err
		}
		return o, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return o, usagef("unexpected argument %q", fs.Arg(0))
	}
	if *src != "" {
		a, err := netip.ParseAddr(*src)
		if err != nil {
			return o, usagef("-src %q is not an IP address", *src)
		}
		o.src = a.Unmap()
		switch {
		case o.src.IsUnspecified():
			return o, usagef("-src %s: the unspecified address is no source; leave -src out to see every source", *src)
		case o.src.IsMulticast(), o.src == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return o, usagef("-src %s: connections cannot leave from a multicast or broadcast address", *src)
		}
		if z := o.src.Zone(); z != "" {
			if _, err := net.InterfaceByName(z); err != nil {
				if _, nerr := strconv.Atoi(z); nerr != nil {
					return o, usagef("-src %s: unknown zone %q: %v", *src, z, err)
				}
			}
		}
		if !local(o.src.WithZone("")) {
			return o, usagef("-src %s is not an address of this host (see ip addr)", *src)
		}
	}
	if o.dst != "" {
		host, port, err := net.SplitHostPort(o.dst)
		if err != nil {
			return o, usagef("-dst %q: want host:port: %v", o.dst, err)
		}
		if a, err := netip.ParseAddr(host); host == "" || err == nil && a.IsUnspecified() {
			return o, usagef("-dst %q: give the destination's host: connecting to an empty or unspecified host reaches this host (write 127.0.0.1:%s or [::1]:%s)", o.dst, port, port)
		} else if err == nil && o.src.IsValid() && a.Unmap().Is4() != o.src.Is4() {
			return o, usagef("-src %v and -dst %s are of different address families", o.src, o.dst)
		}
		if p, err := strconv.ParseUint(port, 10, 64); err == nil && (p == 0 || p > 65535) {
			return o, usagef("-dst %q: the port must be 1-65535", o.dst)
		}
	}
	switch {
	case o.watch < 0:
		return o, usagef("-watch %v: the period must be positive (or 0, one sample)", o.watch)
	case o.watch > 0 && o.watch < minWatch:
		o.watch = minWatch // a shorter period would only spin a CPU
	}
	return o, nil
}

// local reports whether a is an address of this host: one of its
// interfaces', or a loopback address (Linux answers for all of 127.0.0.0/8).
// Where the interfaces cannot be listed, it says yes.
func local(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return true
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if b, ok := netip.AddrFromSlice(n.IP); ok && b.Unmap() == a {
				return true
			}
		}
	}
	return false
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// minWatch is the shortest -watch period: each sample walks the kernel's
// socket tables, and a period of 1ns would spin a CPU doing it.
const minWatch = 100 * time.Millisecond

// jsonSchema is the version of -json's output, its "schema" field: it
// changes when a field changes meaning or goes away.
const jsonSchema = 1

// report is what one sample shows.
type report struct {
	Time          time.Time
	Range         safedial.PortRange
	TWReuse       string // TCP only
	ReservedPorts string // as the sysctl has it: "" for none
	Network       string
	Pairs         []safedial.Headroom
}

// jsonReport is -json's output for a report: numbers as numbers, no display
// text, a schema version.
type jsonReport struct {
	Schema        int                `json:"schema"`
	Time          time.Time          `json:"time"`
	Range         safedial.PortRange `json:"ip_local_port_range"`
	TWReuse       *int               `json:"tcp_tw_reuse,omitempty"`  // TCP only; absent when unreadable
	ReservedPorts string             `json:"ip_local_reserved_ports"` // as the sysctl has it: "" for none
	Network       string             `json:"network"`
	Pairs         []jsonPair         `json:"pairs"`
}

func (r report) json() jsonReport {
	j := jsonReport{Schema: jsonSchema, Time: r.Time, Range: r.Range, ReservedPorts: r.ReservedPorts, Network: r.Network, Pairs: make([]jsonPair, len(r.Pairs))}
	if n, err := strconv.Atoi(r.TWReuse); err == nil {
		j.TWReuse = &n
	}
	for i, h := range r.Pairs {
		j.Pairs[i].Headroom = h
	}
	return j
}

// jsonPair is a safedial.Headroom whose dest is "*" where it stands for
// every destination (a UDP port held for all of them).
type jsonPair struct {
	safedial.Headroom
	Dest string `json:"dest"`
}

func (p jsonPair) MarshalJSON() ([]byte, error) {
	type plain jsonPair // without this method
	if p.Headroom.Dest.IsValid() {
		p.Dest = p.Headroom.Dest.String()
	} else {
		p.Dest = "*"
	}
	return json.Marshal(plain(p))
}

// run is the headroom subcommand.
func run(ctx context.Context, args []string, w io.Writer) error {
	o, err := parse(args, w)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	o.tty = terminal(w)
	return watchLoop(ctx, o, w)
}

// terminal reports whether w is a terminal (a character device).
func terminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// watchLoop prints one sample, or one per period with -watch.
func watchLoop(ctx context.Context, o options, w io.Writer) error {
	start := o.now()
	for k := 1; ; k++ {
		r, err := look(ctx, o)
		if err != nil {
			if errors.Is(err, errors.ErrUnsupported) {
				return fmt.Errorf("%v: headroom needs Linux's sock_diag (NETLINK_SOCK_DIAG)", err)
			}
			return err
		}
		if o.json {
			if err := json.NewEncoder(w).Encode(r.json()); err != nil {
				return err
			}
		} else {
			switch {
			case o.watch > 0 && o.tty:
				fmt.Fprint(w, "\033[H\033[2J") // clear the terminal
			case o.watch > 0 && k > 1:
				fmt.Fprintln(w) // a file or a pipe: samples one after the other
			}
			show(w, r, o.watch > 0)
		}
		if o.watch == 0 {
			return nil
		}
		// The k-th sample is due at start + k periods, whatever the
		// probes took; one that is already late is skipped.
		next := start.Add(time.Duration(k) * o.watch)
		for now := o.now(); !next.After(now); k++ {
			next = next.Add(o.watch)
		}
		if !o.sleep(ctx, next.Sub(o.now())) {
			return nil
		}
	}
}

func look(ctx context.Context, o options) (report, error) {
	network := "tcp"
	if o.udp {
		network = "udp"
	}
	r := report{Time: o.now(), Network: network, ReservedPorts: sysctl("net/ipv4/ip_local_reserved_ports")}
	if !o.udp {
		r.TWReuse = sysctl("net/ipv4/tcp_tw_reuse")
	}
	var dsts []netip.AddrPort
	if o.dst != "" {
		var err error
		if dsts, err = resolve(ctx, o.dst, o.src); err != nil {
			return r, err
		}
	}
	if len(dsts) > 0 && (o.src.IsValid() || o.udp) {
		// A source and a destination: probe each pair, shown even
		// without sockets. UDP without -src: an unbound socket's, from
		// the routed source.
		for _, dst := range dsts {
			src := o.src
			if !src.IsValid() {
				hs, err := (&safedial.Dialer{}).Headroom(ctx, network, dst.String())
				if err != nil {
					return r, err
				}
				r.Pairs = append(r.Pairs, hs...)
				continue
			}
			h, err := safedial.ProbeHeadroom(ctx, network, src, dst)
			if err != nil {
				return r, err
			}
			r.Pairs = append(r.Pairs, h)
		}
	} else {
		all, err := safedial.ProbeAllHeadroom(ctx, network)
		if err != nil {
			return r, err
		}
		for _, h := range all {
			if (!o.src.IsValid() || h.Source == o.src.WithZone("")) && (len(dsts) == 0 || contains(dsts, h.Dest)) {
				r.Pairs = append(r.Pairs, h)
			}
		}
	}
	if len(r.Pairs) > 0 {
		r.Range = r.Pairs[0].Range
	} else {
		lo, hi, _ := strings.Cut(sysctl("net/ipv4/ip_local_port_range"), "\t")
		l, _ := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
		h, _ := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
		r.Range = safedial.PortRange{Lo: uint16(l), Hi: uint16(h)}
	}
	if r.Pairs == nil {
		r.Pairs = []safedial.Headroom{}
	}
	return r, nil
}

// resolve returns the addresses of hostport, those of src's family when src
// is given (none of them is a usage error).
func resolve(ctx context.Context, hostport string, src netip.Addr) ([]netip.AddrPort, error) {
	host, service, _ := net.SplitHostPort(hostport)
	port, err := net.DefaultResolver.LookupPort(ctx, "tcp", service)
	if err != nil { // a port name not in /etc/services: the command line's
		return nil, usagef("-dst %q: %v", hostport, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("-dst %q: %v", hostport, err)
	}
	var out []netip.AddrPort
	for _, ip := range ips {
		if ip = ip.Unmap(); !src.IsValid() || ip.Is4() == src.Is4() {
			out = append(out, netip.AddrPortFrom(ip, uint16(port)))
		}
	}
	if len(out) == 0 {
		return nil, usagef("-dst %q has no address of the family of -src %v", hostport, src)
	}
	return out, nil
}

func contains(as []netip.AddrPort, a netip.AddrPort) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

func sysctl(name string) string {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return "unknown"
	}
	s := strings.TrimSpace(string(b))
	return s
}

// twReuseWords says what a value of net.ipv4.tcp_tw_reuse means.
func twReuseWords(v string) string {
	switch v {
	case "0":
		return "TIME_WAIT never reused"
	case "1":
		return "TIME_WAIT reused after tcp_tw_reuse_delay"
	case "2":
		return "TIME_WAIT reused for loopback pairs only"
	}
	return "meaning unknown"
}

func show(w io.Writer, r report, withTime bool) {
	if withTime {
		fmt.Fprintf(w, "%s\n", r.Time.Format(time.RFC3339))
	}
	size := int(r.Range.Hi) - int(r.Range.Lo) + 1
	fmt.Fprintf(w, "ip_local_port_range %v (%d ports)", r.Range, size)
	if r.Network == "tcp" {
		fmt.Fprintf(w, ", tcp_tw_reuse %s (%s)", r.TWReuse, twReuseWords(r.TWReuse))
	}
	reserved := r.ReservedPorts
	if reserved == "" {
		reserved = "(none)"
	}
	fmt.Fprintf(w, ", ip_local_reserved_ports %s\n\n", reserved)
	if len(r.Pairs) == 0 {
		fmt.Fprintf(w, "no %s socket with a local port in the range\n", r.Network)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if r.Network == "udp" {
		fmt.Fprintf(tw, "source\tdestination\tin use\treserved\tfree\tused\t\n")
	} else {
		fmt.Fprintf(tw, "source\tdestination\tin use\tTIME_WAIT\treserved\tbound\tfree\tused\t\n")
	}
	for _, h := range r.Pairs {
		d := "(any)"
		if h.Dest.IsValid() {
			d = h.Dest.String()
		}
		if r.Network == "udp" {
			fmt.Fprintf(tw, "%v\t%s\t%d\t%d\t%d\t%5.1f%%\t%s\n", h.Source, d, h.InUse, h.Reserved, h.Free, 100*h.Used(), bar(h.Used()))
			continue
		}
		timeWait := strconv.Itoa(h.TimeWait)
		if h.TimeWaitReusable {
			timeWait += " reused"
		}
		fmt.Fprintf(tw, "%v\t%s\t%d\t%s\t%d\t%d\t%d\t%5.1f%%\t%s\n", h.Source, d, h.InUse, timeWait, h.Reserved, h.Bound, h.Free, 100*h.Used(), bar(h.Used()))
	}
	tw.Flush()
}

// bar draws share (0 to 1) as 20 cells.
func bar(share float64) string {
	n := int(share*20 + 0.5)
	if share > 0 && n == 0 {
		n = 1
	}
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", 20-n) + "]"
}
