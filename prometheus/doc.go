// Package safedialprom exposes safedial's headroom (how many ephemeral ports
// each (source, destination) pair has left) and a [safedial.Dialer]'s
// statistics as Prometheus metrics, with
// github.com/prometheus/client_golang.
//
// It is a module of its own (github.com/safedial/safedial/prometheus), so
// that importing safedial never brings a metrics client with it.
//
// # Collectors
//
// [HeadroomCollector] is for a whole host (its network namespace): on each
// scrape it asks the kernel for every TCP and UDP pair with
// [safedial.ProbeAllHeadroom], at most once per minimum interval, and
// exports the pairs closest to exhaustion plus the pairs the configuration
// names. It is what the exporter of the safedial command serves
// (safedial exporter, on :9477 by default). README.md beside this file is
// the operator's page: flags, web configuration, health, metrics, alerts.
//
// [DialerCollector] is for a service that already has a /metrics endpoint:
// it exports the counters of [safedial.Dialer.Stats], read at each scrape
// (never counted a second time), and optionally the Dialer's own headroom
// toward the destinations the caller names ([safedial.Dialer.Headroom]).
//
// # Metrics
//
// Headroom (both collectors; the Dialer collector only the first two, the
// age and the errors):
//
//	safedial_headroom_ports{protocol, source, destination, state}   gauge
//	safedial_headroom_used_ratio{protocol, source, destination}     gauge, 0..1
//	safedial_local_port_range_ports                                 gauge
//	safedial_tcp_tw_reuse                                           gauge
//	safedial_headroom_pairs{protocol}                               gauge
//	safedial_headroom_pairs_exported{protocol}                      gauge
//	safedial_headroom_probe_duration_seconds{protocol}              gauge
//	safedial_headroom_probe_age_seconds{protocol}                   gauge
//	safedial_headroom_probe_errors_total{protocol}                  counter
//
// protocol is tcp or udp; destination is IP:port, or * for UDP rows of the
// host collector (a UDP port is held for every destination); state is one
// of in_use, time_wait, reserved, bound and free, the disjoint counts of
// [safedial.Headroom], which sum to the size of the pair's range.
//
// Dialer statistics ([DialerCollector]), each from the field of
// [safedial.Stats] or [safedial.SourceStats] its help text names:
//
//	safedial_dials_total                              counter
//	safedial_dials_succeeded_total                    counter
//	safedial_dials_failed_total                       counter
//	safedial_dials_exhausted_total                    counter
//	safedial_failovers_total                          counter
//	safedial_dials_option_refused_total               counter
//	safedial_source_attempts_total{source}            counter
//	safedial_source_attempts_succeeded_total{source}  counter
//	safedial_source_attempts_exhausted_total{source}  counter
//	safedial_source_attempts_skipped_total{source}    counter
//	safedial_source_attempts_not_local_total{source}  counter
//
// # Alerts
//
// alerts.yml, beside this file, holds the rules this package is tested
// with (promtool test rules testdata/alerts_test.yml): a pair on course to
// run out within 10 minutes (predict_linear), a pair above 80% for 2
// minutes, dials that failed for want of a port, and failing probes;
// README.md says what each catches and what it cannot.
package safedialprom
