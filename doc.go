// Package safedial dials outbound connections that cannot exhaust ephemeral
// ports early, and says clearly when ports do run out.
//
// It is for programs that open many outbound connections from a pinned
// source address: proxies, crawlers, load balancers, database pools.
// [Dialer] is a drop-in for [net.Dialer]: pass its DialContext to
// http.Transport, gRPC, pgx, go-redis or x/net/proxy.
//
// # The problem
//
// When a program binds a source address before connecting (Go does so
// whenever net.Dialer.LocalAddr is set), bind(ip:0) must pick the port
// before the destination is known, so the source is capped at one
// connection per port of net.ipv4.ip_local_port_range, whatever the number
// of destinations, and dials fail with "bind: address already in use".
// safedial sets IP_BIND_ADDRESS_NO_PORT (Linux 4.2+) before Go's bind, so
// the kernel picks the port at connect time, one per destination. Run
// examples/exhaustion to see the difference.
//
// # Guarantees
//
//   - Every dial is made by a copy of Base, a net.Dialer: resolution, Happy
//     Eyeballs, deadlines, cancellation, httptrace and error shapes are its
//     own. safedial works in the Control hook net.Dialer calls once per
//     connection attempt; the user's hook runs after safedial's options.
//   - Options that only improve things are best-effort: where the system
//     refuses one, the dial goes on as net.Dialer's would, and the refusal
//     is counted ([Stats].Refused) and reported ([RefusedError]). What the
//     user asked for explicitly (PortRange, ShareUDPPorts) fails loudly.
//   - Errors stay *net.OpError on the outside. Exhaustion matches
//     [ErrEphemeralExhausted] and wraps an [*ExhaustedError]; the
//     *os.SyscallError and errno still match. A source that is not local
//     matches [ErrSourceNotLocal], a configuration that cannot work
//     [ErrInvalidConfig]. [Classify] applies the same rules to any dialer's
//     errors.
//   - SO_REUSEPORT is never set on TCP sockets, and on UDP sockets only by
//     ShareUDPPorts; SO_REUSEADDR never on UDP sockets nor on Windows.
//   - No file descriptor or goroutine outlives a failed dial.
//
// The intended differences from net.Dialer are tested: with Sources, the
// unix and ip networks are a configuration error; DialTCP with a zero local
// address does not bind the wildcard address.
//
// # Source pools
//
// One source address holds at most (ports in range) x (destinations)
// connections. [Dialer.Sources] spreads attempts over several sources in
// turn and fails over to the next when one is exhausted toward the
// destination, so capacity grows linearly with the sources. A source found
// full is remembered to order the sources, never to refuse one: a failing
// dial costs one scan of the range, as net.Dialer's does, and a freed port
// is found within one pass over the sources. On Windows and the BSDs the
// source is chosen before each dial, and failover dials again.
//
// [Dialer.PortRange] gives each socket its own slice of the ephemeral range
// (Linux 6.3+), so processes sharing one address never compete for ports.
// [Dialer.ShareUDPPorts] lets connected UDP sockets share a port between
// destinations, as TCP connections do.
//
// # Seeing exhaustion coming
//
// [ProbeHeadroom] asks the kernel (sock_diag, no privilege needed) how many
// ports a source has left toward a destination; [Dialer.Headroom] does so
// for a Dialer's sources. [Dialer.Stats] and [Dialer.OnExhausted] count
// what happened. The command github.com/safedial/safedial/cmd/safedial
// shows a whole host's headroom and serves it to Prometheus.
//
// # Platforms
//
// Linux is fully protected. macOS and the BSDs have no
// IP_BIND_ADDRESS_NO_PORT: a bound source stays capped at one connection per
// port, and exhaustion is still classified. On Windows every socket gets
// SO_REUSE_UNICASTPORT, which chooses the port at connect time where the
// administrator has configured the auto-reuse port range. PortRange and
// ShareUDPPorts are Linux only; elsewhere they fail with an error matching
// errors.ErrUnsupported.
//
// More, with measurements: https://github.com/safedial/safedial/tree/main/docs
package safedial
