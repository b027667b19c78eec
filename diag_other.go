//go:build !linux

package safedial

import (
	"context"
	"net/netip"
)

// sock_diag is Linux's: elsewhere the probes say so.
const diagSupported = false

func diagTCP(context.Context, netip.Addr, uint32, netip.AddrPort, PortRange, bool) (pairPorts, hostPorts, error) {
	return pairPorts{}, hostPorts{}, errNoDiag
}

func diagUDP(context.Context, netip.Addr, PortRange) (pairPorts, hostPorts, error) {
	return pairPorts{}, hostPorts{}, errNoDiag
}

func diagPairs(context.Context, bool, bool, bool, PortRange) (map[pairKey]*pairPorts, hostPorts, error) {
	return nil, hostPorts{}, errNoDiag
}

func localAddr(netip.Addr) bool { return true }

func diagUDPAny(context.Context, bool, bool, PortRange) (pairPorts, hostPorts, error) {
	return pairPorts{}, hostPorts{}, errNoDiag
}

func diagTCPBindFirst(context.Context, netip.Addr, PortRange) (pairPorts, hostPorts, error) {
	return pairPorts{}, hostPorts{}, errNoDiag
}

func (d *Dialer) routedSource(_ context.Context, _ string, dst netip.AddrPort) (netip.Addr, error) {
	return routeSource(dst.Addr())
}
