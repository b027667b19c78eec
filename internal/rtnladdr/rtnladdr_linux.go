package rtnladdr

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Addr is one address of an interface, as rtnetlink reports it.
type Addr struct {
	Index int        // interface index
	Addr  netip.Addr // IFA_LOCAL, else IFA_ADDRESS; no zone
	Flags uint32     // IFA_F_* (IFA_FLAGS when present, else ifa_flags)
	Label string     // IFA_LABEL (IPv4 only): the interface's name or alias
}

// Key is what identifies an address of the host: the same address may sit on
// two interfaces.
type Key struct {
	Index int
	Addr  netip.Addr
}

// Key returns a's key.
func (a Addr) Key() Key { return Key{a.Index, a.Addr} }

// Event is one RTM_NEWADDR (New) or RTM_DELADDR message, or, with Link,
// one RTM_NEWLINK (New) or RTM_DELLINK message: then only Index and Name
// are set.
type Event struct {
	New bool
	Addr
	Link bool
	Name string // IFLA_IFNAME of a link message: the interface's name now
}

// List returns every address of the host (this network namespace), from one
// consistent RTM_GETADDR dump: a dump the kernel marks interrupted
// (NLM_F_DUMP_INTR: the addresses changed while it ran, so it may miss or
// repeat some) is made again, up to maxDumps times.
func List() ([]Addr, error) {
	for range maxDumps {
		addrs, intr, err := list()
		if err != nil || !intr {
			return addrs, err
		}
	}
	return nil, fmt.Errorf("rtnetlink: %d address dumps in a row were interrupted by changes; try again", maxDumps)
}

const maxDumps = 100

// list makes one dump and reports whether the kernel marked it interrupted.
func list() (addrs []Addr, intr bool, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, false, os.NewSyscallError("socket", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, os.NewSyscallError("bind", err)
	}
	req := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfAddrmsg)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], unix.RTM_GETADDR)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], 1) // seq
	req[unix.SizeofNlMsghdr] = unix.AF_UNSPEC
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, false, os.NewSyscallError("sendto", err)
	}
	buf := make([]byte, 1<<16)
	for {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, false, os.NewSyscallError("recvfrom", err)
		}
		if !fromKernel(from) {
			continue
		}
		intr = intr || interrupted(buf[:n])
		done, err := parse(buf[:n], func(e Event) {
			if e.New {
				addrs = append(addrs, e.Addr)
			}
		})
		if err != nil || done {
			return addrs, intr, err
		}
	}
}

// Conn receives the host's address events.
type Conn struct {
	f   *os.File
	rc  syscall.RawConn
	buf []byte
}

// Subscribe opens a socket that receives IPv4 and IPv6 address events, and
// link events (an interface renamed or deleted keeps its addresses' indexes).
// rcvbuf, when positive, sets its receive buffer (SO_RCVBUFFORCE, else
// SO_RCVBUF). Events start at once: list after subscribing, so none is lost.
func Subscribe(rcvbuf int) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	if rcvbuf > 0 {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
		}
	}
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR | unix.RTMGRP_LINK}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, os.NewSyscallError("bind", err)
	}
	f := os.NewFile(uintptr(fd), "rtnetlink")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Conn{f: f, rc: rc, buf: make([]byte, 1<<16)}, nil
}

// ErrOverrun is returned by Read when the kernel dropped events because the
// socket's buffer was full (ENOBUFS): Read has emptied the queue, so events
// flow again; list again.
var ErrOverrun = errors.New("rtnetlink: events lost (ENOBUFS): the receive buffer overran")

// Read waits for events and passes each to fn: all that are queued, so a
// burst is read in one call. It returns ErrOverrun after an overrun (events
// before it were passed), and an error wrapping os.ErrClosed once Close was
// called.
//
// Only the kernel's messages count: any local process may send a netlink
// message to this socket's port ID, and such messages are dropped.
func (c *Conn) Read(fn func(Event)) error {
	buf := c.buf
	var perr error
	got := false
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, from, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			switch {
			case err == unix.EINTR:
				continue
			case err == unix.EAGAIN:
				return got // wait for readiness until something came
			case err == unix.ENOBUFS:
				drain(int(fd), buf)
				perr = ErrOverrun
				return true
			case err != nil:
				perr = os.NewSyscallError("recvfrom", err)
				return true
			}
			if !fromKernel(from) {
				continue
			}
			got = true
			if _, err := parse(buf[:n], fn); err != nil {
				perr = err
				return true
			}
		}
	})
	if err != nil {
		return err
	}
	return perr
}

