// Command safedial shows how close a host is to ephemeral-port exhaustion.
//
//	safedial headroom [-src ADDR] [-dst HOST:PORT] [-udp] [-json] [-watch 2s]
//
// With no flag, headroom lists every (source, destination) pair of this
// network namespace that has sockets with a local port in the ephemeral
// range, most used first, one line each: source, destination, sockets in use
// (TIME_WAIT included), of those in TIME_WAIT, ports still free for a new
// connection of the pair, the share of the range in use, and a bar. The
// header gives the namespace's net.ipv4.ip_local_port_range, tcp_tw_reuse and
// ip_local_reserved_ports. -src and -dst narrow the list (with both, the pair
// is shown even when it has no socket); -udp counts UDP sockets per source
// instead; -json prints the same as JSON; -watch refreshes it.
//
// It reads the kernel's socket tables through sock_diag (NETLINK_SOCK_DIAG),
// which needs Linux and no privilege, and changes nothing. Install or run it
// with:
//
//	go run github.com/safedial/safedial/cmd/safedial@latest headroom
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

func main() {
	if isExporter(os.Args[1:]) { // safedial exporter, or headroom -listen: exporter.go
		os.Exit(exporterMain(os.Args[2:]))
	}
	if len(os.Args) < 2 || os.Args[1] != "headroom" {
		fmt.Fprintln(os.Stderr, "usage: safedial headroom [-src ADDR] [-dst HOST:PORT] [-udp] [-json] [-watch 2s]")
		os.Exit(2)
	}
	if err := run(context.Background(), os.Args[2:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "safedial:", err)
		os.Exit(1)
	}
}

// options are the headroom subcommand's flags.
type options struct {
	src   netip.Addr
	dst   string
	udp   bool
	json  bool
	watch time.Duration
}

func parse(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("safedial headroom", flag.ContinueOnError)
	src := fs.String("src", "", "only this source address")
	fs.StringVar(&o.dst, "dst", "", "only this destination, HOST:PORT (a host name is resolved)")
	fs.BoolVar(&o.udp, "udp", false, "UDP sockets, per source, instead of TCP")
	fs.BoolVar(&o.json, "json", false, "print JSON")
	fs.DurationVar(&o.watch, "watch", 0, "refresh every interval, such as 2s")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *src != "" {
		a, err := netip.ParseAddr(*src)
		if err != nil {
			return o, fmt.Errorf("-src %q: %v", *src, err)
		}
		o.src = a.Unmap()
	}
	if o.dst != "" {
		if _, _, err := net.SplitHostPort(o.dst); err != nil {
			return o, fmt.Errorf("-dst %q: want HOST:PORT: %v", o.dst, err)
		}
	}
	if o.watch < 0 {
		return o, fmt.Errorf("-watch %v: must not be negative", o.watch)
	}
	return o, nil
}

// report is what one look shows; it is also the JSON output.
type report struct {
	Range         safedial.PortRange  `json:"ip_local_port_range"`
	TWReuse       string              `json:"tcp_tw_reuse"`
	ReservedPorts string              `json:"ip_local_reserved_ports"`
	Network       string              `json:"network"`
	Pairs         []safedial.Headroom `json:"pairs"`
}

func run(ctx context.Context, args []string, w io.Writer) error {
	o, err := parse(args)
	if err != nil {
		return err
	}
	for {
		r, err := look(ctx, o)
		if err != nil {
			if errors.Is(err, errors.ErrUnsupported) {
				return fmt.Errorf("%v: headroom needs Linux's sock_diag (NETLINK_SOCK_DIAG)", err)
			}
			return err
		}
		if o.json {
			if err := json.NewEncoder(w).Encode(r); err != nil {
				return err
			}
		} else {
			if o.watch > 0 {
				fmt.Fprint(w, "\033[H\033[2J") // clear the terminal
			}
			show(w, r)
		}
		if o.watch == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.watch):
		}
	}
}

func look(ctx context.Context, o options) (report, error) {
	network := "tcp"
	if o.udp {
		network = "udp"
	}
	r := report{Network: network, TWReuse: sysctl("net/ipv4/tcp_tw_reuse"), ReservedPorts: sysctl("net/ipv4/ip_local_reserved_ports")}
	var dsts []netip.AddrPort
	if o.dst != "" {
		var err error
		if dsts, err = resolve(ctx, o.dst); err != nil {
			return r, err
		}
	}
	if o.src.IsValid() && len(dsts) > 0 && !o.udp {
		// Both given: probe each pair, shown even without sockets.
		for _, dst := range dsts {
			if dst.Addr().Is4() != o.src.Is4() {
				continue
			}
			h, err := safedial.ProbeHeadroom(ctx, network, o.src, dst)
			if err != nil {
				return r, err
			}
			r.Range = h.Range
			r.Pairs = append(r.Pairs, h)
		}
	} else {
		all, err := safedial.ProbeAllHeadroom(ctx, network)
		if err != nil {
			return r, err
		}
		for _, h := range all {
			if (!o.src.IsValid() || h.Source == o.src) && (len(dsts) == 0 || o.udp || contains(dsts, h.Dest)) {
				r.Pairs = append(r.Pairs, h)
			}
		}
	}
	if r.Range == (safedial.PortRange{}) {
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

func resolve(ctx context.Context, hostport string) ([]netip.AddrPort, error) {
	host, service, _ := net.SplitHostPort(hostport)
	port, err := net.DefaultResolver.LookupPort(ctx, "tcp", service)
	if err != nil {
		return nil, fmt.Errorf("-dst %q: %v", hostport, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("-dst %q: %v", hostport, err)
	}
	var out []netip.AddrPort
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
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
	if s == "" {
		return "(none)"
	}
	return s
}

func show(w io.Writer, r report) {
	size := int(r.Range.Hi) - int(r.Range.Lo) + 1
	fmt.Fprintf(w, "ip_local_port_range %v (%d ports), tcp_tw_reuse %s, ip_local_reserved_ports %s\n\n", r.Range, size, r.TWReuse, r.ReservedPorts)
	if len(r.Pairs) == 0 {
		fmt.Fprintf(w, "no %s socket with a local port in the range\n", r.Network)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	dest := "destination"
	if r.Network == "udp" {
		dest = "destination (UDP: any)"
	}
	fmt.Fprintf(tw, "source\t%s\tin use\tTIME_WAIT\tfree\tused\t\n", dest)
	for _, h := range r.Pairs {
		d := "*"
		if h.Dest.IsValid() {
			d = h.Dest.String()
		}
		fmt.Fprintf(tw, "%v\t%s\t%d\t%d\t%d\t%5.1f%%\t%s\n", h.Source, d, h.InUse, h.TimeWait, h.Free, 100*h.Used(), bar(h.Used()))
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
