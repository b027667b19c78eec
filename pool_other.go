//go:build !linux

package safedial

import (
	"context"
	"errors"
	"net/netip"
)

// Elsewhere the pool chooses a source before each dial (dialPoolBefore):
// the hook never binds, and these are never called.
const poolInHook = false

func bindConnect(int, *source, netip.AddrPort) (string, error) { return "", errors.ErrUnsupported }
func socketLike(int) (int, error)                              { return -1, errors.ErrUnsupported }
func replaceFD(int, int) error                                 { return errors.ErrUnsupported }
func closeFD(int)                                              {}
func boundAddr(int) netip.Addr                                 { return netip.Addr{} }
func dupFD(int) (int, error)                                   { return -1, errors.ErrUnsupported }

// checkLocal does not check elsewhere: a source that is not local fails
// over at dial time.
func checkLocal(*source) error { return nil }

func goneUnderNonlocalBind(*source) *sourceError          { return nil }
func unreachableFrom(*source, string, error) *sourceError { return nil }

const shareSupported = false

func shareConnect(_ context.Context, fd, _ int, _ func() (int, error), _ netip.Addr, _ uint32, _ netip.AddrPort, _ PortRange, _ bool) (int, error) {
	return fd, errNoShare
}

func routeSource(netip.Addr) (netip.Addr, error) { return netip.Addr{}, errors.ErrUnsupported }

func localBroadcast(netip.Addr) bool { return false }
