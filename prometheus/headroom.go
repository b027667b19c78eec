package safedialprom

import (
	"cmp"
	"context"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/safedial/safedial"
)

// DefaultTop is the number of pairs per protocol a [HeadroomCollector]
// exports when [HeadroomOpts] leaves Top at zero.
const DefaultTop = 100

// DefaultMinInterval is the least time between two probes of a
// [HeadroomCollector] when [HeadroomOpts] leaves MinInterval at zero.
const DefaultMinInterval = time.Second

// DefaultMaxStale is how long a [HeadroomCollector] exports the last good
// answer of failing probes when [HeadroomOpts] leaves MaxStale at zero.
const DefaultMaxStale = 5 * time.Minute

// HeadroomOpts configures a [HeadroomCollector]. The zero value exports the
// [DefaultTop] pairs of each protocol closest to exhaustion, probing at most
// once per [DefaultMinInterval].
type HeadroomOpts struct {
	// Top is how many pairs of each protocol are exported, the highest
	// used ratio first (ties in source, then destination order), besides
	// the named ones. Zero means DefaultTop; a negative value exports the
	// named pairs only.
	Top int
	// Sources and Dests name pairs that are exported beyond Top. With
	// both, the TCP pairs from one of Sources to one of Dests of the same
	// family are always exported, even without sockets (probed then with
	// [safedial.ProbeHeadroom], one more walk of the kernel's table each;
	// should that probe fail, the error is counted and the pair's last good
	// answer kept for MaxStale, as for a failed probe of every pair).
	// A source or destination named alone (Sources only: TCP and UDP pairs
	// from it; Dests only: TCP pairs toward it; UDP pairs always go by
	// source) may have many pairs: those come first, the most used first,
	// capped at Top (DefaultTop when Top is negative).
	Sources []netip.Addr
	Dests   []netip.AddrPort
	// ResolveDests, when set, is called at each probe for more Dests (for
	// example a host name's addresses, which may change or not resolve
	// yet). An error is counted as a TCP probe error and reported to
	// OnError; the addresses it returned are used all the same, with those
	// of its last answer without error (for MaxStale), so that a name that
	// fails to resolve for a while keeps its pairs.
	ResolveDests func(ctx context.Context) ([]netip.AddrPort, error)
	// MinInterval is the least time between two probes, less a quarter
	// of it for scrape jitter: a scrape within 3/4 MinInterval of the last
	// probe gets the last probe's answer, and concurrent scrapes share one
	// probe, so that a storm of scrapes never becomes a storm of probes.
	// Set it no longer than the scrape interval. Zero means
	// DefaultMinInterval; a negative value probes on every scrape.
	MinInterval time.Duration
	// MaxStale is how long a protocol's last good answer is exported after
	// its probes start failing, with safedial_headroom_probe_age_seconds
	// saying how old it is, so that one failed probe does not end the
	// series and restart the alerts' for: clocks. Zero means
	// DefaultMaxStale; a negative value drops the pairs at the first
	// failure.
	MaxStale time.Duration
	// Timeout bounds one probe of one protocol. Zero means 10 seconds. A
	// scrape that comes during another's probe waits for it at most twice
	// this, then exports the last answer.
	Timeout time.Duration
	// OnError, when set, is called with each probe error (network is tcp
	// or udp), for example to log it: at most once per probe (so per
	// MinInterval) and network for the probe of every pair, plus once per
	// named pair whose own probe fails.
	OnError func(network string, err error)
}

// HeadroomCollector is a [prometheus.Collector] of the headroom of every
// (source, destination) pair of this host's network namespace, TCP and UDP,
// found with [safedial.ProbeAllHeadroom] when a scrape asks for it. Its
// metrics are listed in the package documentation. It is safe for
// concurrent use; make one with [NewHeadroomCollector].
//
// A probe that fails adds to safedial_headroom_probe_errors_total; the
// protocol's last good answer is exported for MaxStale more (its age in
// safedial_headroom_probe_age_seconds), then its pairs are left out. The
// scrape itself still succeeds, so that the error counter reaches
// Prometheus. Where sock_diag
// is unavailable (systems other than Linux), every probe fails.
type HeadroomCollector struct {
	opts    HeadroomOpts
	sources map[netip.Addr]bool
	dests   map[netip.AddrPort]bool // Dests, and ResolveDests' last answer
	fixed   []netip.AddrPort        // Dests, as keys of dests
	byDest  bool                    // Dests or ResolveDests is set

	// Injected by tests.
	probeAll func(ctx context.Context, network string) ([]safedial.Headroom, error)
	probe    func(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort) (safedial.Headroom, error)
	now      func() time.Time

	mu     sync.Mutex // guards what follows; released while probing
	gate   probeGate
	at     time.Time // of the last probe; zero before the first
	last   [2]protoResult
	errors [2]uint64
	rng    int // size of ip_local_port_range; -1 when unknown
	twRe   int // net.ipv4.tcp_tw_reuse; -1 when unknown

	// The probe's own state, used by one probe at a time (the gate's).
	// named holds each named TCP pair's last good answer, kept for
	// MaxStale when its own probe fails; resolved is ResolveDests' last
	// answer without error, at resolvedAt.
	named      map[pairKey]keptPair
	resolved   []netip.AddrPort
	resolvedAt time.Time
}

