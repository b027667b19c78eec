package sockdiag

import (
	"encoding/binary"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Sock is what an inet_diag_msg and its attributes say of one socket.
type Sock struct {
	Family   byte
	State    byte       // TCP_* (StateEstablished, ...)
	Src, Dst netip.Addr // IPv4-mapped addresses unmapped
	SPort    uint16
	DPort    uint16
	IfIndex  uint32        // idiag_if: the interface it is bound to (SO_BINDTODEVICE, a link-local source's zone)
	Cookie   uint64        // idiag_cookie
	Expires  time.Duration // left on the socket's timer
	UID      uint32        // idiag_uid

	HasSockopt bool    // INET_DIAG_SOCKOPT came (full sockets, Linux 5.10+)
	Sockopt    [2]byte // its first two bytes of bit-fields; see NoPort, RecvErr, RFC4884
	V6Only     bool    // INET_DIAG_SKV6ONLY came and is set
	Mark       uint32  // INET_DIAG_MARK (sent to CAP_NET_ADMIN only)
	HasMark    bool
}

// bigEndian tells how the compiler lays out C bit-fields: from the low bit
// of a byte on little-endian machines, from the high bit on big-endian ones.
var bigEndian = binary.NativeEndian.Uint16([]byte{0, 1}) == 1

// sockopt bit positions in struct inet_diag_sockopt, a pair of bit-field
// bytes read as v[0] | v[1]<<8: the first field is the lowest bit on
// little-endian machines, the highest on big-endian ones.
var recverrBit, rfc4884Bit = func() (uint16, uint16) {
	var probe [2]byte
	binary.NativeEndian.PutUint16(probe[:], 1)
	if probe[0] == 1 { // little-endian
		return 1 << 0, 1 << (8 + 1)
	}
	return 1 << 7, 1 << (8 + 6)
}()

// NoPort reports the socket's IP_BIND_ADDRESS_NO_PORT (false without
// INET_DIAG_SOCKOPT).
func (s *Sock) NoPort() bool {
	// The second byte's first bit-field is bind_address_no_port.
	bit := byte(1)
	if bigEndian {
		bit = 0x80
	}
	return s.HasSockopt && s.Sockopt[1]&bit != 0
}

func (s *Sock) sockoptBits() uint16 { return uint16(s.Sockopt[0]) | uint16(s.Sockopt[1])<<8 }

// RecvErr reports the socket's IP_RECVERR (false without INET_DIAG_SOCKOPT).
func (s *Sock) RecvErr() bool { return s.HasSockopt && s.sockoptBits()&recverrBit != 0 }

// RFC4884 reports the socket's IP_RECVERR_RFC4884 (false without
// INET_DIAG_SOCKOPT).
func (s *Sock) RFC4884() bool { return s.HasSockopt && s.sockoptBits()&rfc4884Bit != 0 }

// Parse reads one inet_diag_msg (at least SizeofDiagMsg bytes, as Dump
// hands them) and the attributes after it.
func Parse(msg []byte) Sock {
	id := msg[4:] // struct inet_diag_sockid: sport, dport, src[16], dst[16], if, cookie
	s := Sock{Family: msg[0], State: msg[1], SPort: binary.BigEndian.Uint16(id[0:2]), DPort: binary.BigEndian.Uint16(id[2:4])}
	if s.Family == unix.AF_INET {
		s.Src, s.Dst = netip.AddrFrom4([4]byte(id[4:8])), netip.AddrFrom4([4]byte(id[20:24]))
	} else {
		s.Src, s.Dst = netip.AddrFrom16([16]byte(id[4:20])).Unmap(), netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	}
	s.IfIndex = binary.NativeEndian.Uint32(id[36:40])
	s.Cookie = binary.NativeEndian.Uint64(id[40:48])
	s.Expires = time.Duration(binary.NativeEndian.Uint32(msg[52:56])) * time.Millisecond
	s.UID = binary.NativeEndian.Uint32(msg[64:68])
	for a := msg[SizeofDiagMsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		if l < unix.SizeofRtAttr || l > len(a) {
			break
		}
		v := a[unix.SizeofRtAttr:l]
		switch binary.NativeEndian.Uint16(a[2:]) {
		case AttrSockopt:
			if len(v) >= 2 {
				s.HasSockopt, s.Sockopt = true, [2]byte{v[0], v[1]}
			}
		case AttrSKV6Only:
			s.V6Only = len(v) >= 1 && v[0] != 0
		case AttrMark:
			if len(v) >= 4 {
				s.Mark, s.HasMark = binary.NativeEndian.Uint32(v), true
			}
		}
		a = a[min((l+3)&^3, len(a)):]
	}
	return s
}
