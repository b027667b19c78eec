// Package safedial dials outbound connections that cannot exhaust ephemeral
// ports early, and says clearly when ports do run out.
//
// It is for programs that open many outbound connections: HTTP proxies, load
// balancers, crawlers, service meshes and database pools. [Dialer] is a
// drop-in for [net.Dialer]: pass its DialContext to http.Transport, gRPC,
// pgx, go-redis or x/net/proxy.
//
// # The problem
//
// A TCP connection is unique by its 4-tuple: source address, source port,
// destination address, destination port. When a program connects from an
// unbound socket, Linux picks the source port knowing the destination, so one
// port serves a connection to every destination. When the program binds a
// source address first (Go does this whenever net.Dialer.LocalAddr is set),
// bind(ip:0) must pick the port before the destination is known: the host is
// then capped at one connection per port of net.ipv4.ip_local_port_range
// (about 28,000 by default) and at about range/TIME_WAIT new connections per
// second, and dials fail with "bind: address already in use". SO_REUSEADDR,
// the classic fix, no longer changes this on current kernels.
//
// safedial sets IP_BIND_ADDRESS_NO_PORT (Linux 4.2+) before Go's bind, so the
// kernel picks the port at connect time, knowing the whole 4-tuple. Measured
// in a private network namespace with a 100-port range and 6 destinations, a
// bound net.Dialer stops at 100 connections and a safedial.Dialer reaches
// 600, the 4-tuple limit (run examples/exhaustion to reproduce).
//
// # Guarantees
//
// safedial is never worse than the net.Dialer it replaces:
//
//   - Every dial is made by net.Dialer itself, from a copy of Base:
//     resolution, Happy Eyeballs, partial deadlines per address,
//     cancellation, httptrace hooks and error shapes are net.Dialer's, with
//     or without Sources. safedial works in the Control hook net.Dialer
//     calls once per connection attempt. A conformance test runs the same
//     scenarios through net.Dialer and safedial side by side.
//   - The zero Dialer is safe: every protection is on. Options are set only
//     where they matter (sockets that bind a source address), so a dial
//     without a source address costs what net.Dialer's does.
//   - Options that only improve things (SO_REUSEADDR,
//     IP_BIND_ADDRESS_NO_PORT, Windows' SO_REUSE_UNICASTPORT) are
//     best-effort: where the system refuses one, the dial goes on as
//     net.Dialer's would, and the refusal is counted ([Stats].Refused),
//     reported once ([Dialer].OnRefused, [RefusedError]) and named in an
//     exhaustion it explains. What the user asked for explicitly (PortRange)
//     fails loudly where it cannot be honoured.
//   - Base keeps net.Dialer's meaning for every field, and is never
//     modified. The user's Control or ControlContext hook runs after
//     safedial's options and before the socket is bound or connected,
//     as net.Dialer would run it; within a pool, once more on each fresh
//     socket a failover step puts in the attempt's place.
//   - Errors stay *net.OpError on the outside. Exhaustion matches
//     [ErrEphemeralExhausted] and wraps an [*ExhaustedError] that names the
//     source, the destination and the port range, and says what to do; the
//     underlying *os.SyscallError and errno still match with errors.Is and
//     errors.As. A source address that is not on this host matches
//     [ErrSourceNotLocal]; a configuration that cannot work matches
//     [ErrInvalidConfig]; neither is ever reported as exhaustion.
//   - SO_REUSEPORT is never set on TCP sockets, and on UDP sockets only by
//     [Dialer.ShareUDPPorts], which shares ports among sockets of the same
//     user. SO_REUSEADDR is never set on UDP sockets (it would let another
//     user's socket share the port and take the replies) nor on Windows
//     (where it lets another process take the port). On a bound TCP socket,
//     SO_REUSEADDR lets another local socket that also sets it bind (and
//     listen on) the same address and port while the connection lives;
//     the connection and its 4-tuple cannot be taken. DisableReuseAddr
//     turns it off.
//   - No file descriptor or goroutine outlives a failed dial.
//
// The differences from net.Dialer are intended and tested: with Sources,
// the unix and ip networks are a configuration error rather than an
// unpinned dial; DialTCP with a zero local address does not bind the
// wildcard address, and a zero remote address is "missing address".
//
// [Classify] applies the same exhaustion rules to errors from any dialer.
//
// # Scaling further
//
// One source address holds at most (ports in range) x (destinations)
// connections. [Dialer.Sources] adds source addresses: connection attempts
// are spread over them in turn and fail over to the next one when a source
// is exhausted toward the destination, so capacity grows linearly with the
// number of sources. A source found full is remembered (in a bounded table,
// per protocol) to order the sources, never to refuse one: sources not known
// full are tried first, so a pool with one full source costs about what a
// healthy one does, and a pool with every source full asks the kernel about
// one source per dial, so a failing dial costs one scan of the range, as
// net.Dialer's does, and a freed port is found within one pass over the
// sources. A source that is not (or no longer) local is passed over the
// same way. [Dialer.PortRange] gives each
// socket its own slice of the ephemeral range (Linux 6.3+), so processes or
// containers sharing one address never compete for the same ports.
// [Dialer.Stats] and [Dialer.OnExhausted] report what happened.
//
// [Dialer.ShareUDPPorts] does for connected UDP sockets what
// IP_BIND_ADDRESS_NO_PORT does for TCP: a port serves one socket per
// destination, so a UDP client is no longer capped at the range.
//
// # Seeing exhaustion coming
//
// [ProbeHeadroom] asks the kernel (sock_diag, no privilege needed) how many
// ports a source has left toward a destination; [Dialer.Headroom] does so for
// what a Dialer's dials get (its sources, its PortRange, the routing its
// Control hook chooses), and [ProbeAllHeadroom] for every pair of the host.
// The command cmd/safedial shows it for a whole host:
//
//	go run ./cmd/safedial headroom   # from a clone of the repository
//
// # Platforms
//
//   - Linux: SO_REUSEADDR (TCP) and IP_BIND_ADDRESS_NO_PORT (TCP and UDP) on
//     sockets that bind a source address; IP_LOCAL_PORT_RANGE for PortRange
//     (6.3+). Fully protected. Pools bind in the Control hook.
//   - macOS and the BSDs: SO_REUSEADDR (TCP) only. They have no
//     IP_BIND_ADDRESS_NO_PORT: a bound source address is still capped at one
//     connection per port. Exhaustion is still classified. PortRange fails
//     with an error matching errors.ErrUnsupported. A pool chooses its
//     source before each dial, by the family the network or an IP literal
//     names, and fails over by dialing again.
//   - Windows: Go binds every outbound socket before ConnectEx, so every
//     socket gets SO_REUSE_UNICASTPORT (best-effort; Windows 10 and Server
//     2016 or later), which lets the port be chosen at connect time where
//     the administrator has configured the auto-reuse port range. Never
//     SO_REUSEADDR (it would allow port stealing). Exhaustion (WSAENOBUFS
//     from bind, WSAEADDRINUSE from ConnectEx) is classified. PortRange fails
//     with an error matching errors.ErrUnsupported. Pools as on the BSDs.
package safedial
