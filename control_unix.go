//go:build unix && !linux

package safedial

import (
	"errors"

	"golang.org/x/sys/unix"
)

// The BSDs and macOS: SO_REUSEADDR for TCP. They have no
// IP_BIND_ADDRESS_NO_PORT, so a bound source address still caps the host at
// one connection per port, and no per-socket port range.
const (
	reuseAddrSupported  = true
	bindNoPortSupported = false
	portRangeSupported  = false
	alwaysBinds         = false
	bindNoPortName      = "IP_BIND_ADDRESS_NO_PORT"
)

func setOptions(fd uintptr, tcp bool, o options) error {
	if o.reuseAddr && tcp && !reuseAddrOpt.refused() {
		if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			reuseAddrOpt.refuse(err)
		}
	}
	return nil
}

func localPortRange() (PortRange, error) { return PortRange{}, errors.ErrUnsupported }
