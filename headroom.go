package safedial

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Headroom is how many ephemeral ports a new connection from Source to Dest
// could still use: the answer to "how close is this pair to exhaustion?".
type Headroom struct {
	Source netip.Addr     `json:"source"` // as asked
	Dest   netip.AddrPort `json:"dest"`   // as asked
	Range  PortRange      `json:"range"`  // the range in force: the Dialer's PortRange, else the namespace's ip_local_port_range
	// The five counts below are disjoint ports of Range:
	// InUse + TimeWait + Reserved + Bound + Free == the size of Range.
	InUse    int `json:"in_use"`    // ports with a socket from Source to Dest not in TIME_WAIT
	TimeWait int `json:"time_wait"` // ports with a socket from Source to Dest in TIME_WAIT (counted as free instead when TimeWaitReusable)
	Reserved int `json:"reserved"`  // ports of net.ipv4.ip_local_reserved_ports, which the kernel never hands out
	Bound    int `json:"bound"`     // ports a bind conflict holds for every destination (explicit binds, bind-before-connect sockets)
	Free     int `json:"free"`      // ports a new connection from Source to Dest can still use
	// TimeWaitReusable reports that the kernel reuses TIME_WAIT 4-tuples
	// of this pair for new outgoing connections (net.ipv4.tcp_tw_reuse),
	// so that TIME_WAIT ports are counted in Free.
	TimeWaitReusable bool `json:"time_wait_reusable,omitempty"`
}

// Used returns the share of Range in use, from 0 to 1.
func (h Headroom) Used() float64 {
	n := h.Range.size()
	if n == 0 {
		return 0
	}
	return float64(min(h.InUse, n)) / float64(n)
}

func (r PortRange) size() int {
	if r.Hi < r.Lo {
		return 0
	}
	return int(r.Hi) - int(r.Lo) + 1
}

// ProbeHeadroom counts the sockets from src to dst whose local port is in the
// namespace's ephemeral range (net.ipv4.ip_local_port_range), in every state,
// TIME_WAIT included, and so how many ports a new connection from src to dst
// could still use. It asks the kernel once per address family with a
// NETLINK_SOCK_DIAG dump whose bytecode filter (source address, destination
// address and port, local port range) makes the kernel send only the matching
// sockets; it needs no privilege and touches no socket of the program.
//
// network is "tcp", "tcp4" or "tcp6", or "udp", "udp4" or "udp6". For UDP a
// port is held for every destination (see [Dialer.Sources]), so InUse
// counts the UDP sockets on src (or the wildcard address of its family) with
// a local port in the range, whatever their destination. src and dst must be
// valid addresses of one family (IPv4-mapped IPv6 addresses count as IPv4).
// Where sock_diag is not available (systems other than Linux) the error
// matches errors.ErrUnsupported.
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

// probeIn is ProbeHeadroom with the range given; shared counts UDP sockets
// per destination, as ShareUDPPorts uses ports.
func probeIn(ctx context.Context, network string, src netip.Addr, dst netip.AddrPort, r PortRange, shared bool) (Headroom, error) {
	h := Headroom{Source: src, Dest: dst, Range: r}
	inUse, tw, err := diagCount(ctx, strings.HasPrefix(network, "udp"), shared, src.Unmap(), netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), r)
	if err != nil {
		return h, probeError(err)
	}
	h.InUse, h.TimeWait, h.Free = inUse, tw, max(r.size()-inUse, 0)
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
	case s.Is4() != d.Is4():
		return bad("the source and the destination are of different address families")
	case strings.HasSuffix(network, "4") && !s.Is4(), strings.HasSuffix(network, "6") && !s.Is6():
		return bad("network %s does not match the addresses' family", network)
	}
	return nil
}

var errNoDiag = &unsupportedError{what: "headroom probes need Linux's sock_diag"}

func probeError(err error) error {
	return fmt.Errorf("safedial: probing headroom: %w", err)
}

