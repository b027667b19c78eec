package safedialprom

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/safedial/safedial"
)

// Target is a destination whose headroom a [DialerCollector] exports, as
// the arguments of [safedial.Dialer.Headroom].
type Target struct {
	Network string // tcp, tcp4, tcp6, udp, udp4 or udp6
	Address string // host:port; a host name is resolved at each probe
}

// DialerOpts configures a [DialerCollector]. The zero value exports the
// Dialer's statistics only.
type DialerOpts struct {
	// ConstLabels are added to every metric, to tell several Dialers of a
	// program apart, for example {"dialer": "db"}. Collectors registered
	// together must use the same label names.
	ConstLabels prometheus.Labels
	// Headroom names destinations whose headroom from the Dialer's sources
	// is exported in safedial_headroom_ports and
	// safedial_headroom_used_ratio, from [safedial.Dialer.Headroom] (the
	// Dialer's PortRange when it has one, and its ShareUDPPorts
	// counting). These are the HeadroomCollector's series, so that one
	// alert covers both: a registry holds one or the other (Register
	// refuses the second).
	Headroom []Target
	// MinInterval is the least time between two headroom probes, less a
	// quarter of it for scrape jitter, as in [HeadroomOpts]. Zero means
	// DefaultMinInterval; negative, every scrape. The statistics are read
	// at every scrape.
	MinInterval time.Duration
	// MaxStale is how long a target's last good answer is exported after
	// its probes start failing, as in [HeadroomOpts], with
	// safedial_headroom_probe_age_seconds the age of the oldest answer
	// exported. Zero means DefaultMaxStale; negative, a target's pairs are
	// dropped at its first failed probe.
	MaxStale time.Duration
	// Timeout bounds the probes of one scrape. Zero means 10 seconds. A
	// scrape that comes during another's probe waits for it at most this
	// long, then exports the last answer.
	Timeout time.Duration
	// OnError, when set, is called with each headroom probe error, for
	// example to log it.
	OnError func(t Target, err error)
}

// DialerCollector is a [prometheus.Collector] of a [safedial.Dialer]'s
// statistics, read from [safedial.Dialer.Stats] at each scrape (the
// counters are the Dialer's own, never counted a second time), and
// optionally of its headroom toward named destinations. Its metrics are
// listed in the package documentation. It is safe for concurrent use; make
// one with [NewDialerCollector].
//
// The source label is the address unmapped, as in the headroom rows: an
// address the pool names twice (or as IPv4 and IPv4-mapped IPv6) has one
// series per counter, the sum of its entries in Stats.Sources.
//
// The per-source counters are counted since the pool was made, as
// [safedial.SourceStats] are: after [safedial.Dialer.SetSources] they start
// again from zero, which Prometheus's rate() treats as a counter reset.
type DialerCollector struct {
	d    *safedial.Dialer
	opts DialerOpts
	now  func() time.Time // injected by tests
	// headroom is d.Headroom, or a test's.
	headroom func(ctx context.Context, network, address string) ([]safedial.Headroom, error)

	dials, succeeded, failed, exhausted, failovers, refused       *prometheus.Desc
	srcDials, srcSucceeded, srcExhausted, srcSkipped, srcNotLocal *prometheus.Desc
	head                                                          headroomDescs

	mu     sync.Mutex // guards what follows; released while probing
	gate   probeGate
	at     time.Time // of the last headroom probe
	pairs  []pairOf
	errors [2]uint64    // probe errors, tcp and udp
	oldest [2]time.Time // when the oldest answer exported was found, tcp and udp
	// good holds each target's last good answer and when it was found,
	// kept for MaxStale when its probe fails: the probe's own, used by one
	// probe at a time (the gate's).
	good map[Target]goodAnswer
}

// goodAnswer is a target's last good answer.
type goodAnswer struct {
	hs []safedial.Headroom
	at time.Time
}

// pairOf is one row of a Dialer's headroom.
type pairOf struct {
	proto string
	h     safedial.Headroom
}

// NewDialerCollector returns a collector of d's statistics and, when opts
// names destinations, of its headroom toward them. Register it with a
// [prometheus.Registerer].
func NewDialerCollector(d *safedial.Dialer, opts DialerOpts) *DialerCollector {
	if opts.MinInterval == 0 {
		opts.MinInterval = DefaultMinInterval
	}
	if opts.MaxStale == 0 {
		opts.MaxStale = DefaultMaxStale
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	l := opts.ConstLabels
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, l)
	}
	return &DialerCollector{
		d:    d,
		opts: opts,
		now:  time.Now,
		head: newHeadroomDescs(l),

		headroom: d.Headroom,
		good:     make(map[Target]goodAnswer),

		dials:     desc("safedial_dials_total", "Calls to the Dialer's Dial, DialContext and DialTCP that have returned (Stats.Dials)."),
		succeeded: desc("safedial_dials_succeeded_total", "Dials that returned a connection (Stats.Succeeded)."),
		failed:    desc("safedial_dials_failed_total", "Dials that returned an error, exhausted ones included (Stats.Dials - Stats.Succeeded)."),
		exhausted: desc("safedial_dials_exhausted_total", "Dials that failed because no ephemeral port was left, after every failover step (Stats.Exhausted)."),
		failovers: desc("safedial_failovers_total", "Moves from an exhausted source, or one known to be full toward the destination, to the next source of the pool (Stats.Failovers)."),
		refused:   desc("safedial_dials_option_refused_total", "Dials that went on unprotected, without IP_BIND_ADDRESS_NO_PORT or SO_REUSEADDR, because the system refused the option (Stats.Refused)."),

		srcDials:     desc("safedial_source_attempts_total", "Attempts from a source address of the pool, failover steps included, since the pool was made (SourceStats.Attempts).", "source"),
		srcSucceeded: desc("safedial_source_attempts_succeeded_total", "Attempts from a source that returned a connection (SourceStats.Succeeded).", "source"),
		srcExhausted: desc("safedial_source_attempts_exhausted_total", "Attempts from a source that found no free port toward the destination (SourceStats.Exhausted).", "source"),
		srcSkipped:   desc("safedial_source_attempts_skipped_total", "Attempts that passed a source over without a system call, because it had just been found full toward the destination (SourceStats.Skipped).", "source"),
		srcNotLocal:  desc("safedial_source_attempts_not_local_total", "Attempts that found a source no longer an address of this host (SourceStats.NotLocal).", "source"),
	}
}

