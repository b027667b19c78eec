//go:build !linux

package safedial

import (
	"context"
	"net/netip"
)

func sharedHeadroom(context.Context, netip.Addr, netip.AddrPort, PortRange) (Headroom, error) {
	return Headroom{}, errNoDiag
}
