// Command reverseproxy is an HTTP reverse proxy whose upstream connections
// are dialed with safedial: a pool of source addresses, an optional
// per-socket port range, statistics on /debug/vars, and exhaustion answered
// as 503 Service Unavailable with a clear body, logged once when a burst
// starts, with the count of requests turned away every 10 s while it lasts
// and when it ends.
//
//	go run ./examples/reverseproxy -listen 127.0.0.1:8080 \
//		-upstream http://127.0.0.2:8000,http://127.0.0.3:8000 \
//		-sources 127.0.0.1,127.0.0.5 -port-range 40000-49999
//
// -sources-from eth0 instead takes the sources from the addresses of eth0,
// following them as they are added and removed (Linux).
//
// Requests are spread over the upstreams in turn. -dialer net uses a plain
// net.Dialer with the first source as LocalAddr instead, for comparison: it
// stops at one connection per ephemeral port and answers 502.
package main

import (
	"context"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/safedial/safedial"
)

type config struct {
	Upstreams   []*url.URL
	Sources     []netip.Addr
	SourcesFrom string // an interface whose addresses are the sources
	PortRange   safedial.PortRange
	Dialer      string // "safedial" or "net"
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	upstreams := flag.String("upstream", "", "comma-separated upstream base URLs (required)")
	sources := flag.String("sources", "", "comma-separated source addresses for upstream connections")
	portRange := flag.String("port-range", "", "per-socket local port range LO-HI (Linux 6.3+)")
	sourcesFrom := flag.String("sources-from", "", "interface whose addresses are the sources, followed as they change (Linux)")
	dialer := flag.String("dialer", "safedial", "safedial, or net for a plain net.Dialer (comparison)")
	flag.Parse()

	cfg, err := parseConfig(*upstreams, *sources, *portRange, *dialer)
	if err == nil {
		cfg, err = cfg.withSourcesFrom(*sourcesFrom)
	}
	if err != nil {
		log.Fatal(err)
	}
	p, err := newProxy(cfg, log.Default())
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("proxying %s to %v with %s", *listen, cfg.Upstreams, cfg.Dialer)
	log.Fatal(http.ListenAndServe(*listen, p))
}

func parseConfig(upstreams, sources, portRange, dialer string) (config, error) {
	cfg := config{Dialer: dialer}
	if dialer != "safedial" && dialer != "net" {
		return cfg, fmt.Errorf("-dialer %q: use safedial or net", dialer)
	}
	for _, s := range strings.Split(upstreams, ",") {
		if s == "" {
			continue
		}
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return cfg, fmt.Errorf("-upstream %q: want a base URL such as http://127.0.0.2:8000", s)
		}
		cfg.Upstreams = append(cfg.Upstreams, u)
	}
	if len(cfg.Upstreams) == 0 {
		return cfg, errors.New("-upstream is required")
	}
	for _, s := range strings.Split(sources, ",") {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return cfg, fmt.Errorf("-sources: %v", err)
		}
		cfg.Sources = append(cfg.Sources, a)
	}
	if portRange != "" {
		lo, hi, ok := strings.Cut(portRange, "-")
		l, err1 := strconv.ParseUint(lo, 10, 16)
		h, err2 := strconv.ParseUint(hi, 10, 16)
		if !ok || err1 != nil || err2 != nil {
			return cfg, fmt.Errorf("-port-range %q: want LO-HI, such as 40000-49999", portRange)
		}
		cfg.PortRange = safedial.PortRange{Lo: uint16(l), Hi: uint16(h)}
	}
	if dialer == "net" && (len(cfg.Sources) > 1 || cfg.PortRange != (safedial.PortRange{})) {
		return cfg, errors.New("-dialer net takes at most one source and no -port-range")
	}
	return cfg, nil
}

// withSourcesFrom sets -sources-from, which excludes -sources and -dialer net.
func (cfg config) withSourcesFrom(iface string) (config, error) {
	switch {
	case iface == "":
		return cfg, nil
	case len(cfg.Sources) > 0:
		return cfg, errors.New("-sources-from and -sources are exclusive: use one of them")
	case cfg.Dialer == "net":
		return cfg, errors.New("-sources-from needs -dialer safedial")
	}
	cfg.SourcesFrom = iface
	return cfg, nil
}

// proxy serves the reverse proxy on / and expvar on /debug/vars.
type proxy struct {
	http.Handler
	dialer *safedial.Dialer // nil with -dialer net
	burst  *burstLogger
	stop   chan struct{} // closed by Close
	// follower keeps the sources with -sources-from; changed gets a token
	// after each change it makes.
	follower *safedial.Follower
	changed  chan struct{}
}

// Close stops the proxy's background logging and address following.
func (p *proxy) Close() { close(p.stop) }

// published is the proxy whose stats /debug/vars shows; expvar names are
// global, so it is published once and follows the newest proxy.
var (
	published   atomic.Pointer[proxy]
	publishOnce sync.Once
)

