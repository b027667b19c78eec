package main

// The exporter: safedial exporter -listen ADDR (or safedial headroom -listen
// ADDR) serves this namespace's headroom to Prometheus on /metrics, with the
// collector of github.com/safedial/safedial/prometheus.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/safedial/safedial"
	safedialprom "github.com/safedial/safedial/prometheus"
)

const exporterUsage = "usage: safedial exporter -listen ADDR [-top N] [-src ADDR[,ADDR]] [-dst HOST:PORT[,HOST:PORT]] [-min-interval 1s]"

func init() {
	commands = append(commands, command{
		name:    "exporter",
		summary: "serve the headroom to Prometheus on /metrics (also: headroom -listen ADDR)",
		usage:   exporterHelp,
		run: func(ctx context.Context, args []string, stdout io.Writer) error {
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM)
			defer stop()
			return exporter(ctx, args, stdout, os.Stderr, nil)
		},
	})
}

// isExporter reports whether the command line (without the program name)
// asks for the exporter: the exporter subcommand, or headroom with -listen.
func isExporter(args []string) bool {
	if len(args) == 0 {
		return false
	}
	if args[0] == "exporter" {
		return true
	}
	if args[0] != "headroom" {
		return false
	}
	for _, a := range args[1:] {
		if a == "--" {
			break
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "listen" {
			return true
		}
	}
	return false
}

// exporterIdleTimeout closes a keep-alive connection idle this long: without
// it (net/http has no default), idle connections stay open for good, each
// holding a descriptor and a goroutine, and a client that opens them without
// end grows the exporter without bound. A Prometheus scraping at most every
// minute keeps its connection.
var exporterIdleTimeout = 2 * time.Minute

// exporterOptions are the exporter's flags.
type exporterOptions struct {
	listen      string
	top         int
	srcs        []netip.Addr
	dsts        []string // HOST:PORT, resolved at start
	minInterval time.Duration
}

// exporterHelp prints the exporter's help.
func exporterHelp(w io.Writer) {
	fmt.Fprintf(w, `%s

Serves this network namespace's headroom (ephemeral ports left per (source,
destination) pair, TCP and UDP) in the Prometheus format on /metrics,
probing with sock_diag when scraped, at most once per -min-interval. It
exports the -top pairs of each protocol closest to exhaustion, plus every
pair -src and -dst name. "safedial headroom -listen ADDR" is the same.

Flags:

`, exporterUsage)
	fs, _ := exporterFlags()
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// parseExporter parses the flags; -h prints the help to stdout.
func parseExporter(args []string, stdout io.Writer) (exporterOptions, error) {
	fs, o := exporterFlags()
	fs.SetOutput(io.Discard) // errors are reported once, by the caller
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			exporterHelp(stdout)
			return *o, err
		}
		return *o, usagef("%v", err)
	}
	switch {
	case fs.NArg() > 0:
		return *o, usagef("unexpected argument %q", fs.Arg(0))
	case o.listen == "":
		return *o, usagef("-listen ADDR is required")
	case o.top < 0:
		return *o, usagef("-top %d: must not be negative", o.top)
	case o.minInterval < 0:
		return *o, usagef("-min-interval %v: must not be negative", o.minInterval)
	}
	return *o, nil
}

// exporterFlags returns the exporter's flag set and the options it fills.
func exporterFlags() (*flag.FlagSet, *exporterOptions) {
	o := new(exporterOptions)
	fs := flag.NewFlagSet("safedial exporter", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "", "serve /metrics on this address, such as 127.0.0.1:9477 (required)")
	fs.IntVar(&o.top, "top", safedialprom.DefaultTop, "export this many pairs of each protocol, the most used first, besides those -src and -dst name (0: the named ones only)")
	fs.Func("src", "always export the pairs from this source address (repeat, or separate with commas)", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil {
				return err
			}
			o.srcs = append(o.srcs, a.Unmap())
		}
		return nil
	})
	fs.Func("dst", "always export the TCP pairs toward this HOST:PORT, resolved at start (repeat, or separate with commas); with -src, each pair even without sockets", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			f = strings.TrimSpace(f)
			host, _, err := net.SplitHostPort(f)
			if err != nil {
				return fmt.Errorf("want HOST:PORT: %v", err)
			}
			if host == "" {
				return fmt.Errorf("%q has no host", f)
			}
			o.dsts = append(o.dsts, f)
		}
		return nil
	})
	fs.DurationVar(&o.minInterval, "min-interval", safedialprom.DefaultMinInterval, "probe at most once per interval; scrapes in between get the last answer (0: probe on every scrape)")
	return fs, o
}

// exporter serves until ctx is done; -h prints the help to stdout, the log
// goes to stderr. When ready is not nil, it receives the address served
// once the listener is open.
func exporter(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- string) error {
	o, err := parseExporter(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := safedial.ProbeAllHeadroom(ctx, "tcp"); err != nil {
		if errors.Is(err, errors.ErrUnsupported) {
			return fmt.Errorf("%v: the exporter needs Linux's sock_diag (NETLINK_SOCK_DIAG)", err)
		}
		return err
	}
	opts := safedialprom.HeadroomOpts{Top: o.top, Sources: o.srcs, MinInterval: o.minInterval}
	if o.top == 0 {
		opts.Top = -1 // the named pairs only
	}
	if o.minInterval == 0 {
		opts.MinInterval = -1 // every scrape
	}
	for _, d := range o.dsts {
		as, err := exporterResolve(ctx, d)
		if err != nil {
			return err
		}
		opts.Dests = append(opts.Dests, as...)
	}
	logger := log.New(stderr, "safedial exporter: ", log.LstdFlags)
	opts.OnError = func(network string, err error) { logger.Printf("%s probe: %v", network, err) }

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		safedialprom.NewHeadroomCollector(opts),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
	)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: logger})))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "safedial exporter: the headroom metrics are at /metrics")
	})

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: exporterIdleTimeout}
	logger.Printf("serving http://%s/metrics", ln.Addr())
	if ready != nil {
		ready <- ln.Addr().String()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(shut)
	}
}

// exporterResolve returns the addresses of a -dst HOST:PORT.
func exporterResolve(ctx context.Context, hostport string) ([]netip.AddrPort, error) {
	host, service, _ := net.SplitHostPort(hostport)
	port, err := net.DefaultResolver.LookupPort(ctx, "tcp", service)
	if err != nil {
		return nil, usagef("-dst %q: %v", hostport, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("-dst %q: %v", hostport, err)
	}
	out := make([]netip.AddrPort, len(ips))
	for i, ip := range ips {
		out[i] = netip.AddrPortFrom(ip.Unmap(), uint16(port))
	}
	return out, nil
}
