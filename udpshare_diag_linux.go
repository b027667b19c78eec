package safedial

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"

	"github.com/safedial/safedial/internal/sockdiag"
	"golang.org/x/sys/unix"
)

// sock_diag and socket calls of shared UDP dials.

// diagSocket is what a dump says about one UDP socket.
type diagSocket struct {
	family    byte
	connected bool
	ifindex   uint32         // the interface the socket is bound to, or 0
	local     netip.AddrPort // unmapped
	remote    netip.AddrPort // unmapped
	uid       uint32
	cookie    uint64
	marked    bool // a ShareUDPPorts socket
	hasOpts   bool // the kernel sent INET_DIAG_SOCKOPT
	v6only    bool // INET_DIAG_SKV6ONLY came and is set (IPV6_V6ONLY)
}

func parseDiag(msg []byte) diagSocket {
	s := sockdiag.Parse(msg)
	return diagSocket{
		family:    s.Family,
		connected: s.State == sockdiag.StateEstablished,
		ifindex:   s.IfIndex,
		local:     netip.AddrPortFrom(s.Src, s.SPort),
		remote:    netip.AddrPortFrom(s.Dst, s.DPort),
		uid:       s.UID,
		cookie:    s.Cookie,
		marked:    s.RFC4884() && !s.RecvErr(),
		hasOpts:   s.HasSockopt,
		v6only:    s.V6Only,
	}
}

// peerOf returns the address fd is connected to, unmapped and without zone.
func peerOf(fd int) netip.AddrPort {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return netip.AddrPort{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// drain discards the datagrams queued on fd: they arrived while it was bound
// but not yet connected, possibly from anyone.
func drain(fd int) {
	var buf [1]byte
	for range 1 << 16 {
		_, _, err := unix.Recvfrom(fd, buf[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		switch err {
		case nil, unix.EINTR, unix.ECONNREFUSED:
			continue // a datagram, or a pending ICMP error, gone
		}
		return // EAGAIN: nothing left
	}
}

// othersConnected reports whether a UDP socket other than the one with
// cookie is connected from src:port (on interface zone, when not 0) to
// peer: one dump of src's family, filtered by the kernel to that 4-tuple (a
// dump walks the kernel's whole UDP table). For an IPv4 source, IPv6
// sockets can hold the 4-tuple too (IPv4-mapped or the dual-stack
// wildcard); they are dumped only when a lookup (no walk) finds an IPv6
// socket that would receive from the peer on that port, which any of them
// would. Claims use it only when another user holds their 4-tuple's lock.
func othersConnected(ctx context.Context, nl int, src netip.Addr, zone uint32, port uint16, peer netip.AddrPort, cookie uint64) (bool, error) {
	var b sockdiag.Bytecode
	b.Cond(sockdiag.SCond, src, int32(port))
	b.Cond(sockdiag.DCond, peer.Addr(), int32(peer.Port()))
	// Connected sockets only, and the ports in the request itself: the
	// kernel's UDP dump compares those before running the bytecode.
	reqs := sockdiag.Requests(true, src.Is4(), src.Is6(), 1<<sockdiag.StateEstablished, b.Bytes())
	if src.Is4() {
		_, v6, err := udpOwner(ctx, nl, unix.AF_INET6, netip.AddrPortFrom(src, port), peer, 0)
		if err != nil {
			return false, err
		}
		if !v6 {
			reqs = reqs[1:] // AF_INET only
		}
	}
	for _, req := range reqs {
		id := req[unix.SizeofNlMsghdr+8:]
		binary.BigEndian.PutUint16(id[0:], port)
		binary.BigEndian.PutUint16(id[2:], peer.Port())
	}
	others := false
	err := dumpOn(ctx, nl, reqs, func(msg []byte) {
		s := parseDiag(msg)
		if s.cookie != cookie && (zone == 0 || s.ifindex == 0 || s.ifindex == zone) {
			others = true
		}
	})
	return others, err
}

// dumpOn is dump on the dial's own NETLINK_SOCK_DIAG socket nl (with its
// read deadline set), which saves making one per dump.
func dumpOn(ctx context.Context, nl int, reqs [][]byte, each func(msg []byte)) error {
	return diagErr(sockdiag.DumpOn(ctx, nl, reqs, each))
}

func reusePort(fd, v int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, v); err != nil {
		return &unsupportedError{what: "ShareUDPPorts needs SO_REUSEPORT", err: os.NewSyscallError("setsockopt", err)}
	}
	return nil
}

// udpOwner asks sock_diag which UDP socket of family would receive a
// datagram from peer on local (bound to interface ifindex, for a link-local
// address with a zone), and returns its cookie (see sockdiag.UDPOwner).
func udpOwner(ctx context.Context, nl int, family byte, local, peer netip.AddrPort, ifindex uint32) (cookie uint64, found bool, err error) {
	cookie, found, err = sockdiag.UDPOwner(ctx, nl, family, local, peer, ifindex)
	if e, ok := err.(*sockdiag.Error); ok {
		return 0, false, &unsupportedError{what: "ShareUDPPorts needs sock_diag lookups of UDP sockets", err: e.Err}
	}
	return cookie, found, err
}