func newProxy(cfg config, logger *log.Logger) (*proxy, error) {
	p := &proxy{stop: make(chan struct{}), changed: make(chan struct{}, 1)}
	tr := &http.Transport{
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}
	switch cfg.Dialer {
	case "net":
		nd := &net.Dialer{Timeout: 10 * time.Second}
		if len(cfg.Sources) == 1 {
			nd.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(cfg.Sources[0], 0))
		}
		tr.DialContext = nd.DialContext
	default:
		p.dialer = &safedial.Dialer{
			Base:      net.Dialer{Timeout: 10 * time.Second},
			Sources:   cfg.Sources,
			PortRange: cfg.PortRange,
		}
		if cfg.SourcesFrom != "" {
			if err := p.followSources(cfg.SourcesFrom, logger); err != nil {
				return nil, err
			}
		}
		tr.DialContext = p.dialer.DialContext
		published.Store(p)
		publishOnce.Do(func() {
			expvar.Publish("safedial", expvar.Func(func() any {
				if p := published.Load(); p != nil {
					return p.stats()
				}
				return nil
			}))
		})
	}

	burst := &burstLogger{logger: logger, quiet: time.Second, every: 10 * time.Second, now: time.Now}
	p.burst = burst
	go burst.run(p.stop)
	var next atomic.Uint64
	rp := &httputil.ReverseProxy{
		Transport: tr,
		Rewrite: func(r *httputil.ProxyRequest) {
			u := cfg.Upstreams[(next.Add(1)-1)%uint64(len(cfg.Upstreams))]
			r.SetURL(u)
			r.SetXForwarded()
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			var ee *safedial.ExhaustedError
			if errors.As(err, &ee) {
				burst.exhausted(ee)
				w.Header().Set("Retry-After", "1")
				http.Error(w, "503 service unavailable: no local port left for a connection to "+r.URL.Host+
					" (ephemeral ports exhausted); retry later: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			logger.Printf("proxy: %s %s: %v", r.Method, r.URL, err)
			http.Error(w, "502 bad gateway: "+err.Error(), http.StatusBadGateway)
		},
	}
	mux := http.NewServeMux()
	mux.Handle("/", rp)
	mux.Handle("/debug/vars", expvar.Handler())
	p.Handler = mux
	return p, nil
}

// followSources makes the addresses of iface the dialer's sources, from now
// until Close, logging each change.
func (p *proxy) followSources(iface string, logger *log.Logger) error {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-p.stop; cancel() }()
	f, err := (&safedial.FollowConfig{Interface: iface, OnChange: func(srcs []netip.Addr) {
		logger.Printf("proxy: sources from %s: %v", iface, srcs)
		select {
		case p.changed <- struct{}{}:
		default:
		}
	}}).Follow(ctx)
	if err != nil {
		cancel()
		return fmt.Errorf("-sources-from %s: %w", iface, err)
	}
	if f.Pool() == nil {
		logger.Printf("proxy: %s has no address yet: upstream dials fail until it has one", iface)
	}
	p.follower = f
	p.dialer.GetSources = f.GetSources
	return nil
}

// stats is what /debug/vars shows: the Dialer's Stats, with the followed
// pool's per-source counters under "sources" when following an interface.
func (p *proxy) stats() any {
	if p.follower == nil {
		return p.dialer.Stats()
	}
	var srcs []safedial.SourceStats
	if sp := p.follower.Pool(); sp != nil {
		srcs = sp.Stats()
	}
	return struct {
		safedial.Stats
		Sources []safedial.SourceStats `json:"sources,omitempty"`
	}{p.dialer.Stats(), srcs}
}

// burstLogger logs the first exhaustion of a burst and counts the requests
// turned away: every so often while the burst lasts, and when it ends (after
// quiet passes without exhaustion), it logs how many.
type burstLogger struct {
	logger *log.Logger
	quiet  time.Duration // a burst ends after this long without exhaustion
	every  time.Duration // a lasting burst's count is logged this often
	now    func() time.Time

	mu       sync.Mutex
	start    time.Time // of the open burst; zero while none is open
	last     time.Time // the open burst's latest exhaustion
	reported time.Time // when the open burst's count was last logged
	count    int       // requests answered 503 in the open burst
}

// exhausted counts one request answered 503, and logs it if it starts a
// burst.
func (b *burstLogger) exhausted(ee *safedial.ExhaustedError) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.endIfQuiet(now)
	if b.start.IsZero() {
		b.logger.Printf("proxy: ephemeral ports exhausted toward %v, answering 503 until ports free up: %v", ee.Dest, ee)
		b.start, b.reported = now, now
	}
	b.last = now
	b.count++
}

// tick ends a burst that has gone quiet, logging its count, and logs the
// count of a burst that lasts, every so often. run calls it; tests call it
// with their own clock.
func (b *burstLogger) tick() {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	if b.endIfQuiet(now) || b.start.IsZero() || now.Sub(b.reported) < b.every {
		return
	}
	b.logger.Printf("proxy: ports still exhausted: %s answered 503 in the %v since this burst began", requests(b.count), now.Sub(b.start).Round(time.Second))
	b.reported = now
}

// endIfQuiet ends the open burst if it has been quiet long enough, and
// reports whether it did.
func (b *burstLogger) endIfQuiet(now time.Time) bool {
	if b.start.IsZero() || now.Sub(b.last) < b.quiet {
		return false
	}
	b.logger.Printf("proxy: exhaustion over: %s answered 503 in %v", requests(b.count), b.last.Sub(b.start).Round(time.Millisecond))
	b.start, b.count = time.Time{}, 0
	return true
}

func requests(n int) string {
	if n == 1 {
		return "1 request"
	}
	return fmt.Sprintf("%d requests", n)
}

// run calls tick often enough that a burst's end is logged within a quarter
// of quiet, until stop is closed.
func (b *burstLogger) run(stop <-chan struct{}) {
	t := time.NewTicker(b.quiet / 4)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			b.tick()
		}
	}
}
