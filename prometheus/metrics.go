package safedialprom

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/safedial/safedial"
)

// headroomDescs are the per-pair metrics, shared by both collectors (with
// the Dialer collector's constant labels), so that one alert covers both.
type headroomDescs struct {
	ports, used, errors, age *prometheus.Desc
}

func newHeadroomDescs(constLabels prometheus.Labels) headroomDescs {
	return headroomDescs{
		ports: prometheus.NewDesc("safedial_headroom_ports",
			"Ports of the ephemeral range of a (source, destination) pair, by state: "+
				"in_use, the pair's sockets not in TIME_WAIT; "+
				"time_wait, the pair's sockets in TIME_WAIT (counted as free instead where net.ipv4.tcp_tw_reuse lets a new connection reuse them); "+
				"reserved, ports of net.ipv4.ip_local_reserved_ports; "+
				"bound, ports a bind holds for every destination; "+
				"free, ports a new connection of the pair can still use. "+
				"The states of a pair sum to the size of its range. "+
				"destination is IP:port, or * for UDP, whose ports are held per source.",
			[]string{"protocol", "source", "destination", "state"}, constLabels),
		used: prometheus.NewDesc("safedial_headroom_used_ratio",
			"Share of the pair's ephemeral range that a new connection of the pair cannot use, "+
				"1 - free/range size, from 0 to 1: at 1 the next connection fails with EADDRNOTAVAIL (UDP: EAGAIN).",
			[]string{"protocol", "source", "destination"}, constLabels),
		errors: prometheus.NewDesc("safedial_headroom_probe_errors_total",
			"Headroom probes that failed, and destination names that did not resolve (the exporter keeps a protocol's last good answer for a while, see safedial_headroom_probe_age_seconds, then leaves its pairs out).",
			[]string{"protocol"}, constLabels),
		age: prometheus.NewDesc("safedial_headroom_probe_age_seconds",
			"Age of the oldest headroom answer exported for the protocol: 0 after good probes, growing while probes fail (of every pair, of a named pair or of a Dialer's target) and the last good answer is kept (for MaxStale; then the pairs are dropped).",
			[]string{"protocol"}, constLabels),
	}
}

// hostDescs are the HeadroomCollector's.
var hostDescs = newHeadroomDescs(nil)

// states are the values of the state label, in the order of Headroom's fields.
var states = [...]string{"in_use", "time_wait", "reserved", "bound", "free"}

// protocol is the protocol label of a network: "tcp" for tcp, tcp4 and tcp6.
func protocol(network string) string {
	if strings.HasPrefix(network, "udp") {
		return "udp"
	}
	return "tcp"
}

// destination is the destination label of h: IP:port, or * for a UDP row
// that stands for every destination.
func destination(h *safedial.Headroom) string {
	if !h.Dest.IsValid() {
		return "*"
	}
	return h.Dest.String()
}

// usedRatio is the share of h's range a new connection of the pair cannot
// use: 1 - Free/size, in 0..1.
func usedRatio(h *safedial.Headroom) float64 {
	n := int(h.Range.Hi) - int(h.Range.Lo) + 1
	if n <= 0 {
		return 0
	}
	return float64(n-min(max(h.Free, 0), n)) / float64(n)
}

// sendPair sends the six series of one pair.
func (d *headroomDescs) sendPair(ch chan<- prometheus.Metric, proto string, h *safedial.Headroom) {
	src, dst := h.Source.String(), destination(h)
	for i, v := range [...]int{h.InUse, h.TimeWait, h.Reserved, h.Bound, h.Free} {
		ch <- prometheus.MustNewConstMetric(d.ports, prometheus.GaugeValue, float64(v), proto, src, dst, states[i])
	}
	ch <- prometheus.MustNewConstMetric(d.used, prometheus.GaugeValue, usedRatio(h), proto, src, dst)
}

// probeDue reports whether a scrape asked at asked probes again, the last
// probe being at last (zero: none yet): MinInterval less a quarter of it
// for scrape jitter, so that scraped every MinInterval, a scrape 0.9
// MinInterval after the last probe gets a fresh answer; a negative
// minInterval probes on every scrape.
func probeDue(last, asked time.Time, minInterval time.Duration) bool {
	return last.IsZero() || minInterval < 0 || asked.Sub(last) >= minInterval-minInterval/4
}

// probeGate lets one scrape at a time probe with the collector's lock
// released, since a probe runs user code (OnError, ResolveDests, the
// Dialer's GetSources and Control hook), while scrapes that arrive meanwhile
// wait for its answer instead of probing again.
type probeGate struct {
	running chan struct{} // closed when the probe under way ends; nil when none
}

// wait waits for the probe under way, if any, for at most limit (the
// probe's own Timeout: user code that overstays it, or a scrape from inside
// the probe's own hooks, then gets the last answer instead of waiting on),
// and reports whether there was one. It waits for that probe only, not for
// the probes that later scrapes start. mu, the collector's lock, is held on
// entry and on return.
func (g *probeGate) wait(mu *sync.Mutex, limit time.Duration) bool {
	done := g.running
	if done == nil {
		return false
	}
	mu.Unlock()
	t := time.NewTimer(limit)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
	mu.Lock()
	return true
}

// run calls probe with mu released, then apply with mu held. mu is held on
// entry and on return, also when probe panics (apply is then skipped), so
// that the scrapes waiting are let go.
func (g *probeGate) run(mu *sync.Mutex, probe, apply func()) {
	done := make(chan struct{})
	g.running = done
	ok := false
	defer func() {
		mu.Lock()
		if ok {
			apply()
		}
		g.running = nil
		close(done)
	}()
	mu.Unlock()
	probe()
	ok = true
}
