package safedial

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"

	"github.com/safedial/safedial/internal/route"
	"golang.org/x/sys/unix"
)

// routeSource asks the kernel's routing which source address a packet to dst
// would leave from, without making a socket or taking a port. For the
// unspecified address, which the kernel connects to this host, it is the
// loopback address of dst's family, as the kernel picks for an unbound
// socket. For a destination with a zone (fe80::2%eth1), the route is asked
// for that interface, as the kernel's connect does, and a link-local source
// carries the zone.
func routeSource(dst netip.Addr) (netip.Addr, error) {
	if dst.IsUnspecified() {
		if dst.Is4() {
			return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
		}
		return netip.IPv6Loopback(), nil
	}
	var rc route.Ctx
	if dst.Zone() != "" {
		oif, err := zoneIndex(dst.Zone())
		if err != nil {
			return netip.Addr{}, errConfig("destination %v: unknown interface: %v", dst, err)
		}
		rc.OIF = oif
	}
	src, _, err := route.Get(dst.WithZone(""), rc)
	if err == nil && !src.IsValid() {
		err = os.NewSyscallError("RTM_GETROUTE", unix.EADDRNOTAVAIL)
	}
	if src.Is6() && src.IsLinkLocalUnicast() && dst.Zone() != "" {
		src = src.WithZone(dst.Zone())
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
	return route.Get(dst, route.Ctx{})
}

// routedSource is the source the kernel picks for a socket of d's dials to
// dst that binds no address. The route lookup carries what connect()'s
// own carries: the protocol, dst's port (fib rules' ipproto and dport) and
// the interface of dst's zone; and when d has a user hook, what the hook
// sets that changes the route (SO_MARK, SO_BINDTODEVICE): d's options and
// hook run on a throwaway socket (no port is taken: it is neither bound nor
// connected). An address the hook bound is the source itself. A link-local
// source gets the zone of its interface.
func (d *Dialer) routedSource(ctx context.Context, network string, dst netip.AddrPort) (netip.Addr, error) {
	if dst.Addr().IsUnspecified() {
		return routeSource(dst.Addr())
	}
	rc := route.Ctx{Proto: unix.IPPROTO_TCP, DPort: dst.Port()}
	if strings.HasPrefix(network, "udp") {
		rc.Proto = unix.IPPROTO_UDP
	}
	if z := dst.Addr().Zone(); z != "" {
		i, err := zoneIndex(z)
		if err != nil {
			return netip.Addr{}, err
		}
		rc.OIF = i
	}
	if d.userHook() != nil {
		hc, bound, err := d.hookRouting(ctx, network, dst)
		if err != nil || bound.IsValid() && !bound.IsUnspecified() {
			return bound, err
		}
		rc.Mark, rc.TOS = hc.Mark, hc.TOS
		if hc.OIF != 0 {
			rc.OIF = hc.OIF
		}
	}
	src, _, err := route.Get(dst.Addr().WithZone(""), rc)
	if err == nil && !src.IsValid() {
		err = os.NewSyscallError("RTM_GETROUTE", unix.EADDRNOTAVAIL)
	}
	if err != nil {
		return src, fmt.Errorf("no route to %v: %w", dst.Addr(), err)
	}
	if src.IsLinkLocalUnicast() && rc.OIF != 0 {
		src = src.WithZone(zoneName(map[uint32]string{}, rc.OIF))
	}
	return src, err
}

// hookRouting runs d's options and user hook on a throwaway socket of
// network's kind toward dst, and reads back what of it changes the route,
// and the address it is bound to, if any.
func (d *Dialer) hookRouting(ctx context.Context, network string, dst netip.AddrPort) (route.Ctx, netip.Addr, error) {
	typ, nw := unix.SOCK_STREAM, "tcp"
	if strings.HasPrefix(network, "udp") {
		typ, nw = unix.SOCK_DGRAM, "udp"
	}
	fam := unix.AF_INET
	if nw += "4"; !dst.Addr().Is4() {
		fam, nw = unix.AF_INET6, nw[:3]+"6"
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return route.Ctx{}, netip.Addr{}, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "safedial-headroom")
	defer f.Close()
	c, err := f.SyscallConn()
	if err != nil {
		return route.Ctx{}, netip.Addr{}, err
	}
	if err := d.control(false)(ctx, nw, dst.String(), c); err != nil {
		return route.Ctx{}, netip.Addr{}, fmt.Errorf("the Dialer's Control hook, run to learn its sockets' routing: %w", err)
	}
	return socketRouting(c)
}

// socketRouting reads what of c's socket changes its route (its mark, the
// interface it is bound to, its TOS or traffic class) and the address it is
// bound to, if any.
func socketRouting(c syscall.RawConn) (rc route.Ctx, bound netip.Addr, err error) {
	var gerr error
	if err := c.Control(func(fd uintptr) {
		s := int(fd)
		mark, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			gerr = os.NewSyscallError("getsockopt SO_MARK", err)
			return
		}
		rc.Mark = uint32(mark)
		tos, err := unix.GetsockoptInt(s, unix.SOL_IP, unix.IP_TOS)
		if sa, _ := unix.Getsockname(s); err == nil {
			if _, v6 := sa.(*unix.SockaddrInet6); v6 {
				tos, err = unix.GetsockoptInt(s, unix.SOL_IPV6, unix.IPV6_TCLASS)
			}
		}
		if err != nil {
			gerr = os.NewSyscallError("getsockopt IP_TOS", err)
			return
		}
		rc.TOS = uint8(tos)
		dev, err := unix.GetsockoptString(s, unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
		if err != nil {
			gerr = os.NewSyscallError("getsockopt SO_BINDTODEVICE", err)
			return
		}
		if dev != "" {
			ifi, err := net.InterfaceByName(dev)
			if err != nil {
				gerr = err
				return
			}
			rc.OIF = uint32(ifi.Index)
		}
		if sa, err := unix.Getsockname(s); err == nil {
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				bound = netip.AddrFrom4(sa.Addr)
			case *unix.SockaddrInet6:
				bound = netip.AddrFrom16(sa.Addr).Unmap()
			}
		}
	}); err != nil {
		return route.Ctx{}, netip.Addr{}, err
	}
	if gerr != nil {
		return route.Ctx{}, netip.Addr{}, gerr
	}
	return rc, bound, nil
}
