package safedial

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"

	"github.com/safedial/safedial/internal/sockdiag"
	"github.com/safedial/safedial/internal/sysctl"
	"golang.org/x/sys/unix"
)

// What sock_diag tells a shared UDP dial about the ports of its range. The
// same answer serves the dial's search (which ports to try) and
// Dialer.Headroom with ShareUDPPorts (how many are left): written once.

// portState is what holds one port for a shared dial from a source toward a
// peer; when several sockets are on a port, the highest state counts.
type portState uint8

const (
	portFree   portState = iota // no UDP socket on the port
	portShared                  // only ShareUDPPorts sockets of this user, connected to other peers: a shared bind joins them
	portMaybe                   // a ShareUDPPorts socket of this user not connected yet (a dial in flight): try last
	portToward                  // a socket connected to the peer: taken toward it
	portBound                   // a socket a shared bind cannot join (see sharedPorts): taken for every destination
	portOff                     // net.ipv4.ip_local_reserved_ports, or outside the namespace range: never handed out
)

// The mark of a ShareUDPPorts socket, visible to every process in the
// dumps: IP_RECVERR_RFC4884 set and IP_RECVERR not. RFC 4884 only changes
// how ICMP errors are queued when IP_RECVERR is on, so without it the
// option does nothing; no other program has a reason to set one without the
// other. sock_diag does not show SO_REUSEPORT, so the mark is how a dump
// tells a port a shared bind can join (ShareUDPPorts sockets keep
// SO_REUSEPORT on) from one held by a plain socket of the same user.
var markRefused atomic.Bool // the kernel refused IP_RECVERR_RFC4884 (before 5.9)

func markShared(fd int) {
	if markRefused.Load() {
		return
	}
	if unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR_RFC4884, 1) != nil {
		markRefused.Store(true)
	}
}

// shareRange returns the ports a shared dial may choose from: r (the
// Dialer's PortRange, or the namespace range when zero) intersected with the
// namespace's net.ipv4.ip_local_port_range, less
// net.ipv4.ip_local_reserved_ports: the ports the kernel itself would hand
// out. An unreadable setting is an error that says so, never an empty range.
// Both settings are read at every dial (two small reads of /proc), so a port
// reserved before a dial starts is never used; the set computed from them is
// reused while they read the same.
func shareRange(r PortRange) (PortRange, *portSet, error) {
	ns, err := readPortRange()
	if err != nil {
		return r, nil, fmt.Errorf("safedial: ShareUDPPorts: cannot read net.ipv4.ip_local_port_range, the ports a dial may use: %w", err)
	}
	reserved, err := readReserved()
	if err != nil {
		return r, nil, fmt.Errorf("safedial: ShareUDPPorts: cannot read net.ipv4.ip_local_reserved_ports, ports the kernel never hands out: %w", err)
	}
	if c := shareRanges.Load(); c != nil && c.asked == r && c.ns == ns && c.reserved == reserved {
		return c.r, c.off, nil
	}
	asked := r
	if r == (PortRange{}) {
		r = ns
	}
	in := PortRange{Lo: max(r.Lo, ns.Lo), Hi: min(r.Hi, ns.Hi)}
	if in.Lo > in.Hi {
		return r, nil, errConfig("ShareUDPPorts: PortRange %v does not intersect this network namespace's net.ipv4.ip_local_port_range %v", r, ns)
	}
	list, err := sysctl.ParsePortList(reserved)
	if err != nil {
		return r, nil, fmt.Errorf("safedial: ShareUDPPorts: cannot read net.ipv4.ip_local_reserved_ports, ports the kernel never hands out: %w", err)
	}
	off := new(portSet)
	for p := int(r.Lo); p <= int(r.Hi); p++ {
		if p < int(in.Lo) || p > int(in.Hi) || list.Has(uint16(p)) {
			off.Add(uint16(p))
		}
	}
	shareRanges.Store(&rangeEntry{asked: asked, ns: ns, reserved: reserved, r: r, off: off})
	return r, off, nil
}

// shareRanges keeps the last answer of shareRange and the settings it was
// made from (its off set is never modified).
var shareRanges atomic.Pointer[rangeEntry]

type rangeEntry struct {
	asked, ns, r PortRange
	reserved     string // net.ipv4.ip_local_reserved_ports as read
	off          *portSet
}

// Tests replace these to make the settings unreadable.
var (
	readPortRange = portRangeNow
	readReserved  = sysctl.ReservedText
)

