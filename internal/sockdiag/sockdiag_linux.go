package sockdiag

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// x/sys/unix has the netlink constants and header but not the inet_diag
// request, message and bytecode, so they are written out here, byte by
// byte: netlink and inet_diag integers in host order, ports and addresses
// in network order (big-endian), as the kernel wants them.
const (
	inetDiagReqBytecode = 1 // INET_DIAG_REQ_BYTECODE, the request's attribute

	// Bytecode operations (enum in inet_diag.h).
	bcJmp    = 1  // INET_DIAG_BC_JMP: always jumps by "no"
	SGE      = 2  // INET_DIAG_BC_S_GE: local port >= next op's "no"
	SLE      = 3  // INET_DIAG_BC_S_LE: local port <= next op's "no"
	bcAuto   = 6  // INET_DIAG_BC_AUTO: the local port was not bound explicitly (bind with a port)
	SCond    = 7  // INET_DIAG_BC_S_COND: local address/prefix and port (-1: any)
	DCond    = 8  // INET_DIAG_BC_D_COND: remote address/prefix and port
	bcCgroup = 13 // INET_DIAG_BC_CGROUP_COND: the socket's cgroup id (u64 after the op)

	SizeofReqV2 = 56 // struct inet_diag_req_v2
	sizeofReqV1 = 60 // struct inet_diag_req, of TCPDIAG_GETSOCK

	// TCPDIAG_GETSOCK (linux/inet_diag.h): the first inet_diag request,
	// still served. Unlike SOCK_DIAG_BY_FAMILY it dumps both address
	// families in one walk of the kernel's socket hash, which costs about
	// 2.5 ms here whatever the number of sockets: for TCP, one walk
	// instead of two.
	tcpDiagGetSock = 18
	SizeofDiagMsg  = 72 // struct inet_diag_msg
	sizeofBcOp     = 4  // struct inet_diag_bc_op {u8 code; u8 yes; u16 no}
	sizeofCond     = 8  // struct inet_diag_hostcond {u8 family; u8 prefix_len; int port; addr[]}

	StateEstablished = 1     // TCP_ESTABLISHED, also the state of a connected UDP socket
	StateTimeWait    = 6     // TCP_TIME_WAIT in inet_diag_msg.idiag_state
	StateClose       = 7     // TCP_CLOSE: a bound-inactive TCP socket, an unconnected UDP one
	StateListen      = 10    // TCP_LISTEN
	AllStates        = 0xFFF // every state, as a mask of 1<<state
	// TCP_BOUND_INACTIVE (13), a state only sock_diag knows: asked for,
	// Linux 6.8+ also dumps TCP sockets that are bound but neither
	// connected nor listening (reported in TCP_CLOSE). Older kernels ignore
	// the bit.
	BoundInactive = 1 << 13

	AttrSKV6Only = 11 // INET_DIAG_SKV6ONLY: u8, for AF_INET6 sockets in LISTEN or CLOSE
	AttrMark     = 15 // INET_DIAG_MARK: u32, sent unasked to CAP_NET_ADMIN callers
	AttrSockopt  = 22 // INET_DIAG_SOCKOPT: struct inet_diag_sockopt, for full sockets (Linux 5.10+)

	// TimeWaitLen is TCP_TIMEWAIT_LEN: a TIME_WAIT socket's timer starts at 60 s,
	// so its age is TimeWaitLen minus what sock_diag says is left.
	TimeWaitLen = 60 * time.Second
)

// Bytecode builds a filter program. Each op jumps by "yes" when its test
// holds and by "no" when not; landing exactly at the end accepts, past it
// (+4) rejects. The kernel's audit follows "yes" jumps and requires every
// "no" target to be an op reached that way.
type Bytecode struct {
	ops []bcOp
}

type bcOp struct {
	b      []byte
	no     int  // bytes to jump when false; 0: reject
	accept bool // when false, jump to the end (accept) instead of rejecting
}