// probed is what a probe found, applied to the collector under its lock.
type probed struct {
	last      [2]protoResult
	errors    [2]uint64 // failures to add
	rng, twRe int
}

// protoResult is what the last probe of one protocol found.
type protoResult struct {
	pairs    []safedial.Headroom // exported, in order
	seen     int                 // pairs probed
	duration time.Duration
	at       time.Time // of the probe that found pairs; zero if none
	// oldest is when the oldest answer among pairs was found, at or
	// before at: a named pair's kept answer may be older.
	oldest time.Time
	failed bool // no good answer to export
}

// pairKey names a (source, destination) pair.
type pairKey struct {
	src netip.Addr
	dst netip.AddrPort
}

// keptPair is a named pair's last good answer and when it was found.
type keptPair struct {
	h  safedial.Headroom
	at time.Time
}

// networks are the networks probed, in the order of HeadroomCollector.last.
var networks = [2]string{"tcp", "udp"}

var (
	rangeDesc = prometheus.NewDesc("safedial_local_port_range_ports",
		"Size of the network namespace's ephemeral port range (net.ipv4.ip_local_port_range), which each (source, destination) pair can use once.",
		nil, nil)
	twReuseDesc = prometheus.NewDesc("safedial_tcp_tw_reuse",
		"The network namespace's net.ipv4.tcp_tw_reuse: 0, a port in TIME_WAIT is never reused for a new outgoing connection; 1, it may be; 2, on loopback only.",
		nil, nil)
	pairsDesc = prometheus.NewDesc("safedial_headroom_pairs",
		"(Source, destination) pairs the last probe found with sockets in the ephemeral range, plus named pairs without sockets.",
		[]string{"protocol"}, nil)
	exportedDesc = prometheus.NewDesc("safedial_headroom_pairs_exported",
		"Pairs exported in safedial_headroom_ports: the top N by used ratio plus the named ones; safedial_headroom_pairs minus this many were cut.",
		[]string{"protocol"}, nil)
	durationDesc = prometheus.NewDesc("safedial_headroom_probe_duration_seconds",
		"Duration of the last headroom probe (a sock_diag dump per address family, filtered by the kernel to the ephemeral range).",
		[]string{"protocol"}, nil)
)

