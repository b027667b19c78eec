package safedial

import (
	"errors"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"syscall"
)

// This file holds the exhaustion rules: Classify for errors from any dialer,
// and classify for a Dialer's own dials.

// Classify applies safedial's exhaustion rules to an error from any dialer:
// a plain [net.Dialer], an [http.Client] (whose errors are [*url.Error]), or
// code that wrapped them (a proxy client's own *net.OpError included). When
// err reports ephemeral-port exhaustion, Classify returns an error that
// matches [ErrEphemeralExhausted] and wraps an [*ExhaustedError]; a
// *url.Error or *net.OpError on the outside stays on the outside. Otherwise,
// and for errors that already match, it returns err unchanged (nil stays
// nil).
//
// The rules, from the system call that failed:
//   - bind, EADDRINUSE, requested local port 0: exhaustion (Syscall "bind");
//   - TCP connect, EADDRNOTAVAIL, no explicit local port: exhaustion (Syscall "connect");
//   - UDP connect, EAGAIN, no explicit local port: exhaustion (Syscall "connect");
//   - Windows: bind, WSAENOBUFS; connectex, WSAEADDRINUSE, no explicit
//     local port: exhaustion;
//   - anything else is not: bind EADDRNOTAVAIL (the source is not local),
//     EADDRINUSE on an explicit port (a conflict), refused, unreachable,
//     timeouts and cancellation.
func Classify(err error) error {
	if err == nil || errors.Is(err, ErrEphemeralExhausted) {
		return err
	}
	switch e := err.(type) {
	case *net.OpError:
		if ee := exhausted(e, PortRange{}); ee != nil {
			return withErr(e, ee)
		}
		// A proxy client (x/net/proxy's SOCKS5: Op "socks connect") wraps
		// the dialer's *net.OpError in one of its own.
		if inner := Classify(e.Err); inner != e.Err {
			return withErr(e, inner)
		}
		return err
	case *url.Error:
		if inner := Classify(e.Err); inner != e.Err {
			return &url.Error{Op: e.Op, URL: e.URL, Err: inner}
		}
		return err
	}
	if ee := findExhausted(err); ee != nil {
		return &classified{err: err, ee: ee}
	}
	return err
}

// findExhausted returns the exhaustion reported by the first *net.OpError
// anywhere in err's chain (joined errors included) that reports one.
func findExhausted(err error) *ExhaustedError {
	switch e := err.(type) {
	case nil:
		return nil
	case *net.OpError:
		if ee := exhausted(e, PortRange{}); ee != nil {
			return ee
		}
	case interface{ Unwrap() []error }:
		for _, err := range e.Unwrap() {
			if ee := findExhausted(err); ee != nil {
				return ee
			}
		}
		return nil
	}
	return findExhausted(errors.Unwrap(err))
}

// classified adds an ExhaustedError to an error chain Classify cannot rebuild.
type classified struct {
	err error
	ee  *ExhaustedError
}

// Error is the wrapped error's message followed by the exhaustion's
// explanation and advice (without the system call's error again: the
// wrapped message has it).
func (c *classified) Error() string {
	ee := *c.ee
	ee.Err = nil
	return c.err.Error() + ": " + ee.Error()
}
func (c *classified) Unwrap() []error { return []error{c.ee, c.err} }

// withErr returns a copy of op with Err replaced.
func withErr(op *net.OpError, err error) *net.OpError {
	c := *op
	c.Err = err
	return &c
}

// exhausted returns the ExhaustedError that op reports, or nil when op is not
// exhaustion. pr is the dialer's per-socket range, if any.
func exhausted(op *net.OpError, pr PortRange) *ExhaustedError {
	sc, ok := op.Err.(*os.SyscallError)
	if !ok || op.Op != "dial" {
		return nil
	}
	errno, ok := sc.Err.(syscall.Errno)
	if !ok {
		return nil
	}
	src := addrPort(op.Source)
	ephemeral := src.Port() == 0
	var what string
	switch {
	case sc.Syscall == "bind" && ephemeral && (errno == syscall.EADDRINUSE || errno == wsaENOBUFS):
		what = "bind"
	case sc.Syscall == "connect" && ephemeral && errno == syscall.EADDRNOTAVAIL && strings.HasPrefix(op.Net, "tcp"):
		what = "connect"
	case sc.Syscall == "connect" && ephemeral && errno == syscall.EAGAIN && strings.HasPrefix(op.Net, "udp"):
		what = "connect"
	case sc.Syscall == "connectex" && ephemeral && errno == wsaEADDRINUSE:
		what = "connect"
	default:
		return nil
	}
	ee := &ExhaustedError{Syscall: what, Net: op.Net, Source: src.Addr(), Dest: addrPort(op.Addr), Err: sc}
	if pr != (PortRange{}) {
		ee.Range, ee.PerSocket = pr, true
	} else {
		ee.Range, _ = namespaceRange()
	}
	return ee
}

// addrPort converts a *net.TCPAddr or *net.UDPAddr; anything else, including
// nil, gives the zero AddrPort.
func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		if a != nil {
			ap = a.AddrPort()
		}
	case *net.UDPAddr:
		if a != nil {
			ap = a.AddrPort()
		}
	}
	// net.ParseIP gives 16-byte IPv4 addresses, which convert to IPv4-mapped
	// IPv6; report them as the IPv4 addresses they are.
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// classify turns the error of one dial into safedial's: exhaustion is
// returned as an *ExhaustedError inside the *net.OpError (and as ee), a
// source that is not local as a sourceError. Other errors come back
// unchanged. refused holds the optional options the dial went without.
func (d *Dialer) classify(err error, refused uint32) (ee *ExhaustedError, _ error) {
	op, ok := err.(*net.OpError)
	if !ok {
		return nil, err
	}
	if ee = exhausted(op, d.PortRange); ee != nil {
		ee.noteRefused(refused)
		return ee, withErr(op, ee)
	}
	if se := notLocal(op); se != nil {
		return nil, withErr(op, se)
	}
	if te := tupleInUse(op); te != nil {
		return nil, withErr(op, te)
	}
	return nil, err
}

// notLocal returns the sourceError for a bind that failed with
// EADDRNOTAVAIL (WSAEADDRNOTAVAIL on Windows), or nil.
func notLocal(op *net.OpError) *sourceError {
	sc, ok := op.Err.(*os.SyscallError)
	if ok && sc.Syscall == "bind" && (errors.Is(sc.Err, syscall.EADDRNOTAVAIL) || sc.Err == wsaEADDRNOTAVAIL) {
		return &sourceError{src: addrPort(op.Source).Addr(), err: sc}
	}
	return nil
}
