package safedial

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

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
	return routeGetCtx(dst, routeCtx{})
}

// routeCtx is what of a socket changes the route the kernel picks for it,
// and so its source: its mark (SO_MARK), the interface it is bound to
// (SO_BINDTODEVICE) and its owner (the uid of fib rules' uidrange). The
// zero routeCtx asks as an unmarked, unbound socket of the caller would.
type routeCtx struct {
	mark   uint32
	oif    uint32
	uid    uint32
	hasUID bool // uid was read from the socket; else the kernel takes the caller's
}

// routeGetCtx is routeGet for a socket with routing context rc.
func routeGetCtx(dst netip.Addr, rc routeCtx) (src netip.Addr, typ uint8, err error) {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	if err := unix.Sendto(s, routeRequest(dst, rc, 0), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("sendto", err)
	}
	var buf [4096]byte
	got, err := unix.Read(s, buf[:])
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("read", err)
	}
	_, src, typ, err = parseRoute(buf[:got])
	return src, typ, err
}

// routeRequest lays out one RTM_GETROUTE request for dst with rc, numbered
// seq.
func routeRequest(dst netip.Addr, rc routeCtx, seq uint32) []byte {
	addr := dst.AsSlice()
	type attr struct {
		typ uint16
		val []byte
	}
	attrs := []attr{{unix.RTA_DST, addr}}
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	if rc.mark != 0 {
		attrs = append(attrs, attr{unix.RTA_MARK, u32(rc.mark)})
	}
	if rc.oif != 0 {
		attrs = append(attrs, attr{unix.RTA_OIF, u32(rc.oif)})
	}
	if rc.hasUID {
		attrs = append(attrs, attr{unix.RTA_UID, u32(rc.uid)})
	}
	n := unix.SizeofNlMsghdr + unix.SizeofRtMsg
	for _, a := range attrs {
		n += (unix.SizeofRtAttr + len(a.val) + 3) &^ 3
	}
	m := make([]byte, n)
	binary.NativeEndian.PutUint32(m[0:], uint32(n))
	binary.NativeEndian.PutUint16(m[4:], unix.RTM_GETROUTE)
	binary.NativeEndian.PutUint16(m[6:], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(m[8:], seq)
	rt := m[unix.SizeofNlMsghdr:]
	rt[0] = familyOf(dst)       // rtm_family
	rt[1] = byte(8 * len(addr)) // rtm_dst_len
	b := rt[unix.SizeofRtMsg:]
	for _, a := range attrs {
		binary.NativeEndian.PutUint16(b[0:], uint16(unix.SizeofRtAttr+len(a.val)))
		binary.NativeEndian.PutUint16(b[2:], a.typ)
		copy(b[unix.SizeofRtAttr:], a.val)
		b = b[(unix.SizeofRtAttr+len(a.val)+3)&^3:]
	}
	return m
}

// parseRoute reads one RTM_GETROUTE answer: its sequence number, the
// preferred source and the route's type, or the kernel's error.
func parseRoute(b []byte) (seq uint32, src netip.Addr, typ uint8, err error) {
	if len(b) < unix.SizeofNlMsghdr+4 {
		return 0, netip.Addr{}, 0, os.NewSyscallError("read", unix.EBADMSG)
	}
	seq = binary.NativeEndian.Uint32(b[8:])
	if binary.NativeEndian.Uint16(b[4:]) == unix.NLMSG_ERROR {
		return seq, netip.Addr{}, 0, os.NewSyscallError("RTM_GETROUTE", unix.Errno(-int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:]))))
	}
	if len(b) < unix.SizeofNlMsghdr+unix.SizeofRtMsg {
		return seq, netip.Addr{}, 0, os.NewSyscallError("read", unix.EBADMSG)
	}
	l := min(int(binary.NativeEndian.Uint32(b[0:])), len(b))
	typ = b[unix.SizeofNlMsghdr+7] // rtm_type, after family, dst_len, src_len, tos, table, protocol, scope
	for a := b[unix.SizeofNlMsghdr+unix.SizeofRtMsg : l]; len(a) >= unix.SizeofRtAttr; {
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
	return seq, src, typ, nil
}

// routeKey is one question to the routing: a destination, for a socket
// with a routing context.
type routeKey struct {
	dst netip.Addr
	rc  routeCtx
}

// routeBatch is how many RTM_GETROUTE requests go in one write: the kernel
// answers each with a buffer of about a page, which must fit in the
// socket's receive buffer until read.
const routeBatch = 16

// routeSources answers each of keys with the source the routing picks (the
// zero Addr where there is no route or no preferred source), on one netlink
// socket, several requests per write: a probe over thousands of
// destinations made one socket per lookup and spent most of its time there.
func routeSources(ctx context.Context, keys []routeKey, each func(k routeKey, src netip.Addr)) error {
	if len(keys) == 0 {
		return nil
	}
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	if err := deadline(ctx, s); err != nil {
		return err
	}
	// Room for a batch of answers (the kernel caps it at rmem_max); best
	// effort: a batch that overflows fails the probe with ENOBUFS.
	unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	buf := make([]byte, 4096)
	var req []byte
	for lo := 0; lo < len(keys); lo += routeBatch {
		chunk := keys[lo:min(lo+routeBatch, len(keys))]
		req = req[:0]
		for i, k := range chunk {
			req = append(req, routeRequest(k.dst, k.rc, uint32(i+1))...)
		}
		if err := unix.Sendto(s, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return os.NewSyscallError("sendto", err)
		}
		for got := 0; got < len(chunk); {
			n, err := unix.Read(s, buf)
			if err == unix.EINTR {
				continue
			} else if err == unix.EAGAIN {
				return context.DeadlineExceeded
			} else if err != nil {
				return os.NewSyscallError("read", err)
			}
			seq, src, _, err := parseRoute(buf[:n])
			if seq == 0 || int(seq) > len(chunk) {
				return os.NewSyscallError("read", unix.EBADMSG)
			}
			if err != nil {
				src = netip.Addr{} // no route: in doubt
			}
			each(chunk[seq-1], src)
			got++
		}
	}
	return nil
}