// Cond adds S_COND or D_COND: address a exactly, and port (-1: any).
func (b *Bytecode) Cond(code byte, a netip.Addr, port int32) {
	addr := a.AsSlice()
	op := make([]byte, sizeofBcOp+sizeofCond+len(addr))
	op[0] = code
	op[sizeofBcOp] = FamilyOf(a)
	op[sizeofBcOp+1] = byte(8 * len(addr))
	binary.NativeEndian.PutUint32(op[sizeofBcOp+4:], uint32(port))
	copy(op[sizeofBcOp+sizeofCond:], addr)
	b.ops = append(b.ops, bcOp{b: op})
}

// Either adds "a or b" for two conditions built by add: a true jumps over
// b (with a JMP), a false tries b.
func (b *Bytecode) Either(add func(*Bytecode), other func(*Bytecode)) {
	var x, y Bytecode
	add(&x)
	other(&y)
	lenY := 0
	for _, op := range y.ops {
		lenY += len(op.b)
	}
	first := x.ops[0]
	first.no = len(first.b) + sizeofBcOp // past the JMP, to b
	jmp := bcOp{b: []byte{bcJmp, sizeofBcOp, 0, 0}, no: sizeofBcOp + lenY}
	b.ops = append(b.ops, first, jmp)
	b.ops = append(b.ops, y.ops...)
}

// AnyOf adds "S_COND on any of as".
func (b *Bytecode) AnyOf(as []netip.Addr) {
	if len(as) == 1 {
		b.Cond(SCond, as[0], -1)
		return
	}
	b.Either(func(b *Bytecode) { b.Cond(SCond, as[0], -1) }, func(b *Bytecode) { b.AnyOf(as[1:]) })
}

// Port adds S_GE or S_LE against p.
func (b *Bytecode) Port(code byte, p uint16) {
	op := make([]byte, 2*sizeofBcOp)
	op[0] = code
	binary.NativeEndian.PutUint16(op[sizeofBcOp+2:], p)
	b.ops = append(b.ops, bcOp{b: op})
}

// Auto adds AUTO: the socket's port was not bound explicitly (always true of
// TIME_WAIT sockets, which do not keep the flag).
func (b *Bytecode) Auto() { b.ops = append(b.ops, bcOp{b: []byte{bcAuto, sizeofBcOp, 0, 0}}) }

// Cgroup adds CGROUP_COND: the socket's cgroup is id (0 for TIME_WAIT and
// SYN_RECV mini sockets, which have none). Linux 5.9+.
func (b *Bytecode) Cgroup(id uint64) {
	op := make([]byte, sizeofBcOp+8)
	op[0] = bcCgroup
	binary.NativeEndian.PutUint64(op[sizeofBcOp:], id)
	b.ops = append(b.ops, bcOp{b: op})
}

// OrAccept makes the last op accept the socket when its test fails.
func (b *Bytecode) OrAccept() { b.ops[len(b.ops)-1].accept = true }

// Reject adds an op that rejects every socket reaching it.
func (b *Bytecode) Reject() { b.ops = append(b.ops, bcOp{b: []byte{bcJmp, sizeofBcOp, 0, 0}}) }

// Bytes lays the program out with its jumps.
func (b *Bytecode) Bytes() []byte {
	total := 0
	for _, op := range b.ops {
		total += len(op.b)
	}
	out := make([]byte, 0, total)
	for _, op := range b.ops {
		no := op.no
		if op.accept {
			no = total - len(out)
		} else if no == 0 {
			no = total - len(out) + 4
		}
		if op.b[0] != bcJmp {
			op.b[1] = byte(len(op.b))
		}
		binary.NativeEndian.PutUint16(op.b[2:], uint16(no))
		out = append(out, op.b...)
	}
	return out
}

// Request builds one SOCK_DIAG_BY_FAMILY dump request with Bytecode.
func Request(family, proto byte, states uint32, bc []byte) []byte {
	m, req := Message(unix.SOCK_DIAG_BY_FAMILY, SizeofReqV2, bc)
	req[0], req[1] = family, proto
	binary.NativeEndian.PutUint32(req[4:], states) // the sockid (req[8:56]) stays zero: the Bytecode filters
	return m
}

// TCPRequest builds one TCPDIAG_GETSOCK dump request (both families) with
// Bytecode.
func TCPRequest(states uint32, bc []byte) []byte {
	m, req := Message(tcpDiagGetSock, sizeofReqV1, bc)
	binary.NativeEndian.PutUint32(req[52:], states) // after family, lengths, ext and the sockid
	return m
}

