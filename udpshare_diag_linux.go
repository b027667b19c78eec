package safedial

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// What sock_diag tells a shared UDP dial about the ports of its range. The
// same answer serves the dial's search (which ports to try) and
// Dialer.Headroom with ShareUDPPorts (how many are left): written once.

// portState is what holds one port for a shared dial from a source toward a
// peer, worst first when several sockets are on the port.
type portState uint8

const (
	portFree   portState = iota // no UDP socket on the port
	portShared                  // only ShareUDPPorts sockets of this user, connected to other peers: a shared bind joins them
	portMaybe                   // a ShareUDPPorts socket of this user not connected yet (a dial in flight): try last
	portToward                  // a socket connected to the peer: taken toward it
	portBound                   // a socket a shared bind cannot join (see sharedPorts): taken for every destination
	portOff                     // net.ipv4.ip_local_reserved_ports, or outside the namespace range: never handed out
)

// inetDiagSockopt is INET_DIAG_SOCKOPT (Linux 5.10+), the attribute with
// struct inet_diag_sockopt: bit flags of IP-level options, sent with every
// socket.
const inetDiagSockopt = 22

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

// sockopt bit positions in struct inet_diag_sockopt, a pair of bit-field
// bytes: the first field is the lowest bit on little-endian machines, the
// highest on big-endian ones.
var recverrBit, rfc4884Bit = func() (uint16, uint16) {
	var probe [2]byte
	binary.NativeEndian.PutUint16(probe[:], 1)
	if probe[0] == 1 { // little-endian
		return 1 << 0, 1 << (8 + 1)
	}
	return 1 << 7, 1 << (8 + 6)
}()

// diagSocket is what a dump says about one UDP socket.
type diagSocket struct {
	family    byte
	connected bool
	local     netip.AddrPort // unmapped
	remote    netip.AddrPort // unmapped
	uid       uint32
	cookie    uint64
	marked    bool // a ShareUDPPorts socket
	hasOpts   bool // the kernel sent INET_DIAG_SOCKOPT
}

func parseDiag(msg []byte) diagSocket {
	id := msg[4:] // struct inet_diag_sockid: sport, dport, src[16], dst[16], if, cookie
	s := diagSocket{family: msg[0], connected: msg[1] == tcpEstablished}
	var src, dst netip.Addr
	if s.family == unix.AF_INET {
		src, dst = netip.AddrFrom4([4]byte(id[4:8])), netip.AddrFrom4([4]byte(id[20:24]))
	} else {
		src, dst = netip.AddrFrom16([16]byte(id[4:20])).Unmap(), netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	}
	s.local = netip.AddrPortFrom(src, binary.BigEndian.Uint16(id[0:2]))
	s.remote = netip.AddrPortFrom(dst, binary.BigEndian.Uint16(id[2:4]))
	s.cookie = binary.NativeEndian.Uint64(id[40:48])
	s.uid = binary.NativeEndian.Uint32(msg[64:68])
	for a := msg[sizeofDiagMsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		if l < unix.SizeofRtAttr || l > len(a) {
			break
		}
		if binary.NativeEndian.Uint16(a[2:]) == inetDiagSockopt && l >= unix.SizeofRtAttr+2 {
			bits := uint16(a[unix.SizeofRtAttr]) | uint16(a[unix.SizeofRtAttr+1])<<8
			s.hasOpts = true
			s.marked = bits&rfc4884Bit != 0 && bits&recverrBit == 0
		}
		a = a[min((l+3)&^3, len(a)):]
	}
	return s
}

// shareRange returns the ports a shared dial may choose from: r (the
// Dialer's PortRange, or the namespace range when zero) intersected with the
// namespace's net.ipv4.ip_local_port_range, less
// net.ipv4.ip_local_reserved_ports: the ports the kernel itself would hand
// out. An unreadable setting is an error that says so, never an empty range.
func shareRange(r PortRange) (PortRange, *portSet, error) {
	ns, err := readPortRange()
	if err != nil {
		return r, nil, fmt.Errorf("safedial: ShareUDPPorts: cannot read net.ipv4.ip_local_port_range, the ports a dial may use: %w", err)
	}
	if r == (PortRange{}) {
		r = ns
	}
	in := PortRange{Lo: max(r.Lo, ns.Lo), Hi: min(r.Hi, ns.Hi)}
	if in.Lo > in.Hi {
		return r, nil, errConfig("ShareUDPPorts: PortRange %v does not intersect this network namespace's net.ipv4.ip_local_port_range %v", r, ns)
	}
	reserved, err := readReserved()
	if err != nil {
		return r, nil, fmt.Errorf("safedial: ShareUDPPorts: cannot read net.ipv4.ip_local_reserved_ports, ports the kernel never hands out: %w", err)
	}
	off := new(portSet)
	for p := int(r.Lo); p <= int(r.Hi); p++ {
		if p < int(in.Lo) || p > int(in.Hi) || reserved.has(uint16(p)) {
			off.add(uint16(p))
		}
	}
	return r, off, nil
}

// Tests replace these to make the settings unreadable.
var (
	readPortRange = localPortRange
	readReserved  = reservedPorts
)

// sharedPorts lists, for each port of r, what holds it for a shared dial
// from src toward peer (the address the kernel connects to): one dump per
// address family (for an IPv4 source, also the IPv6 sockets that hold IPv4
// ports: IPv4-mapped and the dual-stack wildcard), filtered by the kernel to
// the range. A port is taken for every destination (portBound) when a socket
// a bind of it with SO_REUSEPORT would conflict with, or that would share it
// outside the scheme, is on src or the wildcard address: another user's
// socket (the kernel never shares between users), a socket that is not a
// ShareUDPPorts socket (a plain connected or bound UDP socket of this user
// has no SO_REUSEPORT, or shares outside the scheme), or a ShareUDPPorts
// socket bound without being connected for no dial in flight. off marks
// the ports the kernel never hands out.
func sharedPorts(ctx context.Context, src, peer netip.Addr, peerPort uint16, r PortRange, off *portSet) ([]portState, error) {
	states := make([]portState, r.size())
	for p := int(r.Lo); p <= int(r.Hi); p++ {
		if off.has(uint16(p)) {
			states[p-int(r.Lo)] = portOff
		}
	}
	var b bytecode
	b.port(bcSGE, r.Lo)
	b.port(bcSLE, r.Hi)
	reqs := requests(true, src.Is4(), src.Is6(), allStates, b.bytes())
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
		a := s.local.Addr()
		switch {
		case a == src.WithZone(""):
		case a.IsUnspecified() && (a.Is4() == src.Is4() || s.family == unix.AF_INET6 && src.Is4()):
			// The wildcard of src's family, or the dual-stack [::].
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
	peer := kernelPeer(src, dst.Addr())
	states, err := sharedPorts(ctx, src, peer, dst.Port(), rng, off)
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

// kernelPeer is the address the kernel connects a socket bound to src to
// when asked for dst: dst itself, except for the unspecified address, which
// the kernel replaces with src (IPv4) or ::1 (IPv6).
func kernelPeer(src, dst netip.Addr) netip.Addr {
	switch {
	case !dst.IsUnspecified():
		return dst.WithZone("")
	case dst.Is4():
		return src.WithZone("")
	}
	return netip.IPv6Loopback()
}
