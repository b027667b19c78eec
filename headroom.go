package safedial

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Headroom is how many ephemeral ports a new connection from Source to Dest
// could still use: the answer to "how close is this pair to exhaustion?".
//
// The five counts are disjoint sets of ports of Range and add up to its
// size: InUse + TimeWait + Reserved + Bound + Free == Range.Hi-Range.Lo+1.
// Each port is counted once, in the first of these that applies.
//
// Free is the number of connections the kernel accepts from Source to Dest
// when its port is chosen at connect() (as safedial dials: a bind with
// IP_BIND_ADDRESS_NO_PORT, or no bind at all). It is exact, measured by
// dialing until the kernel refuses, except where the kernel's state cannot
// be seen. There the probe counts low: a connected socket whose source
// the routing would no longer pick (a route changed since, or the probe
// was not told the socket's mark: sock_diag shows marks to CAP_NET_ADMIN
// only) counts as Bound, and with an odd-sized range one port that
// connect()'s search may skip counts as Reserved. Two cases count high:
// see Bound.
type Headroom struct {
	Source netip.Addr     `json:"source"` // as asked
	Dest   netip.AddrPort `json:"dest"`   // as asked (by Dialer.Headroom: the peer the kernel connects to); for UDP without ShareUDPPorts, the zero AddrPort in ProbeAllHeadroom (any destination)
	Range  PortRange      `json:"range"`  // the range in force: the Dialer's PortRange, else the namespace's ip_local_port_range

	// InUse counts the ports held by sockets from Source to Dest not in
	// TIME_WAIT (for UDP: by the sockets on Source, or on a wildcard
	// address that covers it, whatever their destination, which hold
	// their port for every destination; likewise for the TCP dials of a
	// Dialer with DisableBindNoPort, whose bind() picks the port before
	// the destination is known: see Dialer.Headroom).
	InUse int `json:"in_use"`
	// TimeWait counts the ports of the pair's TIME_WAIT sockets that the
	// kernel will not reuse for a new connection now: all of them when
	// TimeWaitReusable is false, else those younger than the reuse delay
	// (net.ipv4.tcp_tw_reuse_delay, one second by default; two seconds
	// before Linux 6.13, whose rule has a one-second granularity) or on a
	// port that is reserved or bound. Always 0 for UDP.
	TimeWait int `json:"time_wait"`
	// Reserved counts the ports of net.ipv4.ip_local_reserved_ports, which
	// the kernel never hands out to a connect() or an automatic bind, the
	// ports of a Dialer's PortRange outside the namespace range (the
	// kernel uses only their intersection) and, for TCP with an odd-sized
	// namespace range, one free port of its two ends, which connect()'s
	// search may skip (with 3 ports, the last always; never with a
	// Dialer's PortRange, which connect() scans port by port); with
	// DisableBindNoPort, the port bind()'s search may skip (with 3 and 5
	// ports, the last).
	Reserved int `json:"reserved"`
	// Bound counts the ports (TCP) that connect() skips for every source
	// and destination because a bind() took them: a listener; a socket
	// bound to an explicit port, on any address (the wildcard included),
	// connected or not (bound but idle sockets, which Linux shows since
	// 6.8, are read at most once a second); a socket bound to ip:0 without
	// IP_BIND_ADDRESS_NO_PORT before connecting (Go's net.Dialer with a
	// LocalAddr). The kernel does not say how a connected socket got its
	// port: the probe counts the last kind when the socket's
	// IP_BIND_ADDRESS_NO_PORT is off and its source is not the one the
	// routing picks for its destination, its mark, its interface, its
	// owner, its protocol and its destination port (so it must have been
	// bound). Not seen, and so counted in Free
	// although connect() skips them: such a socket bound to the routed
	// source itself, the TIME_WAIT sockets any of these leave (the port
	// stays skipped until the TIME_WAIT ends, a minute), and connections
	// accepted by a listener that has since closed (they keep its port).
	Bound int `json:"bound"`
	// Free counts the ports a new connection from Source to Dest can still
	// use: Range's size minus the four counts above.
	Free int `json:"free"`
	// TimeWaitReusable reports that the kernel reuses TIME_WAIT 4-tuples of
	// this pair for new outgoing connections: net.ipv4.tcp_tw_reuse is 1,
	// or 2 (the default) and Source or Dest is a loopback address, and
	// net.ipv4.tcp_timestamps is on. The pair's TIME_WAIT sockets older
	// than the reuse delay are then counted in Free. The probe assumes
	// that the peer agreed to timestamps, as Linux peers do; one that did
	// not leaves its TIME_WAIT sockets unreusable.
	TimeWaitReusable bool `json:"time_wait_reusable,omitempty"`
}

