package rtnladdr

import (
	"encoding/binary"
	"net/netip"
	"os/exec"
	"testing"

	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/sys/unix"
)

// TestForgedEvent: an RTM_NEWADDR that another process sends to the
// subscription's port ID is dropped; the kernel's own events come through.
func TestForgedEvent(t *testing.T) {
	netnstest.Run(t, netns.Config{}, func(t *testing.T) {
		c, err := Subscribe(0)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var portID uint32
		c.rc.Control(func(fd uintptr) {
			sa, err := unix.Getsockname(int(fd))
			if err != nil {
				t.Fatal(err)
			}
			portID = sa.(*unix.SockaddrNetlink).Pid
		})

		// A forged message: ifaddrmsg (AF_INET, /32, index 1) + IFA_LOCAL.
		forged := netip.MustParseAddr("198.51.100.66")
		msg := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfAddrmsg+8)
		binary.NativeEndian.PutUint32(msg[0:4], uint32(len(msg)))
		binary.NativeEndian.PutUint16(msg[4:6], unix.RTM_NEWADDR)
		b := msg[unix.SizeofNlMsghdr:]
		b[0], b[1] = unix.AF_INET, 32
		binary.NativeEndian.PutUint32(b[4:8], 1)
		a := b[unix.SizeofIfAddrmsg:]
		binary.NativeEndian.PutUint16(a[0:2], 8)
		binary.NativeEndian.PutUint16(a[2:4], unix.IFA_LOCAL)
		copy(a[4:8], forged.AsSlice())
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: portID}); err != nil {
			t.Fatalf("sending the forged message: %v", err)
		}
		if out, err := exec.Command("ip", "addr", "add", "198.18.0.9/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add: %v: %s", err, out)
		}
		real := netip.MustParseAddr("198.18.0.9")
		for seen := false; !seen; {
			if err := c.Read(func(e Event) {
				switch e.Addr.Addr {
				case forged:
					t.Errorf("the forged event came through: %+v", e)
				case real:
					seen = true
				}
			}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestInterrupted: a dump datagram is interrupted when any of its messages
// carries NLM_F_DUMP_INTR, the last (NLMSG_DONE) included.
func TestInterrupted(t *testing.T) {
	msg := func(typ, flags uint16) []byte {
		b := make([]byte, unix.SizeofNlMsghdr+4)
		binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
		binary.NativeEndian.PutUint16(b[4:6], typ)
		binary.NativeEndian.PutUint16(b[6:8], flags)
		return b
	}
	multi := uint16(unix.NLM_F_MULTI)
	for _, tc := range []struct {
		name string
		b    []byte
		want bool
	}{
		{"clean", append(msg(unix.RTM_NEWADDR, multi), msg(unix.NLMSG_DONE, multi)...), false},
		{"first", append(msg(unix.RTM_NEWADDR, multi|unix.NLM_F_DUMP_INTR), msg(unix.NLMSG_DONE, multi)...), true},
		{"done", append(msg(unix.RTM_NEWADDR, multi), msg(unix.NLMSG_DONE, multi|unix.NLM_F_DUMP_INTR)...), true},
		{"truncated", msg(unix.RTM_NEWADDR, multi)[:10], false},
	} {
		if got := interrupted(tc.b); got != tc.want {
			t.Errorf("%s: interrupted = %v, want %v", tc.name, got, tc.want)
		}
	}
}
