package route

import (
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/sys/unix"
)

// answer crafts an RTM_NEWROUTE answer numbered seq, of type typ, with
// RTA_PREFSRC src.
func answer(seq uint32, typ uint8, src netip.Addr) []byte {
	a := src.AsSlice()
	n := unix.SizeofNlMsghdr + unix.SizeofRtMsg + unix.SizeofRtAttr + len(a)
	m := make([]byte, n)
	binary.NativeEndian.PutUint32(m[0:], uint32(n))
	binary.NativeEndian.PutUint16(m[4:], unix.RTM_NEWROUTE)
	binary.NativeEndian.PutUint32(m[8:], seq)
	m[unix.SizeofNlMsghdr+7] = typ
	attr := m[unix.SizeofNlMsghdr+unix.SizeofRtMsg:]
	binary.NativeEndian.PutUint16(attr[0:], uint16(unix.SizeofRtAttr+len(a)))
	binary.NativeEndian.PutUint16(attr[2:], unix.RTA_PREFSRC)
	copy(attr[unix.SizeofRtAttr:], a)
	return m
}

func TestParse(t *testing.T) {
	want := netip.MustParseAddr("192.0.2.7")
	seq, src, typ, err := Parse(answer(3, unix.RTN_UNICAST, want))
	if err != nil || seq != 3 || src != want || typ != unix.RTN_UNICAST {
		t.Errorf("Parse = %d, %v, %d, %v; want 3, %v, %d, nil", seq, src, typ, err, want, unix.RTN_UNICAST)
	}
	// The kernel's error.
	e := make([]byte, unix.SizeofNlMsghdr+4)
	binary.NativeEndian.PutUint16(e[4:], unix.NLMSG_ERROR)
	binary.NativeEndian.PutUint32(e[8:], 5)
	errno := -int32(unix.ENETUNREACH)
	binary.NativeEndian.PutUint32(e[unix.SizeofNlMsghdr:], uint32(errno))
	if seq, _, _, err := Parse(e); seq != 5 || !errors.Is(err, unix.ENETUNREACH) {
		t.Errorf("Parse(NLMSG_ERROR ENETUNREACH) = %d, %v; want 5, ENETUNREACH", seq, err)
	}
	// Short messages are refused, not read past their end.
	for _, b := range [][]byte{nil, answer(1, 1, want)[:unix.SizeofNlMsghdr+4]} {
		if _, _, _, err := Parse(b); !errors.Is(err, unix.EBADMSG) {
			t.Errorf("Parse(%d bytes) = %v; want EBADMSG", len(b), err)
		}
	}
}

func TestRequest(t *testing.T) {
	dst := netip.MustParseAddr("2001:db8::1")
	m := Request(dst, Ctx{Mark: 7, OIF: 2, UID: 1000, HasUID: true, Proto: unix.IPPROTO_TCP, DPort: 443, TOS: 0x10}, 9)
	if got := binary.NativeEndian.Uint32(m[0:]); int(got) != len(m) {
		t.Fatalf("nlmsg_len %d, message %d bytes", got, len(m))
	}
	if typ, seq := binary.NativeEndian.Uint16(m[4:]), binary.NativeEndian.Uint32(m[8:]); typ != unix.RTM_GETROUTE || seq != 9 {
		t.Errorf("type %d seq %d; want RTM_GETROUTE 9", typ, seq)
	}
	rt := m[unix.SizeofNlMsghdr:]
	if rt[0] != unix.AF_INET6 || rt[1] != 128 || rt[3] != 0x10 {
		t.Errorf("rtm_family %d rtm_dst_len %d rtm_tos %#x; want AF_INET6 128 0x10", rt[0], rt[1], rt[3])
	}
	got := map[uint16][]byte{}
	for a := rt[unix.SizeofRtMsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		got[binary.NativeEndian.Uint16(a[2:])] = a[unix.SizeofRtAttr:l]
		a = a[min((l+3)&^3, len(a)):]
	}
	u32 := func(v uint32) string { return string(binary.NativeEndian.AppendUint32(nil, v)) }
	for typ, want := range map[uint16]string{unix.RTA_DST: string(dst.AsSlice()), unix.RTA_MARK: u32(7), unix.RTA_OIF: u32(2), unix.RTA_UID: u32(1000),
		unix.RTA_IP_PROTO: string([]byte{unix.IPPROTO_TCP}), unix.RTA_DPORT: "\x01\xbb"} {
		if string(got[typ]) != want {
			t.Errorf("attribute %d = %x, want %x", typ, got[typ], want)
		}
	}
	if len(got) != 6 {
		t.Errorf("%d attributes, want 6", len(got))
	}
}

// TestLoopback asks the real routing, in a private namespace, about the
// loopback addresses, which the kernel routes locally from themselves, one
// at a time and in a batch.
func TestLoopback(t *testing.T) {
	netnstest.Run(t, netns.Config{}, testLoopback)
}

func testLoopback(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	src, typ, err := Get(lo, Ctx{})
	if err != nil {
		t.Fatal(err)
	}
	if src != lo || typ != unix.RTN_LOCAL {
		t.Errorf("Get(127.0.0.1) = %v, %d; want 127.0.0.1, RTN_LOCAL (%d)", src, typ, unix.RTN_LOCAL)
	}
	keys := []Key{{Dst: lo}, {Dst: lo}, {Dst: netip.IPv6Loopback()}}
	srcs, err := Remembered(context.Background(), keys)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]netip.Addr{lo, lo, netip.IPv6Loopback()}, srcs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("Remembered (-want +got):\n%s", diff)
	}
}