// interrupted reports whether a message of a dump's datagram b carries
// NLM_F_DUMP_INTR.
func interrupted(b []byte) bool {
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if binary.NativeEndian.Uint16(b[6:8])&unix.NLM_F_DUMP_INTR != 0 {
			return true
		}
		if l < unix.SizeofNlMsghdr || nlAlign(l) >= len(b) {
			return false
		}
		b = b[nlAlign(l):]
	}
	return false
}

// fromKernel reports whether a message came from the kernel (port ID 0),
// not from another process that sent it to this socket.
func fromKernel(from unix.Sockaddr) bool {
	sa, ok := from.(*unix.SockaddrNetlink)
	return ok && sa.Pid == 0
}

// drain discards what is queued on fd. After an overrun the kernel marks a
// netlink socket congested and drops every later event silently (ENOBUFS is
// reported once) until a receive finds its queue empty: a listing made
// before the queue is drained could miss events lost after it.
func drain(fd int, buf []byte) {
	for {
		_, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err != nil && err != unix.EINTR && err != unix.ENOBUFS {
			return
		}
	}
}

// Close closes the socket; a Read in progress returns.
func (c *Conn) Close() error { return c.f.Close() }

// parse passes the address messages of one datagram to fn and reports
// whether it ended a dump (NLMSG_DONE).
func parse(b []byte, fn func(Event)) (done bool, err error) {
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return false, fmt.Errorf("rtnetlink: malformed message (length %d of %d bytes)", l, len(b))
		}
		body := b[unix.SizeofNlMsghdr:l]
		switch typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(body) >= 4 {
				if errno := -int32(binary.NativeEndian.Uint32(body[0:4])); errno != 0 {
					return true, os.NewSyscallError("rtnetlink", unix.Errno(errno))
				}
			}
		case unix.RTM_NEWADDR, unix.RTM_DELADDR:
			if a, ok := parseAddr(body); ok {
				fn(Event{New: typ == unix.RTM_NEWADDR, Addr: a})
			}
		case unix.RTM_NEWLINK, unix.RTM_DELLINK:
			if index, name, ok := parseLink(body); ok {
				fn(Event{New: typ == unix.RTM_NEWLINK, Addr: Addr{Index: index}, Link: true, Name: name})
			}
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	return false, nil
}

// parseAddr decodes an ifaddrmsg and its attributes.
func parseAddr(b []byte) (Addr, bool) {
	if len(b) < unix.SizeofIfAddrmsg {
		return Addr{}, false
	}
	a := Addr{Flags: uint32(b[2]), Index: int(binary.NativeEndian.Uint32(b[4:8]))}
	var local, address netip.Addr
	for b = b[unix.SizeofIfAddrmsg:]; len(b) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		v := b[unix.SizeofRtAttr:l]
		switch typ {
		case unix.IFA_LOCAL:
			local, _ = netip.AddrFromSlice(v)
		case unix.IFA_ADDRESS:
			address, _ = netip.AddrFromSlice(v)
		case unix.IFA_LABEL:
			if i := len(v); i > 0 && v[i-1] == 0 {
				v = v[:i-1]
			}
			a.Label = string(v)
		case unix.IFA_FLAGS:
			if len(v) >= 4 {
				a.Flags = binary.NativeEndian.Uint32(v)
			}
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	a.Addr = local
	if !a.Addr.IsValid() {
		a.Addr = address
	}
	return a, a.Addr.IsValid()
}

// parseLink decodes an ifinfomsg's index and its IFLA_IFNAME.
func parseLink(b []byte) (index int, name string, ok bool) {
	if len(b) < unix.SizeofIfInfomsg {
		return 0, "", false
	}
	index = int(int32(binary.NativeEndian.Uint32(b[4:8])))
	for b = b[unix.SizeofIfInfomsg:]; len(b) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		if binary.NativeEndian.Uint16(b[2:4]) == unix.IFLA_IFNAME {
			v := b[unix.SizeofRtAttr:l]
			if i := len(v); i > 0 && v[i-1] == 0 {
				v = v[:i-1]
			}
			return index, string(v), true
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	return index, "", true
}

func nlAlign(n int) int { return (n + 3) &^ 3 }