// Used returns the share of Range that a new connection of the pair cannot
// use (everything but Free), from 0 to 1.
func (h Headroom) Used() float64 {
	n := h.Range.size()
	if n == 0 {
		return 0
	}
	return float64(n-min(max(h.Free, 0), n)) / float64(n)
}

func (r PortRange) size() int {
	if r.Hi < r.Lo {
		return 0
	}
	return int(r.Hi) - int(r.Lo) + 1
}

// ProbeHeadroom returns how many ports of the namespace's ephemeral range
// (net.ipv4.ip_local_port_range) a new connection from src to dst could
// still use, and what holds the others (see [Headroom] for each count). It
// asks the kernel with NETLINK_SOCK_DIAG dumps whose bytecode filters (local
// port range, addresses, how the port was bound) make the kernel send only
// the sockets that matter, and reads net.ipv4.ip_local_reserved_ports,
// tcp_tw_reuse, tcp_timestamps and tcp_tw_reuse_delay (each at most once a
// second); it needs no privilege and touches no socket of the program.
//
// network is "tcp", "tcp4" or "tcp6", or "udp", "udp4" or "udp6". For UDP a
// port is held for every destination (see [Dialer.Sources]), so InUse
// counts the ports of the UDP sockets on src, or on a wildcard address that
// covers it (0.0.0.0:P, and [::]:P unless it is IPv6-only, for an IPv4
// source; [::]:P for an IPv6 one), whatever their destination; dst must
// still be given. The counts are for sockets bound to src (as safedial's
// pools and a Dialer with a LocalAddr dial); see [Dialer.Headroom] for
// unbound ones.
//
// Bad input is an error, never "every port free": src must be an address of
// this host (else the error matches [ErrSourceNotLocal]) that a connection
// can leave from (not unspecified, multicast or broadcast), dst a specified
// address with a non-zero port, both of one family (IPv4-mapped IPv6
// addresses count as IPv4), and a zone must name an interface. Where
// sock_diag is not available (systems other than Linux) the error matches
// errors.ErrUnsupported.
func ProbeHeadroom(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort) (Headroom, error) {
	h := Headroom{Source: src, Dest: dst}
	if err := checkProbe(network, src, dst); err != nil {
		return h, err
	}
	if !diagSupported {
		return h, errNoDiag
	}
	r, err := localPortRange()
	if err != nil {
		return h, probeError(err)
	}
	return probeIn(ctx, network, src, dst, r, false)
}

// probeIn is ProbeHeadroom with the range given; perSocket says the dials
// set it with IP_LOCAL_PORT_RANGE (a Dialer's PortRange), which connect()
// scans port by port. (Dialer.Headroom counts shared UDP ports with
// sharedHeadroom instead.)
func probeIn(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort, r PortRange, perSocket bool) (Headroom, error) {
	h := Headroom{Source: src, Dest: dst, Range: r}
	s, d := src.Unmap().WithZone(""), netip.AddrPortFrom(dst.Addr().Unmap().WithZone(""), dst.Port())
	var (
		p    pairPorts
		host hostPorts
		err  error
	)
	switch udp := strings.HasPrefix(network, "udp"); {
	case udp:
		p, host, err = diagUDP(ctx, s, r)
	default:
		var oif uint32
		if s.IsLinkLocalUnicast() {
			oif, _ = zoneIndex(src.Zone()) // checked by checkProbe
		}
		p, host, err = diagTCP(ctx, s, oif, d, r, perSocket)
	}
	if err != nil {
		return h, probeError(err)
	}
	host.fill(&h, &p)
	return h, nil
}

