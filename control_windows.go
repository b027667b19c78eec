package safedial

import (
	"errors"

	"golang.org/x/sys/windows"
)

// Windows: no options. SO_REUSEADDR there lets another process bind a port in
// use (port stealing), so it is never set.
const (
	reuseAddrSupported  = false
	bindNoPortSupported = false
	portRangeSupported  = false
)

// The Winsock codes in errors.go must equal x/sys/windows's: this fails to
// compile if they differ.
var (
	_ [wsaEADDRINUSE - windows.WSAEADDRINUSE]struct{}
	_ [windows.WSAEADDRINUSE - wsaEADDRINUSE]struct{}
	_ [wsaENOBUFS - windows.WSAENOBUFS]struct{}
	_ [windows.WSAENOBUFS - wsaENOBUFS]struct{}
)

func setOptions(uintptr, bool, options) error { return nil }

func localPortRange() (PortRange, error) { return PortRange{}, errors.ErrUnsupported }
