package main

// The exporter: safedial exporter [--web.listen-address ADDR] (or safedial headroom -listen
// ADDR) serves this namespace's headroom to Prometheus on /metrics, with the
// collector of github.com/safedial/safedial/prometheus.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/safedial/safedial"
	safedialprom "github.com/safedial/safedial/prometheus"
)

const exporterUsage = "usage: safedial exporter [--web.listen-address ADDR] [--web.config.file FILE] [-top N] [-src ADDR[,ADDR]] [-dst HOST:PORT[,HOST:PORT]] [-min-interval 1s]"

func init() {
	commands = append(commands, command{
		name:    "exporter",
		summary: "serve the headroom to Prometheus on /metrics (also: headroom -listen ADDR)",
		usage:   exporterHelp,
		run: func(ctx context.Context, args []string, stdout io.Writer) error {
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM)
			defer stop()
			return exporter(ctx, args, stdout, exporterLog, exporterReady)
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
		if strings.HasPrefix(a, "-") && (name == "listen" || name == "web.listen-address") {
			return true
		}
	}
	return false
}

// The exporter's limits. Variables so that tests can shorten them.
var (
	// exporterIdleTimeout closes a keep-alive connection idle this long:
	// without it (net/http has no default), idle connections stay open for
	// good, each holding a descriptor and a goroutine. A Prometheus
	// scraping at most every minute keeps its connection.
	exporterIdleTimeout = 2 * time.Minute
	// exporterWriteTimeout bounds a whole answer, from the end of the
	// request's headers to its last byte: a client that asks and never
	// reads holds its descriptor, its goroutine and its slot of
	// -web.max-requests this long at most. It is past -scrape-timeout, so
	// a slow probe still gets its answer out.
	exporterWriteTimeout = 30 * time.Second
	// exporterDrainTimeout is how long SIGTERM waits for the answers
	// under way before closing their connections.
	exporterDrainTimeout = 5 * time.Second
	// Set by tests: a collector registered beside the others, a hook of
	// the servers' ConnState, one called as an answer of /metrics starts
	// to be written (its collectors have all returned), and where the
	// subcommand sends its addresses.
	exporterExtra     prometheus.Collector
	exporterConnState func(net.Conn, http.ConnState)
	exporterWriting   func()
	exporterReady     chan<- string
	exporterLog       io.Writer = os.Stderr
)

// Defaults of the exporter's flags.
const (
	defaultListen        = ":9477"
	defaultMaxRequests   = 40
	defaultScrapeTimeout = 10 * time.Second
)

// exporterOptions are the exporter's flags.
type exporterOptions struct {
	listen        []string // --web.listen-address and -listen, in order
	webConfig     string
	maxRequests   int
	scrapeTimeout time.Duration
	version       bool
	top           int
	srcs          []netip.Addr
	dsts          []string // HOST:PORT, resolved at each probe
	minInterval   time.Duration
}

// exporterHelp prints the exporter's help.
func exporterHelp(w io.Writer) {
	fmt.Fprintf(w, `%s

Serves this network namespace's headroom (ephemeral ports left per (source,
destination) pair, TCP and UDP) in the Prometheus format on /metrics,
probing with sock_diag when scraped, at most once per -min-interval. It
exports the -top pairs of each protocol closest to exhaustion, plus every
pair -src and -dst name. "safedial headroom -listen ADDR" is the same.
/-/healthy and /-/ready answer 200 while it serves; / is a landing page.

Flags take one dash or two (-listen or --listen). The --web.* flags are
those of the Prometheus exporter-toolkit; -listen is --web.listen-address.

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
	if len(o.listen) == 0 {
		o.listen = []string{defaultListen}
	}
	switch {
	case fs.NArg() > 0:
		return *o, usagef("unexpected argument %q", fs.Arg(0))
	case o.top < 0:
		return *o, usagef("-top %d: must not be negative", o.top)
	case o.minInterval < 0:
		return *o, usagef("-min-interval %v: must not be negative", o.minInterval)
	case o.maxRequests < 0:
		return *o, usagef("--web.max-requests %d: must not be negative (0: no limit)", o.maxRequests)
	case o.scrapeTimeout <= 0:
		return *o, usagef("-scrape-timeout %v: must be positive", o.scrapeTimeout)
	}
	return *o, nil
}

// exporterFlags returns the exporter's flag set and the options it fills.
//
// The flag package, not kingpin (which exporter-toolkit's kingpinflag
// uses): safedial's other flags and subcommands are the flag package's,
// and it accepts --web.listen-address as well as -listen, so both the
// toolkit's names and the existing ones work with one parser.
func exporterFlags() (*flag.FlagSet, *exporterOptions) {
	o := new(exporterOptions)
	fs := flag.NewFlagSet("safedial exporter", flag.ContinueOnError)
	listen := func(s string) error {
		if s == "" {
			return errors.New("empty address")
		}
		o.listen = append(o.listen, s)
		return nil
	}
	fs.Func("web.listen-address", "serve on this address (repeat for several); default "+defaultListen, listen)
	fs.Func("listen", "the same as --web.listen-address", listen)
	fs.StringVar(&o.webConfig, "web.config.file", "", "exporter-toolkit web configuration file: TLS and basic authentication")
	fs.IntVar(&o.maxRequests, "web.max-requests", defaultMaxRequests, "answers of /metrics under way at once, until the last byte is written; more get 503 (0: no limit)")
	fs.DurationVar(&o.scrapeTimeout, "scrape-timeout", defaultScrapeTimeout, "a scrape that takes longer gets 503; also bounds each probe")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
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
	fs.Func("dst", "always export the TCP pairs toward this HOST:PORT, resolved at each probe (repeat, or separate with commas); with -src, each pair even without sockets", func(s string) error {
		for _, f := range strings.Split(s, ",") {
			f = strings.TrimSpace(f)
			host, port, err := net.SplitHostPort(f)
			if err != nil {
				return fmt.Errorf("want HOST:PORT: %v", err)
			}
			if host == "" {
				return fmt.Errorf("%q has no host", f)
			}
			if n, err := strconv.Atoi(port); err == nil && (n < 1 || n > 65535) {
				return fmt.Errorf("port %s out of range 1-65535", port)
			}
			o.dsts = append(o.dsts, f)
		}
		return nil
	})
	fs.DurationVar(&o.minInterval, "min-interval", safedialprom.DefaultMinInterval, "probe at most once per interval (with a quarter of it as slack for scrape jitter); scrapes in between get the last answer (0: probe on every scrape)")
	return fs, o
}

// exporter serves until ctx is done; -h prints the help to stdout, the log
// goes to stderr. When ready is not nil, it receives the addresses served
// (one string, comma-separated) once the listeners are open.
func exporter(ctx context.Context, args []string, stdout, stderr io.Writer, ready chan<- string) error {
	o, err := parseExporter(args, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if o.version {
		fmt.Fprintln(stdout, version())
		return nil
	}
	if o.webConfig != "" {
		if err := web.Validate(o.webConfig); err != nil {
			return fmt.Errorf("--web.config.file %s: %v", o.webConfig, err)
		}
	}
	if _, err := safedial.ProbeAllHeadroom(ctx, "tcp"); err != nil {
		if errors.Is(err, errors.ErrUnsupported) {
			return fmt.Errorf("%v: the exporter needs Linux's sock_diag (NETLINK_SOCK_DIAG)", err)
		}
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	opts := safedialprom.HeadroomOpts{Top: o.top, Sources: o.srcs, MinInterval: o.minInterval, Timeout: o.scrapeTimeout}
	if o.top == 0 {
		opts.Top = -1 // the named pairs only
	}
	if o.minInterval == 0 {
		opts.MinInterval = -1 // every scrape
	}
	if len(o.dsts) > 0 {
		opts.ResolveDests = func(ctx context.Context) ([]netip.AddrPort, error) {
			var out []netip.AddrPort
			var errs []error
			for _, d := range o.dsts {
				as, err := exporterResolve(ctx, d)
				errs = append(errs, err)
				out = append(out, as...)
			}
			return out, errors.Join(errs...)
		}
	}
	opts.OnError = func(network string, err error) { logger.Warn("probe failed", "protocol", network, "err", err) }

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		safedialprom.NewHeadroomCollector(opts),
		buildInfo(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
	)
	if exporterExtra != nil {
		reg.MustRegister(exporterExtra)
	}
	mux := http.NewServeMux()
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError),
		Timeout:  o.scrapeTimeout,
	})
	mux.Handle("/metrics", limitInFlight(o.maxRequests, promhttp.InstrumentMetricHandler(reg, metrics)))
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "Healthy") })
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "Ready") })
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "safedial exporter",
		Description: "Ephemeral ports left per (source, destination) pair of this network namespace",
		Version:     version(),
		Profiling:   "false", // no /debug/pprof here
		Links: []web.LandingLinks{
			{Address: "/metrics", Text: "Metrics"},
			{Address: "/-/healthy", Text: "Health"},
		},
	})
	if err != nil {
		return err
	}
	mux.Handle("/", landing)

	// One server per address: web.Serve wraps a server's handler for the
	// web configuration, which must not happen twice on one server.
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, a := range o.listen {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
	}
	errc := make(chan error, len(lns))
	var srvs []*http.Server
	var addrs []string
	flags := &web.FlagConfig{WebListenAddresses: &o.listen, WebSystemdSocket: new(bool), WebConfigFile: &o.webConfig}
	for _, ln := range lns {
		srv := &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			WriteTimeout:      exporterWriteTimeout,
			IdleTimeout:       exporterIdleTimeout,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
			ConnState:         exporterConnState,
		}
		srvs = append(srvs, srv)
		addrs = append(addrs, ln.Addr().String())
		go func() { errc <- web.Serve(ln, srv, flags, logger) }()
	}
	if ready != nil {
		ready <- strings.Join(addrs, ",")
	}
	select {
	case err := <-errc:
		for _, srv := range srvs {
			srv.Close()
		}
		return err
	case <-ctx.Done():
	}
	// A bounded drain: the answers under way get exporterDrainTimeout to
	// finish, then their connections are closed. Either way the exporter
	// was asked to stop and did: exit 0.
	shut, cancel := context.WithTimeout(context.Background(), exporterDrainTimeout)
	defer cancel()
	for _, srv := range srvs {
		if err := srv.Shutdown(shut); err != nil {
			logger.Info("drain timed out; closing the connections still open", "after", exporterDrainTimeout)
			srv.Close()
		}
	}
	return nil
}

// limitInFlight serves at most n requests at once with h, from the request
// to the last byte written (so a client that does not read holds its
// slot); the others get 503 at once.
// With n 0 there is no limit, as node_exporter's --web.max-requests 0.
func limitInFlight(n int, h http.Handler) http.Handler {
	if n == 0 {
		return h
	}
	sem := make(chan struct{}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
			if exporterWriting != nil {
				w = &writingHook{ResponseWriter: w}
			}
			h.ServeHTTP(w, r)
		default:
			w.Header().Set("Connection", "close") // its descriptor is let go at once
			http.Error(w, fmt.Sprintf("%d scrapes are under way (--web.max-requests); try again later", n), http.StatusServiceUnavailable)
		}
	})
}

// writingHook calls exporterWriting at the first write of an answer.
type writingHook struct {
	http.ResponseWriter
	once sync.Once
}

func (w *writingHook) Write(b []byte) (int, error) {
	w.once.Do(exporterWriting)
	return w.ResponseWriter.Write(b)
}

// buildInfo is the safedial_build_info gauge, always 1, with the labels of
// client_golang's version collector (collectors/version).
func buildInfo() prometheus.Collector {
	l := prometheus.Labels{"version": version(), "revision": "unknown", "branch": "unknown",
		"goversion": runtime.Version(), "goos": runtime.GOOS, "goarch": runtime.GOARCH, "tags": "unknown"}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				l["revision"] = s.Value
			case "-tags":
				l["tags"] = s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "safedial_build_info",
		Help:        "A metric with a constant '1' value labeled by version, revision, branch, goversion from which safedial was built, and the goos and goarch for the build.",
		ConstLabels: l,
	})
	g.Set(1)
	return g
}

// exporterResolve returns the addresses of a -dst HOST:PORT.
func exporterResolve(ctx context.Context, hostport string) ([]netip.AddrPort, error) {
	host, service, _ := net.SplitHostPort(hostport)
	port, err := net.DefaultResolver.LookupPort(ctx, "tcp", service)
	if err != nil {
		return nil, fmt.Errorf("-dst %q: %v", hostport, err)
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
