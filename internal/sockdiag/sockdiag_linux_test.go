package sockdiag

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/sys/unix"
)

// run interprets bytecode as the kernel's inet_diag_bc_run does, for a
// socket whose tests come out as test says (one answer per op, in order
// of offset), and reports whether it accepts.
func run(t *testing.T, bc []byte, test func(off int) bool) bool {
	t.Helper()
	for off := 0; off < len(bc); {
		yes, no := int(bc[off+1]), int(binary.NativeEndian.Uint16(bc[off+2:]))
		if bc[off] == bcJmp || !test(off) {
			off += no
		} else {
			off += yes
		}
		if off == len(bc) {
			return true
		}
		if off > len(bc) {
			return false
		}
	}
	return true
}

// TestBytecodeAnyOf: "S_COND on any of three addresses" accepts a socket
// when exactly one of the conditions holds, and rejects it when none does.
func TestBytecodeAnyOf(t *testing.T) {
	as := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("::1")}
	var b Bytecode
	b.AnyOf(as)
	bc := b.Bytes()
	var conds []int // offsets of the S_COND ops
	for off := 0; off < len(bc); off += int(bc[off+1]) {
		if bc[off] == SCond {
			conds = append(conds, off)
		}
	}
	if len(conds) != len(as) {
		t.Fatalf("%d S_COND ops in %x, want %d", len(conds), bc, len(as))
	}
	for i := -1; i < len(as); i++ {
		got := run(t, bc, func(off int) bool { return i >= 0 && off == conds[i] })
		if want := i >= 0; got != want {
			t.Errorf("socket matching condition %d: accepted %v, want %v", i, got, want)
		}
	}
}

// TestBytecodeOrAccept: a port test whose failure accepts, then a reject.
func TestBytecodeOrAccept(t *testing.T) {
	var b Bytecode
	b.Port(SGE, 40000)
	b.OrAccept()
	b.Reject()
	bc := b.Bytes()
	if got := run(t, bc, func(int) bool { return true }); got {
		t.Error("a socket passing the test was accepted, want rejected")
	}
	if got := run(t, bc, func(int) bool { return false }); !got {
		t.Error("a socket failing the test was rejected, want accepted")
	}
	if p := binary.NativeEndian.Uint16(bc[sizeofBcOp+2:]); p != 40000 {
		t.Errorf("port %d in the op's second word, want 40000", p)
	}
}

// TestDumpListener dumps, in a private namespace, the TCP sockets with
// source 127.0.0.1 and finds exactly the one listener there.
func TestDumpListener(t *testing.T) {
	netnstest.Run(t, netns.Config{}, testDumpListener)
}

func testDumpListener(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	var b Bytecode
	b.Cond(SCond, netip.MustParseAddr("127.0.0.1"), -1)
	type sock struct {
		Family, State byte
		Port          uint16
	}
	var got []sock
	err = Dump(context.Background(), Requests(false, true, false, 1<<StateListen, b.Bytes()), func(msg []byte) {
		got = append(got, sock{msg[0], msg[1], binary.BigEndian.Uint16(msg[4:6])})
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]sock{{unix.AF_INET, StateListen, port}}, got); diff != "" {
		t.Errorf("dump (-want +got):\n%s", diff)
	}
}

// TestRefused: a request the kernel refuses is an *Error carrying its errno.
func TestRefused(t *testing.T) {
	netnstest.Run(t, netns.Config{}, func(t *testing.T) {
		req := Request(unix.AF_INET, unix.IPPROTO_TCP, AllStates, []byte{0xff, 4, 0, 0}) // an unknown op
		err := Dump(context.Background(), [][]byte{req}, func([]byte) {})
		var e *Error
		if !errors.As(err, &e) || !errors.Is(err, unix.EINVAL) {
			t.Errorf("Dump with bad bytecode = %v, want *Error wrapping EINVAL", err)
		}
	})
}

// TestParse reads a crafted inet_diag_msg of an IPv4-mapped IPv6 socket with
// INET_DIAG_SOCKOPT, INET_DIAG_SKV6ONLY and INET_DIAG_MARK, and a truncated
// attribute after them, which it ignores.
func TestParse(t *testing.T) {
	msg := make([]byte, SizeofDiagMsg)
	msg[0], msg[1] = unix.AF_INET6, StateTimeWait
	id := msg[4:]
	binary.BigEndian.PutUint16(id[0:], 40001)
	binary.BigEndian.PutUint16(id[2:], 80)
	src, dst := netip.MustParseAddr("::ffff:127.0.0.2").As16(), netip.MustParseAddr("2001:db8::9").As16()
	copy(id[4:], src[:])
	copy(id[20:], dst[:])
	binary.NativeEndian.PutUint32(id[36:], 3)
	binary.NativeEndian.PutUint64(id[40:], 0xc00c1e)
	binary.NativeEndian.PutUint32(msg[52:], 1500) // idiag_expires, ms
	binary.NativeEndian.PutUint32(msg[64:], 1000) // idiag_uid
	attr := func(typ uint16, v ...byte) {
		a := make([]byte, (unix.SizeofRtAttr+len(v)+3)&^3)
		binary.NativeEndian.PutUint16(a[0:], uint16(unix.SizeofRtAttr+len(v)))
		binary.NativeEndian.PutUint16(a[2:], typ)
		copy(a[unix.SizeofRtAttr:], v)
		msg = append(msg, a...)
	}
	noPort := byte(1) // bind_address_no_port, the second byte's first bit-field
	if bigEndian {
		noPort = 0x80
	}
	attr(AttrSockopt, 0, noPort)
	attr(AttrSKV6Only, 1)
	attr(AttrMark, binary.NativeEndian.AppendUint32(nil, 7)...)
	msg = append(msg, 40, 0, 1, 0) // an attribute longer than what is left
	got := Parse(msg)
	want := Sock{
		Family: unix.AF_INET6, State: StateTimeWait,
		Src: netip.MustParseAddr("127.0.0.2"), Dst: netip.MustParseAddr("2001:db8::9"), SPort: 40001, DPort: 80,
		IfIndex: 3, Cookie: 0xc00c1e, Expires: 1500 * time.Millisecond, UID: 1000,
		HasSockopt: true, Sockopt: [2]byte{0, noPort}, V6Only: true, Mark: 7, HasMark: true,
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Parse (-want +got):\n%s", diff)
	}
	if !got.NoPort() || got.RecvErr() || got.RFC4884() {
		t.Errorf("NoPort %v RecvErr %v RFC4884 %v; want true false false", got.NoPort(), got.RecvErr(), got.RFC4884())
	}
}

// TestUDPOwner finds, in a private namespace, the UDP socket bound to a
// port by its cookie, and nothing on a port no socket holds.
func TestUDPOwner(t *testing.T) {
	netnstest.Run(t, netns.Config{}, testUDPOwner)
}

func testUDPOwner(t *testing.T) {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	rc, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	var gerr error
	if err := rc.Control(func(fd uintptr) { want, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nl)
	peer := netip.MustParseAddrPort("127.0.0.9:53")
	got, found, err := UDPOwner(context.Background(), nl, unix.AF_INET, local, peer, 0)
	if err != nil || !found || got != want {
		t.Errorf("UDPOwner(%v) = %#x, %v, %v; want %#x, true, nil", local, got, found, err, want)
	}
	free := netip.AddrPortFrom(local.Addr(), local.Port()+1)
	if _, found, err := UDPOwner(context.Background(), nl, unix.AF_INET, free, peer, 0); err != nil || found {
		t.Errorf("UDPOwner(%v), a port no socket holds = %v, %v; want false, nil", free, found, err)
	}
}
