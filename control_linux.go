package safedial

import (
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

const (
	reuseAddrSupported  = true
	bindNoPortSupported = true
	portRangeSupported  = true
	alwaysBinds         = false // Go binds only when LocalAddr is set
	bindNoPortName      = "IP_BIND_ADDRESS_NO_PORT"
	poolInHook          = true // the pool's hook binds and connects itself
)

func setOptions(fd uintptr, tcp bool, o options) error {
	s := int(fd)
	if o.reuseAddr && tcp && !reuseAddrOpt.refused() {
		if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			reuseAddrOpt.refuse(err)
		}
	}
	if o.bindNoPort && !bindNoPortOpt.refused() {
		if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			bindNoPortOpt.refuse(err)
		}
	}
	if o.portRange != 0 {
		// The kernel takes a u32; SetsockoptInt passes the same 4 bytes.
		if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, int(int32(o.portRange))); err != nil {
			return &unsupportedError{what: "PortRange needs IP_LOCAL_PORT_RANGE, which this system refused (it needs Linux 6.3 or later, and no sandbox forbidding it)", err: os.NewSyscallError("setsockopt", err)}
		}
	}
	return nil
}

// localPortRange reads net.ipv4.ip_local_port_range of the caller's network
// namespace.
func localPortRange() (PortRange, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return PortRange{}, err
	}
	var r PortRange
	if _, err := fmt.Sscan(string(b), &r.Lo, &r.Hi); err != nil {
		return PortRange{}, err
	}
	return r, nil
}

// bindConnect binds s to src:0 and starts connecting it to dst (a
// non-blocking connect: the port is chosen, or exhaustion reported, at once).
// It returns the system call that failed and its error.
func bindConnect(s int, src *source, dst netip.AddrPort) (string, error) {
	if err := unix.Bind(s, sockaddr(src.addr, src.zone, 0)); err != nil {
		return "bind", err
	}
	zone, _ := zoneIndex(dst.Addr().Zone()) // unknown: connect reports it
	switch err := unix.Connect(s, sockaddr(dst.Addr(), zone, dst.Port())); err {
	case nil, unix.EINPROGRESS, unix.EISCONN:
		return "", nil
	default:
		return "connect", err
	}
}

func sockaddr(a netip.Addr, zone uint32, port uint16) unix.Sockaddr {
	if a.Is4() {
		return &unix.SockaddrInet4{Addr: a.As4(), Port: int(port)}
	}
	return &unix.SockaddrInet6{Addr: a.As16(), Port: int(port), ZoneId: zone}
}

// socketLike makes a socket of s's domain, type and protocol, with the
// defaults Go gave s (IPV6_V6ONLY, SO_BROADCAST), for failover.
func socketLike(s int) (int, error) {
	domain, err1 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
	typ, err2 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TYPE)
	proto, err3 := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err := firstErr(err1, err2, err3); err != nil {
		return -1, os.NewSyscallError("getsockopt", err)
	}
	n, err := unix.Socket(domain, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	copyOpt := func(level, opt int) error {
		v, err := unix.GetsockoptInt(s, level, opt)
		if err == nil && v != 0 {
			err = unix.SetsockoptInt(n, level, opt, v)
		}
		return err
	}
	if domain == unix.AF_INET6 {
		err = copyOpt(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
	}
	if typ == unix.SOCK_DGRAM && err == nil {
		err = copyOpt(unix.SOL_SOCKET, unix.SO_BROADCAST) // Go sets it on IPv6 UDP sockets too
	}
	if err != nil {
		unix.Close(n)
		return -1, os.NewSyscallError("setsockopt", err)
	}
	return n, nil
}

// replaceFD puts socket n in the place of s (same descriptor number, which
// net.Dialer holds) and closes n's old number.
func replaceFD(n, s int) error {
	err := unix.Dup3(n, s, unix.O_CLOEXEC)
	unix.Close(n)
	return os.NewSyscallError("dup3", err)
}

func closeFD(s int) { unix.Close(s) }

// boundAddr returns the local address of s.
func boundAddr(s int) netip.Addr {
	sa, err := unix.Getsockname(s)
	if err != nil {
		return netip.Addr{}
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr).Unmap()
	}
	return netip.Addr{}
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