func checkProbe(network string, src netip.Addr, dst netip.AddrPort) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("safedial: ProbeHeadroom(%q, %v, %v): "+format, append([]any{network, src, dst}, args...)...)
	}
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return bad("unknown network %q: use tcp, tcp4, tcp6, udp, udp4 or udp6", network)
	}
	s, d := src.Unmap(), dst.Addr().Unmap()
	switch {
	case !src.IsValid():
		return bad("the source is the zero netip.Addr")
	case !dst.IsValid():
		return bad("the destination is the zero netip.AddrPort")
	case s.IsUnspecified():
		return bad("the source is the unspecified address, which pins nothing: give the address the connections leave from")
	case s.IsMulticast():
		return bad("the source is a multicast address: connections cannot leave from it")
	case s == netip.AddrFrom4([4]byte{255, 255, 255, 255}) || localBroadcast(s):
		return bad("the source is a broadcast address: connections cannot leave from it")
	case d.IsUnspecified():
		return bad("the destination is the unspecified address, which connect() replaces with this host's: give that address (127.0.0.1 or ::1)")
	case dst.Port() == 0:
		return bad("the destination port is 0")
	case s.Is4() != d.Is4():
		return bad("the source and the destination are of different address families")
	case strings.HasSuffix(network, "4") && !s.Is4(), strings.HasSuffix(network, "6") && !s.Is6():
		return bad("network %s does not match the addresses' family", network)
	}
	for _, z := range []string{src.Zone(), d.Zone()} {
		if _, err := zoneIndex(z); err != nil {
			return bad("unknown zone %q: %v", z, err)
		}
	}
	if !localAddr(s) {
		// A typo must not read as "every port free".
		return bad("%w: %v (see ip addr)", ErrSourceNotLocal, s)
	}
	return nil
}

var errNoDiag = &unsupportedError{what: "headroom probes need Linux's sock_diag"}

func probeError(err error) error {
	return fmt.Errorf("safedial: probing headroom: %w", err)
}

// ProbeAllHeadroom returns the headroom of every (source, destination) pair of
// network on this host (its network namespace) that has sockets with a local
// port in the ephemeral range, most used first (fewest Free), counted as
// [ProbeHeadroom] counts them: one sock_diag dump per address family for UDP,
// two for TCP, filtered by the kernel to that range. Listening and bound
// sockets are not pairs; they count in Bound. Connections a listener
// accepted (on its address and port, or a port a wildcard listener holds)
// are not pairs either. A link-local source is one per interface, with its
// zone. For UDP, a pair is a source
// and every socket that holds ports for it, whatever their destination (Dest
// is then the zero AddrPort): sockets on a wildcard address count against
// each source of the family they cover, and show as a source of their own
// (0.0.0.0 or ::) only where no socket of that family has a specific
// source.
func ProbeAllHeadroom(ctx context.Context, network string) ([]Headroom, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return nil, fmt.Errorf("safedial: ProbeAllHeadroom(%q): unknown network: use tcp, tcp4, tcp6, udp, udp4 or udp6", network)
	}
	if !diagSupported {
		return nil, errNoDiag
	}
	r, err := localPortRange()
	if err != nil {
		return nil, probeError(err)
	}
	udp := strings.HasPrefix(network, "udp")
	pairs, host, err := diagPairs(ctx, udp, !strings.HasSuffix(network, "6"), !strings.HasSuffix(network, "4"), r)
	if err != nil {
		return nil, probeError(err)
	}
	hs := make([]Headroom, 0, len(pairs))
	for k, p := range pairs {
		h := Headroom{Source: k.src, Dest: k.dst, Range: r}
		host.fill(&h, p)
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b Headroom) int {
		if c := cmp.Compare(a.Free, b.Free); c != 0 {
			return c
		}
		if c := cmp.Compare(b.InUse, a.InUse); c != 0 {
			return c
		}
		if c := a.Source.Compare(b.Source); c != 0 {
			return c
		}
		return a.Dest.Compare(b.Dest)
	})
	return hs, nil
}

