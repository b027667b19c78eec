package safedial

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	reuseAddrSupported  = true
	bindNoPortSupported = true
	portRangeSupported  = true
)

func setOptions(fd uintptr, tcp bool, o options) error {
	s := int(fd)
	if o.reuseAddr && tcp {
		if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	if o.bindNoPort {
		if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			return os.NewSyscallError("setsockopt", err)
		}
	}
	if o.portRange != 0 {
		// The kernel takes a u32; SetsockoptInt passes the same 4 bytes.
		if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_LOCAL_PORT_RANGE, int(int32(o.portRange))); err != nil {
			if errors.Is(err, unix.ENOPROTOOPT) {
				return &unsupportedError{what: "PortRange needs IP_LOCAL_PORT_RANGE, which this kernel lacks (Linux 6.3 or later)", err: os.NewSyscallError("setsockopt", err)}
			}
			return os.NewSyscallError("setsockopt", err)
		}
	}
	return nil
}

// localPortRange reads net.ipv4.ip_local_port_range of the caller's network
// namespace. It is called on error paths only.
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
