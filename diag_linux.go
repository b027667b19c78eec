package safedial

import (
	"context"
	"net/netip"

	"github.com/safedial/safedial/internal/sockdiag"
)

// sock_diag itself (requests, bytecode, the dump loop) is internal/sockdiag;
// what the probes ask it and read from its answers is headroom_linux.go and
// udpshare_diag_linux.go.
const diagSupported = true

// dump is sockdiag.Dump, its errors said as safedial's.
func dump(ctx context.Context, reqs [][]byte, each func(msg []byte)) error {
	return diagErr(sockdiag.Dump(ctx, reqs, each))
}

// diagErr turns sockdiag's "missing or refused" into an unsupportedError
// (errors.ErrUnsupported); other errors are returned as they are.
func diagErr(err error) error {
	if e, ok := err.(*sockdiag.Error); ok {
		return &unsupportedError{what: e.What, err: e.Err}
	}
	return err
}

func unspecified(a netip.Addr) netip.Addr {
	if a.Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}