type pairKey struct {
	src netip.Addr
	dst netip.AddrPort
}

// Headroom returns the headroom of each of d's sources toward each address
// address resolves to: the sources of Sources of the address's family (or
// of the pool GetSources returns for network and address), or
// Base.LocalAddr, or, when neither is set, the source the kernel's routing
// picks for the address (asked with RTM_GETROUTE, so the answer comes even
// when every port is taken, with the protocol, the port and a link-local
// address's zone, as connect() asks), for a socket as d's Control hook leaves it:
// the hook runs on a socket that is never bound or connected, and its
// SO_MARK, SO_BINDTODEVICE and IP_TOS (IPV6_TCLASS) go with the lookup (an
// address it binds is the source). The range is d's PortRange
// when set (ports of it outside the namespace range count as Reserved), else
// the namespace's. Host names are resolved with Base.Resolver. An empty or
// unspecified host (":53", "0.0.0.0:53", "[::]:53") is taken as net.Dialer
// dials it: the kernel connects to this host (for IPv4 the source itself,
// 127.0.0.1 when unbound; for IPv6 ::1), and Dest is that address. An address
// with no source of its family is left out, and so is a link-local source of
// another link than a link-local address's; none at all is an error. A
// pool's source that is not an address of this host is left out too, as the
// pool's dials fail over from it; when no source is left the error matches
// ErrSourceNotLocal. With ShareUDPPorts, a UDP headroom is what a shared dial
// can still take toward the address: InUse counts the ports connected toward
// it, Bound the ports held for every destination by sockets a shared port
// cannot join (plain or another user's UDP sockets, wildcard and dual-stack
// binds), Reserved the ports of net.ipv4.ip_local_reserved_ports and those
// outside the namespace range. With DisableBindNoPort and a source, TCP dials
// bind src:0 before connecting, and bind() takes a port no TCP socket on the
// source (or the wildcard address) holds, whatever its destination: InUse,
// TimeWait and Bound count those sockets' ports, toward every destination.
// Without a source and without ShareUDPPorts, UDP dials bind nothing: the
// kernel gives the socket a port that no UDP socket of the family holds, on
// any address (an IPv6 "udp" socket is dual-stack, so IPv4 sockets count
// too), and Headroom counts them all.
func (d *Dialer) Headroom(ctx context.Context, network, address string) ([]Headroom, error) {
	if !diagSupported {
		return nil, errNoDiag
	}
	if _, _, err := net.SplitHostPort(address); err != nil {
		return nil, headroomError(err)
	}
	dsts, err := d.resolve(ctx, network, address)
	if err != nil {
		return nil, headroomError(err)
	}
	if err := d.PortRange.check(); err != nil {
		return nil, headroomError(err)
	}
	r := d.PortRange
	if r == (PortRange{}) {
		if r, err = localPortRange(); err != nil {
			return nil, probeError(err)
		}
	}
	pool, pooled, err := d.headroomPool(ctx, network, address)
	if err != nil {
		return nil, headroomError(err)
	}
	var (
		hs       []Headroom
		notLocal error                    // of a source of the pool left out
		unbound  = !pooled && d.unbound() // dials that bind no source
	)
	for _, asked := range dsts {
		dst := asked
		if dst.Addr().IsUnspecified() && unbound {
			// The kernel connects an unbound socket to its loopback
			// address, from the source the routing picks for it.
			dst = netip.AddrPortFrom(kernelPeer(netip.Addr{}, dst.Addr()), dst.Port())
		}
		srcs, err := d.sourcesFor(ctx, network, dst, pool, pooled)
		if err != nil {
			return nil, headroomError(err)
		}
		for _, src := range srcs {
			dst := dst
			if dst.Addr().IsUnspecified() {
				dst = netip.AddrPortFrom(kernelPeer(src, dst.Addr()), dst.Port())
			}
			if err := checkProbe(network, src, dst); err != nil {
				if pooled && errors.Is(err, ErrSourceNotLocal) {
					// The pool's dials fail over from it: so does
					// its headroom, unless no source is left.
					notLocal = err
					continue
				}
				return nil, err
			}
			h, err := d.probe(ctx, network, src, dst, r, unbound)
			if err != nil {
				return nil, err
			}
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 && notLocal != nil {
		return nil, notLocal
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("safedial: Headroom(%q, %q): no source of the family of %v", network, address, dsts)
	}
	return hs, nil
}

// probe counts the headroom of d's dials from src to dst, in range r, as
// d's dials take their ports (unbound: they bind no source).
func (d *Dialer) probe(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort, r PortRange, unbound bool) (Headroom, error) {
	switch {
	case d.ShareUDPPorts && strings.HasPrefix(network, "udp"):
		// What a shared dial sees: the ports it can still take toward
		// dst, and what holds the others.
		return sharedHeadroom(ctx, src, dst, d.PortRange)
	case strings.HasPrefix(network, "udp") && unbound:
		return probeUnboundUDP(ctx, network, src, dst, r)
	case d.DisableBindNoPort && !unbound:
		// TCP dials that bind src:0 first: bind() takes a port no socket
		// on src holds, whatever its destination.
		return probeBindFirst(ctx, src, dst, r)
	default:
		return probeIn(ctx, network, src, dst, r, d.PortRange != PortRange{})
	}
}

// resolve returns the addresses of address for network, in the resolver's
// order.
func (d *Dialer) resolve(ctx context.Context, network, address string) ([]netip.AddrPort, error) {
	host, service, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	res := d.Base.Resolver
	if res == nil {
		res = net.DefaultResolver
	}
	port, err := strconv.ParseUint(service, 10, 16)
	if err != nil {
		p, err := res.LookupPort(ctx, network, service)
		if err != nil {
			return nil, err
		}
		port = uint64(p)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if host == "" {
		// As net.Dialer dials ":80": to the unspecified address, which
		// the kernel replaces with this host's (see kernelPeer); an
		// IPv4 socket but for tcp6 and udp6.
		ips = []netip.Addr{netip.IPv4Unspecified()}
		if strings.HasSuffix(network, "6") {
			ips[0] = netip.IPv6Unspecified()
		}
	} else {
		fam := "ip"
		if strings.HasSuffix(network, "4") || strings.HasSuffix(network, "6") {
			fam += network[len(network)-1:]
		}
		if ips, err = lookupAddrs(ctx, res, fam, host); err != nil {
			return nil, err
		}
	}
	dsts := make([]netip.AddrPort, len(ips))
	for i, ip := range ips {
		dsts[i] = netip.AddrPortFrom(ip.Unmap(), uint16(port))
	}
	return dsts, nil
}

// unbound reports whether d's dials leave the source to the kernel: no
// Sources, and no LocalAddr or an unspecified one.
func (d *Dialer) unbound() bool {
	a := addrPort(d.Base.LocalAddr).Addr()
	return len(d.Sources) == 0 && (!a.IsValid() || a.IsUnspecified())
}

// probeUnboundUDP is the headroom of UDP dials that bind no address: the
// socket takes its port on the wildcard address before connect() picks the
// source, so a port any UDP socket of the family holds (on any address) is
// taken for it; with network "udp", an IPv6 socket is dual-stack and
// IPv4 sockets count too.
func probeUnboundUDP(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort, r PortRange) (Headroom, error) {
	h := Headroom{Source: src, Dest: dst, Range: r}
	p, host, err := diagUDPAny(ctx, dst.Addr().Unmap().Is4(), network == "udp6", r)
	if err != nil {
		return h, probeError(err)
	}
	host.fill(&h, &p)
	return h, nil
}

// kernelPeer is the address the kernel connects a socket bound to src to
// when asked for dst: dst itself, except for the unspecified address, which
// the kernel replaces with src (IPv4; 127.0.0.1 when src is not given) or
// ::1 (IPv6).
func kernelPeer(src, dst netip.Addr) netip.Addr {
	switch {
	case !dst.IsUnspecified():
		return dst.WithZone("")
	case dst.Is4() && src.IsValid() && !src.IsUnspecified():
		return src.WithZone("")
	case dst.Is4():
		return netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	return netip.IPv6Loopback()
}

// probeBindFirst is the headroom of TCP dials that bind src:0 before
// connecting (DisableBindNoPort).
func probeBindFirst(ctx context.Context, src netip.Addr, dst netip.AddrPort, r PortRange) (Headroom, error) {
	h := Headroom{Source: src, Dest: dst, Range: r}
	p, host, err := diagTCPBindFirst(ctx, src.Unmap().WithZone(""), r)
	if err != nil {
		return h, probeError(err)
	}
	host.fill(&h, &p)
	return h, nil
}

// headroomPool returns the sources of the pool d's dials to address use
// (Sources, or the pool GetSources returns), and whether there is one.
func (d *Dialer) headroomPool(ctx context.Context, network, address string) ([]netip.Addr, bool, error) {
	switch {
	case d.GetSources != nil:
		p, err := d.chosenPool(ctx, network, address, d.Base.LocalAddr) // as the dial
		if p == nil {
			return nil, false, err // nil, nil: the routed source, as the dial's
		}
		return p.addrs, true, nil
	case len(d.Sources) > 0:
		return d.Sources, true, nil
	}
	return nil, false, nil
}

// sourcesFor returns the sources a dial from d to dst would use: those of
// pool (when pooled) of dst's family, on its link when dst is link-local.
func (d *Dialer) sourcesFor(ctx context.Context, network string, dst netip.AddrPort, pool []netip.Addr, pooled bool) ([]netip.Addr, error) {
	if pooled {
		var (
			cands []*source
			order []int
		)
		for _, s := range pool {
			s = s.Unmap()
			if s.Is4() != dst.Addr().Is4() {
				continue
			}
			z, _ := zoneIndex(s.Zone())
			order = append(order, len(cands))
			cands = append(cands, &source{addr: s, zone: z})
		}
		if len(cands) == 0 {
			return nil, nil
		}
		order, err := onLink(order, cands, dst, dst.String()) // as the dial leaves them out
		if err != nil {
			return nil, err
		}
		srcs := make([]netip.Addr, len(order))
		for k, i := range order {
			srcs[k] = cands[i].addr
		}
		return srcs, nil
	}
	if a := addrPort(d.Base.LocalAddr).Addr(); a.IsValid() && !a.IsUnspecified() {
		if a.Is4() != dst.Addr().Is4() {
			return nil, nil
		}
		return []netip.Addr{a}, nil
	}
	// The kernel's choice, from its routing table (RTM_GETROUTE): no
	// socket, so no port taken, and an answer even when every port is.
	src, err := d.routedSource(ctx, network, dst)
	if err != nil {
		return nil, err
	}
	return []netip.Addr{src}, nil
}

// headroomError wraps err, an error of Dialer.Headroom's, naming the call
// once: "safedial: Headroom: safedial: ..." loses its second prefix.
func headroomError(err error) error {
	return &prefixedError{prefix: "safedial: Headroom: ", err: err}
}

type prefixedError struct {
	prefix string
	err    error
}

func (e *prefixedError) Error() string {
	return e.prefix + strings.TrimPrefix(e.err.Error(), "safedial: ")
}
func (e *prefixedError) Unwrap() error { return e.err }