// NewHeadroomCollector returns a collector of this host's headroom,
// configured by opts (see [HeadroomOpts]). Register it with a
// [prometheus.Registerer].
func NewHeadroomCollector(opts HeadroomOpts) *HeadroomCollector {
	if opts.Top == 0 {
		opts.Top = DefaultTop
	}
	if opts.MinInterval == 0 {
		opts.MinInterval = DefaultMinInterval
	}
	if opts.MaxStale == 0 {
		opts.MaxStale = DefaultMaxStale
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	c := &HeadroomCollector{
		opts:     opts,
		sources:  make(map[netip.Addr]bool),
		dests:    make(map[netip.AddrPort]bool),
		named:    make(map[pairKey]keptPair),
		probeAll: safedial.ProbeAllHeadroom,
		probe:    safedial.ProbeHeadroom,
		now:      time.Now,
	}
	// The kernel's sockets have no zone: a named ::1%lo is the pair of
	// ::1, not a second pair exported beside it.
	for _, s := range opts.Sources {
		c.sources[s.Unmap().WithZone("")] = true
	}
	for _, d := range opts.Dests {
		c.fixed = append(c.fixed, netip.AddrPortFrom(d.Addr().Unmap().WithZone(""), d.Port()))
	}
	c.byDest = len(opts.Dests) > 0 || opts.ResolveDests != nil
	c.setDests(nil)
	return c
}

// Describe sends the descriptors of every metric c collects.
func (c *HeadroomCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range [...]*prometheus.Desc{hostDescs.ports, hostDescs.used, rangeDesc, twReuseDesc, pairsDesc, exportedDesc, durationDesc, hostDescs.age, hostDescs.errors} {
		ch <- d
	}
}

// Collect probes (unless the last probe is more recent than MinInterval)
// and sends the metrics.
func (c *HeadroomCollector) Collect(ch chan<- prometheus.Metric) {
	// The age of the last probe is taken from when this scrape asked, not
	// from when it got the lock: a scrape that waited for a probe slower
	// than MinInterval gets that probe's answer instead of probing again.
	asked := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	// A scrape that waited for a probe under way takes its answer.
	if !c.gate.wait(&c.mu, time.Duration(len(networks))*c.opts.Timeout) && probeDue(c.at, asked, c.opts.MinInterval) {
		c.at = c.now()
		p := probed{last: c.last}
		c.gate.run(&c.mu, func() { c.probe1(&p) }, func() {
			c.last, c.rng, c.twRe = p.last, p.rng, p.twRe
			c.errors[0] += p.errors[0]
			c.errors[1] += p.errors[1]
		})
	}
	if c.rng >= 0 {
		ch <- prometheus.MustNewConstMetric(rangeDesc, prometheus.GaugeValue, float64(c.rng))
	}
	if c.twRe >= 0 {
		ch <- prometheus.MustNewConstMetric(twReuseDesc, prometheus.GaugeValue, float64(c.twRe))
	}
	for i, network := range networks {
		r := &c.last[i]
		ch <- prometheus.MustNewConstMetric(hostDescs.errors, prometheus.CounterValue, float64(c.errors[i]), network)
		ch <- prometheus.MustNewConstMetric(durationDesc, prometheus.GaugeValue, r.duration.Seconds(), network)
		if r.failed {
			continue
		}
		ch <- prometheus.MustNewConstMetric(hostDescs.age, prometheus.GaugeValue, max(asked.Sub(r.oldest), 0).Seconds(), network)
		ch <- prometheus.MustNewConstMetric(pairsDesc, prometheus.GaugeValue, float64(r.seen), network)
		ch <- prometheus.MustNewConstMetric(exportedDesc, prometheus.GaugeValue, float64(len(r.pairs)), network)
		for j := range r.pairs {
			hostDescs.sendPair(ch, network, &r.pairs[j])
		}
	}
}

// probe1 probes both protocols and the sysctls into p, which holds the
// last answer on entry. It runs without c.mu (it calls user code), one
// probe at a time.
func (c *HeadroomCollector) probe1(p *probed) {
	p.rng, p.twRe = readRange(), readInt("net/ipv4/tcp_tw_reuse")
	for i, network := range networks {
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
		fail := func(err error) {
			p.errors[i]++
			if c.opts.OnError != nil {
				c.opts.OnError(network, err)
			}
		}
		start := c.now()
		if network == "tcp" && c.opts.ResolveDests != nil {
			c.resolve(ctx, start, fail)
		}
		prev := &p.last[i]
		pairs, seen, oldest, err := c.pick(ctx, network, start, fail)
		r := protoResult{pairs: pairs, seen: seen, duration: c.now().Sub(start), at: start, oldest: oldest}
		cancel()
		if err != nil {
			fail(err)
			// Keep the last good answer for MaxStale, with its age.
			if !prev.failed && !prev.at.IsZero() && c.opts.MaxStale > 0 && start.Sub(prev.at) <= c.opts.MaxStale {
				prev.duration = r.duration // prev is p's copy
				continue
			}
			r = protoResult{duration: r.duration, failed: true}
		}
		p.last[i] = r
	}
}

// resolve calls ResolveDests and sets c.dests to Dests and its answer. On
// an error, reported to fail, the addresses of its last answer without
// error are kept as well, for MaxStale after it.
func (c *HeadroomCollector) resolve(ctx context.Context, now time.Time, fail func(error)) {
	ds, err := c.opts.ResolveDests(ctx)
	if err == nil {
		c.resolved, c.resolvedAt = append(c.resolved[:0], ds...), now
	} else {
		fail(err)
		if c.opts.MaxStale > 0 && now.Sub(c.resolvedAt) <= c.opts.MaxStale {
			ds = append(slices.Clone(ds), c.resolved...)
		}
	}
	c.setDests(ds)
}

// pick probes network (at now) and returns the pairs to export: the named
// ones and the Top others with the highest used ratio. A named
// pair whose own probe fails is reported to fail and its last good answer
// kept for MaxStale; oldest is when the oldest answer exported was found.
// An error of the probe of every pair is returned.
func (c *HeadroomCollector) pick(ctx context.Context, network string, now time.Time, fail func(error)) (out []safedial.Headroom, seen int, oldest time.Time, _ error) {
	oldest = now
	all, err := c.probeAll(ctx, network)
	if err != nil {
		return nil, 0, oldest, err
	}
	udp := network == "udp"
	seen = len(all)
	bySrc := len(c.sources) > 0
	// exact: a pair named by a source and a destination, always exported;
	// wide: a pair of a source or destination named alone, capped at Top.
	match := func(h *safedial.Headroom) (exact, wide bool) {
		switch {
		case udp:
			return false, bySrc && c.sources[h.Source]
		case bySrc && c.byDest:
			return c.sources[h.Source] && c.dests[h.Dest], false
		case bySrc:
			return false, c.sources[h.Source]
		case c.byDest:
			return false, c.dests[h.Dest]
		}
		return false, false
	}
	// Exact pairs first, then the wide ones by used ratio, then the rest.
	rest := all[:0]
	var wide []safedial.Headroom
	for i := range all {
		switch exact, w := match(&all[i]); {
		case exact:
			out = append(out, all[i])
			c.named[pairKey{all[i].Source, all[i].Dest}] = keptPair{all[i], now}
		case w:
			wide = append(wide, all[i])
		default:
			rest = append(rest, all[i])
		}
	}
	top := c.opts.Top
	if top < 0 {
		top = DefaultTop
	}
	if n := min(top, len(wide)); n > 0 {
		slices.SortFunc(wide, byUsed)
		out = append(out, wide[:n]...)
	}
	if !udp && bySrc && c.byDest {
		// Every named TCP pair is exported, even without sockets.
		for s := range c.sources {
			for d := range c.dests {
				if s.Is4() != d.Addr().Is4() || slices.ContainsFunc(out, func(h safedial.Headroom) bool { return h.Source == s && h.Dest == d }) {
					continue
				}
				seen++
				k := pairKey{s, d}
				h, err := c.probe(ctx, network, s, d)
				if err != nil {
					fail(err)
					if kept, ok := c.named[k]; ok && c.opts.MaxStale > 0 && now.Sub(kept.at) <= c.opts.MaxStale {
						out = append(out, kept.h)
						if kept.at.Before(oldest) {
							oldest = kept.at
						}
					}
					continue
				}
				c.named[k] = keptPair{h, now}
				out = append(out, h)
			}
		}
		// Forget the answers too old to be kept (and those of pairs no
		// longer named).
		maps.DeleteFunc(c.named, func(_ pairKey, kept keptPair) bool { return now.Sub(kept.at) > max(c.opts.MaxStale, 0) })
	}
	if n := min(c.opts.Top, len(rest)); n > 0 {
		slices.SortFunc(rest, byUsed)
		out = append(out, rest[:n]...)
	}
	return out, seen, oldest, nil
}

// byUsed orders pairs by used ratio, highest first, then by source and
// destination.
func byUsed(a, b safedial.Headroom) int {
	if c := cmp.Compare(usedRatio(&b), usedRatio(&a)); c != 0 {
		return c
	}
	if c := a.Source.Compare(b.Source); c != 0 {
		return c
	}
	return a.Dest.Compare(b.Dest)
}

// readRange returns the size of net.ipv4.ip_local_port_range, or -1.
func readRange() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return -1
	}
	lo, err1 := strconv.Atoi(f[0])
	hi, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || hi < lo {
		return -1
	}
	return hi - lo + 1
}

// readInt returns the integer sysctl name (as a path under /proc/sys), or -1.
func readInt(name string) int {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return -1
	}
	return n
}

// setDests sets c.dests to the fixed Dests and resolved.
func (c *HeadroomCollector) setDests(resolved []netip.AddrPort) {
	clear(c.dests)
	for _, d := range c.fixed {
		c.dests[d] = true
	}
	for _, d := range resolved {
		c.dests[netip.AddrPortFrom(d.Addr().Unmap().WithZone(""), d.Port())] = true
	}
}
