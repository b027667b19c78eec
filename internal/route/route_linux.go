package route

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Ctx is what of a socket changes the route the kernel picks for it, and so
// its source: its mark (SO_MARK), the interface it is bound to
// (SO_BINDTODEVICE), its owner (the uid of fib rules' uidrange), its
// protocol and its destination port (fib rules' ipproto and dport: connect()
// looks the route up with them, before the source port is chosen) and its
// TOS or traffic class (fib rules' tos, dsfield). The zero
// Ctx asks as an unmarked, unbound socket of the caller would, of no
// protocol or port.
type Ctx struct {
	Mark   uint32
	OIF    uint32
	UID    uint32
	HasUID bool   // UID was read from the socket; else the kernel takes the caller's
	Proto  uint8  // unix.IPPROTO_TCP or IPPROTO_UDP; 0: none
	DPort  uint16 // 0: none
	TOS    uint8  // IP_TOS or IPV6_TCLASS, as rtm_tos
}

// Get asks the kernel's routing (RTM_GETROUTE) about dst for a socket with
// routing context rc: the preferred source address and the route's type
// (RTN_LOCAL, RTN_BROADCAST, ...).
func Get(dst netip.Addr, rc Ctx) (src netip.Addr, typ uint8, err error) {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("socket", err)
	}
	defer unix.Close(s)
	if err := unix.Sendto(s, Request(dst, rc, 0), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("sendto", err)
	}
	var buf [4096]byte
	got, err := unix.Read(s, buf[:])
	if err != nil {
		return netip.Addr{}, 0, os.NewSyscallError("read", err)
	}
	_, src, typ, err = Parse(buf[:got])
	return src, typ, err
}

// Request lays out one RTM_GETROUTE request for dst with rc, numbered
// seq.
func Request(dst netip.Addr, rc Ctx, seq uint32) []byte {
	addr := dst.AsSlice()
	type attr struct {
		typ uint16
		val []byte
	}
	attrs := []attr{{unix.RTA_DST, addr}}
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	if rc.Mark != 0 {
		attrs = append(attrs, attr{unix.RTA_MARK, u32(rc.Mark)})
	}
	if rc.OIF != 0 {
		attrs = append(attrs, attr{unix.RTA_OIF, u32(rc.OIF)})
	}
	if rc.HasUID {
		attrs = append(attrs, attr{unix.RTA_UID, u32(rc.UID)})
	}
	if rc.Proto != 0 {
		attrs = append(attrs, attr{unix.RTA_IP_PROTO, []byte{rc.Proto}})
	}
	if rc.DPort != 0 {
		attrs = append(attrs, attr{unix.RTA_DPORT, binary.BigEndian.AppendUint16(nil, rc.DPort)})
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
	rt[3] = rc.TOS              // rtm_tos
	b := rt[unix.SizeofRtMsg:]
	for _, a := range attrs {
		binary.NativeEndian.PutUint16(b[0:], uint16(unix.SizeofRtAttr+len(a.val)))
		binary.NativeEndian.PutUint16(b[2:], a.typ)
		copy(b[unix.SizeofRtAttr:], a.val)
		b = b[(unix.SizeofRtAttr+len(a.val)+3)&^3:]
	}
	return m
}

// Parse reads one RTM_GETROUTE answer: its sequence number, the
// preferred source and the route's type, or the kernel's error.
func Parse(b []byte) (seq uint32, src netip.Addr, typ uint8, err error) {
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

// Key is one question to the routing: a destination, for a socket with a
// routing context.
type Key struct {
	Dst netip.Addr
	Ctx Ctx
}

// batch is how many RTM_GETROUTE requests go in one write: the kernel
// answers each with a buffer of about a page, which must fit in the
// socket's receive buffer until read.
const batch = 16

// Sources answers each of keys with the source the routing picks (the
// zero Addr where there is no route or no preferred source), on one netlink
// socket, several requests per write: a probe over thousands of
// destinations made one socket per lookup and spent most of its time there.
func Sources(ctx context.Context, keys []Key, each func(k Key, src netip.Addr)) error {
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
	for lo := 0; lo < len(keys); lo += batch {
		chunk := keys[lo:min(lo+batch, len(keys))]
		req = req[:0]
		for i, k := range chunk {
			req = append(req, Request(k.Dst, k.Ctx, uint32(i+1))...)
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
			seq, src, _, err := Parse(buf[:n])
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

// memory remembers the routing's answers of the last probe, per
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
var memory struct {
	mu    sync.Mutex
	watch int // the subscribed socket; 0 before the first use, -1 when it failed
	srcs  map[Key]netip.Addr
}

// Remembered returns the source the routing picks for each of keys
// (see Sources; keys may repeat), answering from memory what it
// can. The memory keeps what this call used, and what earlier ones did
// while it stays under twice that plus 1,024 (a probe of one pair between
// two of the whole host keeps the host's answers).
func Remembered(ctx context.Context, keys []Key) ([]netip.Addr, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	memory.mu.Lock()
	defer memory.mu.Unlock()
	if !routesUnchanged() || memory.srcs == nil {
		memory.srcs = map[Key]netip.Addr{}
	}
	mem := memory.srcs
	srcs := make([]netip.Addr, len(keys))
	var (
		ask   []Key
		where map[Key][]int
		used  int
	)
	for i, k := range keys {
		if src, ok := mem[k]; ok {
			srcs[i] = src
			used++
			continue
		}
		if where == nil {
			where = map[Key][]int{}
		}
		if _, ok := where[k]; !ok {
			ask = append(ask, k)
		}
		where[k] = append(where[k], i)
	}
	err := Sources(ctx, ask, func(k Key, src netip.Addr) {
		for _, i := range where[k] {
			srcs[i] = src
		}
		mem[k] = src
	})
	if err != nil || memory.watch < 0 {
		memory.srcs = nil
		return srcs, err
	}
	if len(mem) > 2*len(keys)+1024 {
		// Forget what this probe did not use.
		next := make(map[Key]netip.Addr, len(keys))
		for _, k := range keys {
			next[k] = mem[k]
		}
		memory.srcs = next
	}
	return srcs, nil
}

// routesUnchanged reports whether no change of the routing was announced
// since it was last called (false on the first call), subscribing first.
func routesUnchanged() bool {
	if memory.watch == 0 {
		memory.watch = -1
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
		memory.watch = s
		return false
	}
	if memory.watch < 0 {
		return false
	}
	unchanged := true
	var buf [8192]byte
	for {
		_, _, err := unix.Recvfrom(memory.watch, buf[:], unix.MSG_DONTWAIT)
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

// deadline makes reads on the netlink socket s end at ctx's deadline.
func deadline(ctx context.Context, s int) error {
	if dl, ok := ctx.Deadline(); ok {
		tv := unix.NsecToTimeval(max(time.Until(dl), time.Millisecond).Nanoseconds())
		return os.NewSyscallError("setsockopt", unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	}
	return nil
}

// familyOf returns a's address family, as the kernel's structures take it.
func familyOf(a netip.Addr) byte {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