// routedSource is the source the kernel picks for a socket of d's dials to
// dst that binds no address: d's options and user hook run on a throwaway
// socket (no port is taken: it is neither bound nor connected), and what
// they set that changes the route (SO_MARK, SO_BINDTODEVICE) goes with the
// route lookup; an address the hook bound is the source itself.
func (d *Dialer) routedSource(ctx context.Context, network string, dst netip.AddrPort) (netip.Addr, error) {
	if dst.Addr().IsUnspecified() || d.userHook() == nil {
		return routeSource(dst.Addr())
	}
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
		return netip.Addr{}, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), "safedial-headroom")
	defer f.Close()
	c, err := f.SyscallConn()
	if err != nil {
		return netip.Addr{}, err
	}
	if err := d.control(false)(ctx, nw, dst.String(), c); err != nil {
		return netip.Addr{}, fmt.Errorf("the Dialer's Control hook, run to learn its sockets' routing: %w", err)
	}
	var (
		rc    routeCtx
		bound netip.Addr
		gerr  error
	)
	if err := c.Control(func(fd uintptr) {
		s := int(fd)
		mark, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK)
		if err != nil {
			gerr = os.NewSyscallError("getsockopt SO_MARK", err)
			return
		}
		rc.mark = uint32(mark)
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
			rc.oif = uint32(ifi.Index)
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
		return netip.Addr{}, err
	}
	if gerr != nil {
		return netip.Addr{}, gerr
	}
	if bound.IsValid() && !bound.IsUnspecified() {
		return bound, nil
	}
	src, _, err := routeGetCtx(dst.Addr(), rc)
	if err == nil && !src.IsValid() {
		err = os.NewSyscallError("RTM_GETROUTE", unix.EADDRNOTAVAIL)
	}
	return src, err
}

// routeMemory remembers the routing's answers of the last probe, per
// destination and routing context, until the routing may have changed: a
// netlink socket subscribed to every change of routes, rules, addresses
// and links (which change the source the kernel picks) is read before each
// use, and anything on it (or an overflow) forgets them all. The kernel
// queues a change's notice before the command that made it returns, so a
// probe after a change asks again. Only the last probe's answers are kept.
// Where the subscription fails, nothing is remembered. The subscription is
// one descriptor, kept for the life of the process, in the network
// namespace of its first probe (like the sysctls' caches, it assumes the
// process stays there). (Over 18,000 plain
// sockets to 9,000 destinations, the lookups cost about 33 ms a probe; see
// BenchmarkHeadroomPlainSockets.)
var routeMemory struct {
	mu    sync.Mutex
	watch int // the subscribed socket; 0 before the first use, -1 when it failed
	srcs  map[routeKey]netip.Addr
}

// rememberedSources returns the source the routing picks for each of keys
// (see routeSources; keys may repeat), answering from routeMemory what it
// can. The memory keeps what this call used, and what earlier ones did
// while it stays under twice that plus 1,024 (a probe of one pair between
// two of the whole host keeps the host's answers).
func rememberedSources(ctx context.Context, keys []routeKey) ([]netip.Addr, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	routeMemory.mu.Lock()
	defer routeMemory.mu.Unlock()
	if !routesUnchanged() || routeMemory.srcs == nil {
		routeMemory.srcs = map[routeKey]netip.Addr{}
	}
	mem := routeMemory.srcs
	srcs := make([]netip.Addr, len(keys))
	var (
		ask   []routeKey
		where map[routeKey][]int
		used  int
	)
	for i, k := range keys {
		if src, ok := mem[k]; ok {
			srcs[i] = src
			used++
			continue
		}
		if where == nil {
			where = map[routeKey][]int{}
		}
		if _, ok := where[k]; !ok {
			ask = append(ask, k)
		}
		where[k] = append(where[k], i)
	}
	err := routeSources(ctx, ask, func(k routeKey, src netip.Addr) {
		for _, i := range where[k] {
			srcs[i] = src
		}
		mem[k] = src
	})
	if err != nil || routeMemory.watch < 0 {
		routeMemory.srcs = nil
		return srcs, err
	}
	if len(mem) > 2*len(keys)+1024 {
		// Forget what this probe did not use.
		next := make(map[routeKey]netip.Addr, len(keys))
		for _, k := range keys {
			next[k] = mem[k]
		}
		routeMemory.srcs = next
	}
	return srcs, nil
}

// routesUnchanged reports whether no change of the routing was announced
// since it was last called (false on the first call), subscribing first.
func routesUnchanged() bool {
	if routeMemory.watch == 0 {
		routeMemory.watch = -1
		s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		if err != nil {
			return false
		}
		groups := uint32(unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV4_RULE |
			unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_IPV6_ROUTE | 1<<(unix.RTNLGRP_IPV6_RULE-1))
		if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
			unix.Close(s)
			return false
		}
		routeMemory.watch = s
		return false
	}
	if routeMemory.watch < 0 {
		return false
	}
	unchanged := true
	var buf [8192]byte
	for {
		_, _, err := unix.Recvfrom(routeMemory.watch, buf[:], unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN:
			return unchanged
		case err == unix.EINTR:
		case err == unix.ENOBUFS:
			unchanged = false // notices were lost: something changed
		case err != nil:
			return false
		default:
			unchanged = false
		}
	}
}
