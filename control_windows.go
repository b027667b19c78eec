package safedial

import (
	"errors"

	"golang.org/x/sys/windows"
)

// Windows: Go binds every outbound socket (the wildcard address and port 0
// when there is no local address) before ConnectEx, so without help every Go
// program there is capped at one connection per port, host-wide.
// SO_REUSE_UNICASTPORT (Windows 10 and Server 2016 and later) delays the
// port choice to connect time, where the 4-tuple is known, when the
// administrator has configured the auto-reuse port range; it is set
// best-effort, as .NET does. SO_REUSEADDR is never set: on Windows it lets
// another process bind a port in use (port stealing).
const (
	reuseAddrSupported  = false
	bindNoPortSupported = true
	portRangeSupported  = false
	alwaysBinds         = true
	bindNoPortName      = "SO_REUSE_UNICASTPORT"
)

// soReuseUnicastPort is SO_REUSE_UNICASTPORT from the Windows SDK's ws2def.h
// (#define SO_REUSE_UNICASTPORT 0x3007); x/sys/windows does not define it.
const soReuseUnicastPort = 0x3007

// The Winsock codes in errors.go must equal x/sys/windows's: this fails to
// compile if they differ.
var (
	_ [wsaEADDRINUSE - windows.WSAEADDRINUSE]struct{}
	_ [windows.WSAEADDRINUSE - wsaEADDRINUSE]struct{}
	_ [wsaEADDRNOTAVAIL - windows.WSAEADDRNOTAVAIL]struct{}
	_ [windows.WSAEADDRNOTAVAIL - wsaEADDRNOTAVAIL]struct{}
	_ [wsaENOBUFS - windows.WSAENOBUFS]struct{}
	_ [windows.WSAENOBUFS - wsaENOBUFS]struct{}
)

func setOptions(fd uintptr, tcp bool, o options) error {
	if o.bindNoPort && tcp && !bindNoPortOpt.refused() {
		if err := windows.SetsockoptInt(windows.Handle(fd), windows.SOL_SOCKET, soReuseUnicastPort, 1); err != nil {
			bindNoPortOpt.refuse(err)
		}
	}
	return nil
}

func localPortRange() (PortRange, error) { return PortRange{}, errors.ErrUnsupported }
