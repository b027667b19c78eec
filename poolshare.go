package safedial

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"syscall"
)

// shareAttempt is attempt's bind and connect for a UDP dial with
// ShareUDPPorts: the system call that failed and its error (or an error of
// its own, with call ""), and what held the ports of an exhaustion. A
// candidate port a fresh socket must take over: the fresh socket goes in
// net.Dialer's place, is prepared through c (a Control call inside this
// one's), and shareConnect works on a duplicate descriptor of it.
func (pd *poolDial) shareAttempt(ctx context.Context, network, address string, c syscall.RawConn, s *source, dst netip.AddrPort, wait bool) (call string, held *Headroom, err error) {
	cerr := onFD(c, func(orig int) error {
		fresh := func() (int, error) {
			if err := freshSocket(orig); err != nil {
				return -1, err
			}
			if err := pd.prepare(ctx, network, address, c); err != nil {
				return -1, err
			}
			return dupFD(orig)
		}
		var fd int
		fd, err = shareConnect(ctx, orig, orig, fresh, s.addr.WithZone(""), s.zone, dst, pd.shareRange, wait)
		held = heldBy(err)
		if fd >= 0 && fd != orig {
			if err == nil {
				err = replaceFD(fd, orig) // the same socket: closes the duplicate
			} else {
				closeFD(fd)
			}
		}
		return nil
	})
	if cerr != nil {
		return "", nil, cerr
	}
	var se *os.SyscallError
	if errors.As(err, &se) && se.Syscall != "dup3" {
		return se.Syscall, held, se.Err
	}
	return "", held, err
}