// portRangeNow reads net.ipv4.ip_local_port_range as it is now.
func portRangeNow() (PortRange, error) {
	lo, hi, err := sysctl.PortRangeNow()
	return PortRange{Lo: lo, Hi: hi}, err
}

// sharedPorts lists, for each port of r, what holds it for a shared dial
// from src toward peer (the address the kernel connects to): one dump per
// address family (for an IPv4 source, also the IPv6 sockets that hold IPv4
// ports: IPv4-mapped and the dual-stack wildcard), filtered by the kernel to
// the range. A port is taken for every destination (portBound) when a socket
// a shared bind must not join is on src or the wildcard address: another
// user's socket (the kernel never shares between users), or a socket of
// this user without the mark of ShareUDPPorts sockets (a plain connected or
// bound UDP socket has no SO_REUSEPORT, and one that has it shares outside
// the scheme). Where the kernel shows no socket options (before Linux
// 5.10) or refuses the mark, the sockets of this user are tried instead,
// and a failed bind tells. off marks the ports the kernel never hands out.
// For a link-local source (zone: its interface index), sockets bound to
// another interface are left out, as the kernel keeps them apart. inFlight,
// when not nil, is called for each socket of this user bound in the range
// and not connected that may be a claim in flight (a ShareUDPPorts socket,
// or any socket where the mark cannot be seen).
func sharedPorts(ctx context.Context, src netip.Addr, zone uint32, peer netip.Addr, peerPort uint16, r PortRange, off *portSet, inFlight func(port uint16, cookie uint64)) ([]portState, error) {
	states := make([]portState, r.size())
	for p := int(r.Lo); p <= int(r.Hi); p++ {
		if off.Has(uint16(p)) {
			states[p-int(r.Lo)] = portOff
		}
	}
	var b sockdiag.Bytecode
	b.Port(sockdiag.SGE, r.Lo)
	b.Port(sockdiag.SLE, r.Hi)
	reqs := sockdiag.Requests(true, src.Is4(), src.Is6(), sockdiag.AllStates, b.Bytes())
	if src.Is6() {
		reqs = reqs[:1] // AF_INET6 only: IPv4 sockets never hold an IPv6 address's port
	}
	uid := uint32(os.Geteuid())
	marks := !markRefused.Load()
	err := dump(ctx, reqs, func(msg []byte) {
		s := parseDiag(msg)
		p := s.local.Port()
		if p < r.Lo || p > r.Hi {
			return
		}
		if zone != 0 && s.ifindex != 0 && s.ifindex != zone {
			return // bound to another link: the kernel keeps the two apart
		}
		a := s.local.Addr()
		switch {
		case a == src.WithZone(""):
		case a.IsUnspecified() && (a.Is4() == src.Is4() || s.family == unix.AF_INET6 && src.Is4() && !s.v6only):
			// The wildcard of src's family, or the dual-stack [::] (an
			// IPv6-only [::] holds no IPv4 port).
		default:
			return
		}
		st := portShared
		switch {
		case s.connected && s.remote == netip.AddrPortFrom(peer, peerPort):
			st = portToward
		case s.uid != uid:
			st = portBound
		case marks && s.hasOpts && !s.marked:
			st = portBound // a plain socket of this user
		case !s.connected:
			st = portMaybe
			if inFlight != nil {
				inFlight(p, s.cookie)
			}
		}
		if i := int(p - r.Lo); st > states[i] {
			states[i] = st
		}
	})
	return states, err
}

// sharedHeadroom is the headroom of a shared dial from src toward dst: the
// ports of the range the kernel hands out, by what holds them.
func sharedHeadroom(ctx context.Context, src netip.Addr, dst netip.AddrPort, r PortRange) (Headroom, error) {
	h := Headroom{Source: src, Dest: dst, Range: r}
	rng, off, err := shareRange(r)
	if err != nil {
		return h, err
	}
	h.Range = rng
	zone, err := zoneIndex(src.Zone())
	if err != nil {
		return h, errConfig("ShareUDPPorts: source %v: unknown interface: %v", src, err)
	}
	peer := kernelPeer(src, dst.Addr())
	states, err := sharedPorts(ctx, src.WithZone(""), zone, peer, dst.Port(), rng, off, nil)
	if err != nil {
		return h, probeError(err)
	}
	h.count(states)
	return h, nil
}

// count fills h's counts from states: maybe counts as free (a dial in
// flight connects somewhere or backs out).
func (h *Headroom) count(states []portState) {
	for _, st := range states {
		switch st {
		case portToward:
			h.InUse++
		case portBound:
			h.Bound++
		case portOff:
			h.Reserved++
		default:
			h.Free++
		}
	}
}
