//go:build !unix && !windows

package safedial

import "errors"

// Other systems (js, wasip1, plan9): no options are set.
const (
	reuseAddrSupported  = false
	bindNoPortSupported = false
	portRangeSupported  = false
	alwaysBinds         = false
	bindNoPortName      = "IP_BIND_ADDRESS_NO_PORT"
)

func setOptions(uintptr, bool, options) error { return nil }

func localPortRange() (PortRange, error) { return PortRange{}, errors.ErrUnsupported }