// Describe sends the descriptors of every metric c collects.
func (c *DialerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range [...]*prometheus.Desc{
		c.dials, c.succeeded, c.failed, c.exhausted, c.failovers, c.refused,
		c.srcDials, c.srcSucceeded, c.srcExhausted, c.srcSkipped, c.srcNotLocal,
	} {
		ch <- d
	}
	if len(c.opts.Headroom) > 0 {
		ch <- c.head.ports
		ch <- c.head.used
		ch <- c.head.errors
		ch <- c.head.age
	}
}

// Collect reads the Dialer's statistics, probes its headroom (unless the
// last probe is more recent than MinInterval) and sends the metrics.
func (c *DialerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.d.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.dials, s.Dials)
	counter(c.succeeded, s.Succeeded)
	counter(c.failed, s.Dials-s.Succeeded)
	counter(c.exhausted, s.Exhausted)
	counter(c.failovers, s.Failovers)
	counter(c.refused, s.Refused)
	// A pool may name an address twice (Stats has an entry for each), or
	// as IPv4 and IPv4-mapped IPv6, which bind the same: one series per
	// address, labelled as the headroom rows are (unmapped), the sum of
	// its entries, since two series with the same labels fail the whole
	// scrape.
	same := func(a, b safedial.SourceStats) bool { return a.Addr.Unmap() == b.Addr.Unmap() }
	for i, src := range s.Sources {
		if slices.ContainsFunc(s.Sources[:i], func(o safedial.SourceStats) bool { return same(o, src) }) {
			continue // summed into its first entry
		}
		for _, o := range s.Sources[i+1:] {
			if same(o, src) {
				src.Attempts += o.Attempts
				src.Succeeded += o.Succeeded
				src.Exhausted += o.Exhausted
				src.Skipped += o.Skipped
				src.NotLocal += o.NotLocal
			}
		}
		a := src.Addr.Unmap().String()
		counter(c.srcDials, src.Attempts, a)
		counter(c.srcSucceeded, src.Succeeded, a)
		counter(c.srcExhausted, src.Exhausted, a)
		counter(c.srcSkipped, src.Skipped, a)
		counter(c.srcNotLocal, src.NotLocal, a)
	}
	if len(c.opts.Headroom) == 0 {
		return
	}

	// As in HeadroomCollector.Collect: a scrape that waited for a probe
	// gets its answer.
	asked := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.gate.wait(&c.mu, c.opts.Timeout) && probeDue(c.at, asked, c.opts.MinInterval) {
		c.at = c.now()
		at := c.at
		var p dialerProbed
		c.gate.run(&c.mu, func() { c.probe1(at, &p) }, func() {
			c.pairs, c.oldest = p.pairs, p.oldest
			c.errors[0] += p.errors[0]
			c.errors[1] += p.errors[1]
		})
	}
	for i, network := range networks {
		counter(c.head.errors, c.errors[i], network)
		if !c.oldest[i].IsZero() {
			ch <- prometheus.MustNewConstMetric(c.head.age, prometheus.GaugeValue, max(asked.Sub(c.oldest[i]), 0).Seconds(), network)
		}
	}
	for i := range c.pairs {
		c.head.sendPair(ch, c.pairs[i].proto, &c.pairs[i].h)
	}
}

// dialerProbed is what a probe of a DialerCollector found.
type dialerProbed struct {
	pairs  []pairOf
	oldest [2]time.Time
	errors [2]uint64 // failures to add
}

// probe1 probes every target, at now, into p, once per series. A target
// whose probe fails keeps its last good answer for MaxStale. It runs
// without c.mu (it calls user code: the Dialer's GetSources and hooks,
// OnError), one probe at a time.
func (c *DialerCollector) probe1(now time.Time, p *dialerProbed) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	type key struct {
		proto, src, dst string
	}
	seen := make(map[key]bool)
	for _, t := range c.opts.Headroom {
		proto := protocol(t.Network)
		i := 0
		if proto == "udp" {
			i = 1
		}
		at := now
		hs, err := c.headroom(ctx, t.Network, t.Address)
		if err != nil {
			if c.opts.OnError != nil {
				c.opts.OnError(t, err)
			}
			p.errors[i]++
			g, ok := c.good[t]
			if !ok || c.opts.MaxStale <= 0 || now.Sub(g.at) > c.opts.MaxStale {
				delete(c.good, t)
				continue
			}
			hs, at = g.hs, g.at
		} else {
			c.good[t] = goodAnswer{hs, now}
		}
		if p.oldest[i].IsZero() || at.Before(p.oldest[i]) {
			p.oldest[i] = at
		}
		for _, h := range hs {
			k := key{proto, h.Source.String(), destination(&h)}
			if seen[k] {
				continue // tcp and tcp4 toward one address
			}
			seen[k] = true
			p.pairs = append(p.pairs, pairOf{proto, h})
		}
	}
}
