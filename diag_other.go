//go:build !linux

package safedial

import (
	"context"
	"net/netip"
)

// sock_diag is Linux's: elsewhere the probes say so.
const diagSupported = false

func diagCount(context.Context, bool, bool, netip.Addr, netip.AddrPort, PortRange) (int, int, error) {
	return 0, 0, errNoDiag
}

func diagPairs(context.Context, bool, bool, bool, PortRange) (map[pairKey]pairCount, error) {
	return nil, errNoDiag
}