// Message lays out a netlink request: the header, a request body of size
// bytes (returned for the caller to fill) and, for a dump (bc not nil), the
// Bytecode attribute. A request without Bytecode is a single lookup.
func Message(typ uint16, size int, bc []byte) (m, req []byte) {
	n := unix.SizeofNlMsghdr + size
	flags := uint16(unix.NLM_F_REQUEST)
	if bc != nil {
		n += unix.SizeofRtAttr + len(bc)
		flags |= unix.NLM_F_DUMP
	}
	m = make([]byte, n)
	binary.NativeEndian.PutUint32(m[0:], uint32(n))
	binary.NativeEndian.PutUint16(m[4:], typ)
	binary.NativeEndian.PutUint16(m[6:], flags)
	binary.NativeEndian.PutUint32(m[8:], 1) // sequence number
	req = m[unix.SizeofNlMsghdr:]
	if bc != nil {
		attr := req[size:]
		binary.NativeEndian.PutUint16(attr[0:], uint16(unix.SizeofRtAttr+len(bc)))
		binary.NativeEndian.PutUint16(attr[2:], inetDiagReqBytecode)
		copy(attr[unix.SizeofRtAttr:], bc)
	}
	return m, req
}

// Bufs holds 64 KiB buffers for reading dumps, shared by the dumps of a
// process.
var Bufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// Dump sends req on a fresh NETLINK_SOCK_DIAG socket and calls each with
// every inet_diag_msg of the answer.
func Dump(ctx context.Context, reqs [][]byte, each func(msg []byte)) error {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return &Error{What: "sock_diag is not available", Err: os.NewSyscallError("socket", err)}
	}
	defer unix.Close(s)
	if err := Deadline(ctx, s); err != nil {
		return err
	}
	bp := Bufs.Get().(*[]byte)
	defer Bufs.Put(bp)
	buf := *bp
	for _, req := range reqs {
		if err := unix.Sendto(s, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return os.NewSyscallError("sendto", err)
		}
		if err := Answers(ctx, s, buf, each); err != nil {
			return err
		}
	}
	return nil
}

// Deadline makes reads on the netlink socket s end at ctx's deadline.
func Deadline(ctx context.Context, s int) error {
	if dl, ok := ctx.Deadline(); ok {
		tv := unix.NsecToTimeval(max(time.Until(dl), time.Millisecond).Nanoseconds())
		return os.NewSyscallError("setsockopt", unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	}
	return nil
}

// Answers reads one dump's messages until NLMSG_DONE.
func Answers(ctx context.Context, s int, buf []byte, each func(msg []byte)) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := unix.Read(s, buf)
		if err == unix.EINTR {
			continue
		} else if err == unix.EAGAIN {
			return context.DeadlineExceeded
		} else if err != nil {
			return os.NewSyscallError("recvfrom", err)
		}
		for b := buf[:n]; len(b) >= unix.SizeofNlMsghdr; {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return os.NewSyscallError("recvfrom", unix.EBADMSG)
			}
			switch binary.NativeEndian.Uint16(b[4:]) {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if l >= unix.SizeofNlMsghdr+4 {
					if errno := int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:])); errno != 0 {
						return &Error{What: "sock_diag refused the request", Err: os.NewSyscallError("sock_diag", unix.Errno(-errno))}
					}
				}
			default:
				if l >= unix.SizeofNlMsghdr+SizeofDiagMsg {
					each(b[unix.SizeofNlMsghdr:l])
				}
			}
			b = b[min((l+3)&^3, len(b)):]
		}
	}
}

// Requests returns the dump requests for TCP or UDP sockets of IPv4 (v4),
// IPv6 (v6) or both. IPv4 traffic can also live on dual-stack IPv6 sockets,
// as IPv4-mapped addresses, which IPv4 conditions match: IPv4 needs both
// families. TCP has a request that dumps both in one walk; UDP takes one
// per family.
func Requests(udp, v4, v6 bool, states uint32, bc []byte) [][]byte {
	if !udp {
		return [][]byte{TCPRequest(states, bc)}
	}
	reqs := [][]byte{Request(unix.AF_INET6, unix.IPPROTO_UDP, states, bc)}
	if v4 {
		reqs = append(reqs, Request(unix.AF_INET, unix.IPPROTO_UDP, states, bc))
	}
	return reqs
}

