package safedial

import (
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
)

// tupleInUseError is the Err of the *net.OpError for a TCP dial from a fixed
// source port (Base.LocalAddr with a port) whose connect answered
// EADDRNOTAVAIL: the whole 4-tuple is held by another socket, open or in
// TIME_WAIT. It is not exhaustion (the kernel picked no port), and it
// unwraps to the *os.SyscallError, so errors.Is(err, syscall.EADDRNOTAVAIL)
// holds as for net.Dialer.
type tupleInUseError struct {
	src, dst string
	err      *os.SyscallError
}

func (e *tupleInUseError) Error() string {
	return fmt.Sprintf("%v: the 4-tuple %s->%s is still held, by an open connection or one in TIME_WAIT; "+
		"a fixed source port reaches one peer once per TIME_WAIT (60 s): let the kernel pick the port (port 0 in LocalAddr), "+
		"or set net.ipv4.tcp_tw_reuse=1 (with TCP timestamps)", e.err, e.src, e.dst)
}

func (e *tupleInUseError) Unwrap() error { return e.err }

// tupleInUse returns the tupleInUseError that op reports, or nil.
func tupleInUse(op *net.OpError) *tupleInUseError {
	sc, ok := op.Err.(*os.SyscallError)
	if !ok || sc.Syscall != "connect" || sc.Err != syscall.EADDRNOTAVAIL || !strings.HasPrefix(op.Net, "tcp") {
		return nil
	}
	src := addrPort(op.Source)
	if src.Port() == 0 || op.Addr == nil {
		return nil
	}
	return &tupleInUseError{src: src.String(), dst: op.Addr.String(), err: sc}
}