// ProbeAllHeadroom returns the headroom of every (source, destination) pair of
// network on this host (its network namespace) that has sockets with a local
// port in the ephemeral range, most used first: one sock_diag dump per
// address family, filtered by the kernel to that range. For UDP, a pair is a
// source and the sockets on it, whatever their destination (Dest is then the
// zero AddrPort). Listening sockets are not counted.
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
	counts, err := diagPairs(ctx, udp, !strings.HasSuffix(network, "6"), !strings.HasSuffix(network, "4"), r)
	if err != nil {
		return nil, probeError(err)
	}
	hs := make([]Headroom, 0, len(counts))
	for k, c := range counts {
		hs = append(hs, Headroom{Source: k.src, Dest: k.dst, Range: r, InUse: c.inUse, TimeWait: c.timeWait, Free: max(r.size()-c.inUse, 0)})
	}
	slices.SortFunc(hs, func(a, b Headroom) int {
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

type pairCount struct{ inUse, timeWait int }

// Headroom returns the headroom of each of d's sources toward each address
// address resolves to: the sources of Sources of the address's family, or
// Base.LocalAddr, or, when neither is set, the source the kernel's routing
// picks for the address. The range is d's PortRange when set, else the
// namespace's. Host names are resolved with Base.Resolver. An address with
// no source of its family is left out; none at all is an error. With
// ShareUDPPorts, a UDP headroom is what a shared dial can still take toward
// the address: InUse counts the ports connected toward it, Bound the ports
// held for every destination by sockets a shared port cannot join (plain or
// another user's UDP sockets, wildcard and dual-stack binds), Reserved the
// ports of net.ipv4.ip_local_reserved_ports and those outside the
// namespace range.
func (d *Dialer) Headroom(ctx context.Context, network, address string) ([]Headroom, error) {
	if _, _, err := net.SplitHostPort(address); err != nil {
		return nil, fmt.Errorf("safedial: Headroom: %w", err)
	}
	dsts, err := d.resolve(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("safedial: Headroom: %w", err)
	}
	r := d.PortRange
	if r == (PortRange{}) {
		if r, err = localPortRange(); err != nil {
			return nil, probeError(err)
		}
	}
	var hs []Headroom
	for _, dst := range dsts {
		srcs, err := d.sourcesFor(network, dst)
		if err != nil {
			return nil, fmt.Errorf("safedial: Headroom: %w", err)
		}
		for _, src := range srcs {
			if err := checkProbe(network, src, dst); err != nil {
				return nil, err
			}
			var h Headroom
			if d.ShareUDPPorts && strings.HasPrefix(network, "udp") && diagSupported {
				// What a shared dial sees: the ports it can still take
				// toward dst, and what holds the others.
				h, err = sharedHeadroom(ctx, src, dst, d.PortRange)
			} else {
				h, err = probeIn(ctx, network, src, dst, r, d.ShareUDPPorts)
			}
			if err != nil {
				return nil, err
			}
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		return nil, fmt.Errorf("safedial: Headroom(%q, %q): no source of the family of %v", network, address, dsts)
	}
	return hs, nil
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
	} else {
		fam := "ip"
		if strings.HasSuffix(network, "4") || strings.HasSuffix(network, "6") {
			fam += network[len(network)-1:]
		}
		if ips, err = res.LookupNetIP(ctx, fam, host); err != nil {
			return nil, err
		}
	}
	dsts := make([]netip.AddrPort, len(ips))
	for i, ip := range ips {
		dsts[i] = netip.AddrPortFrom(ip.Unmap(), uint16(port))
	}
	return dsts, nil
}

// sourcesFor returns the sources a dial from d to dst would use.
func (d *Dialer) sourcesFor(network string, dst netip.AddrPort) ([]netip.Addr, error) {
	if len(d.Sources) > 0 {
		var srcs []netip.Addr
		for _, s := range d.Sources {
			if s.Unmap().Is4() == dst.Addr().Is4() {
				srcs = append(srcs, s.Unmap())
			}
		}
		return srcs, nil
	}
	if a := addrPort(d.Base.LocalAddr).Addr(); a.IsValid() && !a.IsUnspecified() {
		if a.Is4() != dst.Addr().Is4() {
			return nil, nil
		}
		return []netip.Addr{a}, nil
	}
	// The kernel's choice: a UDP socket connected to dst sends nothing and
	// shows the source the routing picks.
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return []netip.Addr{c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()}, nil
}

// HeadroomFunc returns a function that reports d's headroom toward address
// (see [Dialer.Headroom]), probing at most once per interval and otherwise
// returning the last answer, never on the dial path. Its result marshals to
// JSON, so it publishes with the standard library alone:
//
//	expvar.Publish("headroom", expvar.Func(d.HeadroomFunc("tcp", "db.internal:5432", 10*time.Second)))
//
// A probe that fails reports its error as {"error": "..."}.
func (d *Dialer) HeadroomFunc(network, address string, interval time.Duration) func() any {
	var (
		mu   sync.Mutex
		last any
		at   time.Time
	)
	return func() any {
		mu.Lock()
		defer mu.Unlock()
		if last != nil && time.Since(at) < interval {
			return last
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs, err := d.Headroom(ctx, network, address)
		if err != nil {
			last = map[string]string{"error": err.Error()}
		} else {
			last = hs
		}
		at = time.Now()
		return last
	}
}