// FamilyOf returns a's address family, as the kernel's structures take it.
func FamilyOf(a netip.Addr) byte {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// DumpOn is Dump on the caller's own NETLINK_SOCK_DIAG socket nl (with its
// read deadline set), which saves making one per dump.
func DumpOn(ctx context.Context, nl int, reqs [][]byte, each func(msg []byte)) error {
	bp := Bufs.Get().(*[]byte)
	defer Bufs.Put(bp)
	for _, req := range reqs {
		if err := unix.Sendto(nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return os.NewSyscallError("sendto", err)
		}
		if err := Answers(ctx, nl, *bp, each); err != nil {
			return err
		}
	}
	return nil
}

// UDPOwner asks, on the NETLINK_SOCK_DIAG socket nl, which UDP socket of
// family would receive a datagram from peer on local (bound to interface
// ifindex, for a link-local address with a zone), and returns its cookie:
// not found when there is none (ENOENT), an *Error when the kernel refuses
// the lookup. An IPv4 address asked of AF_INET6 is IPv4-mapped.
func UDPOwner(ctx context.Context, nl int, family byte, local, peer netip.AddrPort, ifindex uint32) (cookie uint64, found bool, err error) {
	m, req := Message(unix.SOCK_DIAG_BY_FAMILY, SizeofReqV2, nil) // no bytecode: one lookup
	req[0], req[1] = family, unix.IPPROTO_UDP
	binary.NativeEndian.PutUint32(req[4:], AllStates)
	id := req[8:]
	// The kernel's UDP lookup takes the datagram's source (the peer) as
	// "src" and its destination (us) as "dst", "for historical reasons".
	binary.BigEndian.PutUint16(id[0:], peer.Port())
	binary.BigEndian.PutUint16(id[2:], local.Port())
	copy(id[4:20], addrBytes(peer.Addr(), family))
	copy(id[20:36], addrBytes(local.Addr(), family))
	binary.NativeEndian.PutUint32(id[36:], ifindex)    // idiag_if: the kernel matches a socket bound to a device only with it
	binary.NativeEndian.PutUint64(id[40:], ^uint64(0)) // INET_DIAG_NOCOOKIE
	if err := unix.Sendto(nl, m, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, false, os.NewSyscallError("sendto", err)
	}
	var buf [512]byte
	n, err := unix.Read(nl, buf[:])
	for err == unix.EINTR {
		n, err = unix.Read(nl, buf[:])
	}
	if err == unix.EAGAIN {
		if err := ctx.Err(); err != nil {
			return 0, false, err
		}
		return 0, false, context.DeadlineExceeded
	}
	if err != nil {
		return 0, false, os.NewSyscallError("read", err)
	}
	b := buf[:n]
	if len(b) < unix.SizeofNlMsghdr {
		return 0, false, os.NewSyscallError("read", unix.EBADMSG)
	}
	switch binary.NativeEndian.Uint16(b[4:]) {
	case unix.NLMSG_ERROR:
		errno := unix.Errno(-int32(binary.NativeEndian.Uint32(b[unix.SizeofNlMsghdr:])))
		if errno == unix.ENOENT {
			return 0, false, nil
		}
		return 0, false, &Error{What: "sock_diag refused a lookup of UDP sockets", Err: os.NewSyscallError("sock_diag", errno)}
	case unix.SOCK_DIAG_BY_FAMILY:
		if len(b) < unix.SizeofNlMsghdr+SizeofDiagMsg {
			return 0, false, os.NewSyscallError("read", unix.EBADMSG)
		}
		msg := b[unix.SizeofNlMsghdr:]
		return binary.NativeEndian.Uint64(msg[4+40:]), true, nil
	}
	return 0, false, os.NewSyscallError("read", unix.EBADMSG)
}

// addrBytes is a's address as a socket of family sees it: 16 bytes
// (IPv4-mapped for an IPv4 address) for AF_INET6.
func addrBytes(a netip.Addr, family byte) []byte {
	if family == unix.AF_INET6 {
		b := a.As16()
		return b[:]
	}
	return a.AsSlice()
}
