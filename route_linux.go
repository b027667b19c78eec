package safedial

import (
	"encoding/binary"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// routeSource asks the kernel's routing which source address a packet to dst
// would leave from, without making a socket or taking a port. For the
// unspecified address, which the kernel connects to this host, it is the
// loopback address of dst's family, as the kernel picks for an unbound
// socket.
func routeSource(dst netip.Addr) (netip.Addr, error) {
	if dst.IsUnspecified() {
		if dst.Is4() {
			return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
		}
		return netip.IPv6Loopback(), nil
	}
	src, _, err := routeGet(dst)
	if err == nil && !src.IsValid() {
		err = os.NewSyscallError("RTM_GETROUTE", unix.EADDRNOTAVAIL)
	}
	return src, err
}

// localBroadcast reports whether a is a broadcast address of this host (such
// as 127.255.255.255 on lo): binding it succeeds, but the kernel then picks
// the connection's source from the route, so it pins nothing.
func localBroadcast(a netip.Addr) bool {
	if !a.Is4() {
		return false
	}
	_, typ, err := routeGet(a)
	return err == nil && typ == unix.RTN_BROADCAST
}

// routeGet asks the kernel's routing (RTM_GETROUTE) about dst: the preferred
// source address and the route's type (RTN_LOCAL, RTN_BROADCAST, ...).
func routeGet(dst netip.Addr) (src netip.Addr, typ uint8, err error) {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	addr := dst.AsSlice()
	attrLen := unix.SizeofRtAttr + len(addr)
	n := unix.SizeofNlMsghdr + unix.SizeofRtMsg + attrLen
	m := make([]byte, n)
	binary.NativeEndian.PutUint32(m[0:], uint32(n))
	binary.NativeEndian.PutUint16(m[4:], unix.RTM_GETROUTE)
	binary.NativeEndian.PutUint16(m[6:], unix.NLM_F_REQUEST)
	rt := m[unix.SizeofNlMsghdr:]
	rt[0] = familyOf(dst)       // rtm_family
	rt[1] = byte(8 * len(addr)) // rtm_dst_len
	attr := rt[unix.SizeofRtMsg:]
	binary.NativeEndian.PutUint16(attr[0:], uint16(attrLen))
	binary.NativeEndian.PutUint16(attr[2:], unix.RTA_DST)
	copy(attr[unix.SizeofRtAttr:], addr)
	if err := unix.Sendto(s, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("sendto", err)
	}
	var buf [4096]byte
	got, err := unix.Read(s, buf[:])
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("read", err)
	}
	b := buf[:got]
	if len(b) < unix.SizeofNlMsghdr+unix.SizeofRtMsg {
		return netip.Addr{}, 0, os.NewSyscallError("read", unix.EBADMSG)
	}
	if binary.NativeEndian.Uint16(b[4:]) == unix.NLMSG_ERROR {
		return netip.Addr{}, 0, os.NewSyscallError("RTM_GETROUTE", unix.Errno(-int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:]))))
	}
	typ = b[unix.SizeofNlMsghdr+7] // rtm_type, after family, dst_len, src_len, tos, table, protocol, scope
	for a := b[unix.SizeofNlMsghdr+unix.SizeofRtMsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		if l < unix.SizeofRtAttr || l > len(a) {
			break
		}
		if binary.NativeEndian.Uint16(a[2:]) == unix.RTA_PREFSRC {
			if p, ok := netip.AddrFromSlice(a[unix.SizeofRtAttr:l]); ok {
				src = p.Unmap()
			}
		}
		a = a[min((l+3)&^3, len(a)):]
	}
	return src, typ, nil
}
