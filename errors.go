package safedial

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
)

// ErrEphemeralExhausted matches, with [errors.Is], every error that reports
// ephemeral-port exhaustion: the kernel had no free local port for the dial.
// The concrete error is an [*ExhaustedError] inside the usual [*net.OpError].
var ErrEphemeralExhausted = errors.New("ephemeral ports exhausted")

// ErrSourceNotLocal matches, with [errors.Is], the error a [Dialer] returns
// when a source address (Base.LocalAddr or one of Sources) is not an address
// of this host or network namespace: bind(2) answered EADDRNOTAVAIL
// (WSAEADDRNOTAVAIL on Windows).
// SetSources returns it for such a source; a dial with Sources fails over
// past such a source and returns it only when no source was exhausted. It is
// a configuration error, never exhaustion.
var ErrSourceNotLocal = errors.New("source address is not an address of this host")

// ErrInvalidConfig matches, with [errors.Is], the errors a [Dialer] returns
// for a configuration that cannot work (for example Sources together with
// Base.LocalAddr, or an inverted PortRange). Most are found before any socket
// is made; a few only once the kernel has answered: a source whose bind does
// not pin the connection (the kernel chose another source address), and a
// connection from a port outside PortRange (closed before it is returned).
var ErrInvalidConfig = errors.New("invalid safedial configuration")

// Winsock error codes. On Windows, syscall.EADDRINUSE and friends are values
// invented by the syscall package that a real Winsock error never equals, so
// the real codes are compared. They are plain numbers here so that the rules
// can be tested on every system; control_windows.go checks at compile time
// that they equal golang.org/x/sys/windows.WSAEADDRINUSE and WSAENOBUFS.
const (
	wsaEADDRINUSE    syscall.Errno = 10048
	wsaEADDRNOTAVAIL syscall.Errno = 10049
	wsaENOBUFS       syscall.Errno = 10055
)

// ExhaustedError describes one ephemeral-port exhaustion. A [Dialer] returns
// it as the Err of a [*net.OpError], so code that inspects *net.OpError keeps
// working, and errors.Is(err, [ErrEphemeralExhausted]),
// errors.Is(err, syscall.EADDRINUSE) (or EADDRNOTAVAIL, EAGAIN) and
// errors.As(err, new(*os.SyscallError)) all hold:
//
//	*net.OpError → *ExhaustedError → *os.SyscallError → syscall.Errno
type ExhaustedError struct {
	// Syscall is the system call that found no free port: "bind" (every
	// port of the range is bound on Source) or "connect" (no port is free
	// for this 4-tuple).
	Syscall string
	// Net is the network of the dial ("tcp", "tcp4", "udp6", ...).
	Net string
	// Source is the source address the dial bound, or the zero Addr when
	// it did not bind.
	Source netip.Addr
	// Dest is the remote address being dialed.
	Dest netip.AddrPort
	// Range is the local port range in force, or the zero PortRange when it
	// could not be read (on systems other than Linux).
	Range PortRange
	// PerSocket reports that Range is the dialer's PortRange rather than the
	// namespace's net.ipv4.ip_local_port_range.
	PerSocket bool
	// Tried lists the sources of a [Dialer.Sources] pool found full in this
	// dial, in the order tried: by the kernel, or, when every source was
	// known full, the one the kernel was asked about (Source) followed by
	// those it was not asked about. Sources found not local are left out.
	// Nil outside pools.
	Tried []netip.Addr
	// Err is the underlying error, an [*os.SyscallError].
	Err error
	// Refused, when not nil, is the system's refusal of
	// IP_BIND_ADDRESS_NO_PORT (SO_REUSE_UNICASTPORT on Windows), which
	// explains a bind-time exhaustion: the
	// dial went on without it, and a bound source is then capped at one
	// connection per port.
	Refused *RefusedError
	// Shared reports a UDP dial with ShareUDPPorts, where a port serves
	// one connected socket per destination, so the range is full toward
	// Dest only (without it, a UDP port is taken for every destination).
	Shared bool
	// Held, for a shared UDP dial (Shared set), says what held the ports of
	// the range (the ports the kernel hands out: Range less reserved ports
	// and ports outside the namespace range) when the dial gave up: InUse
	// ports connected toward Dest, Bound ports held for every destination
	// by sockets a shared port cannot join, Reserved ports never handed
	// out, and Free ports taken by concurrent dials during the search. Nil
	// otherwise.
	Held *Headroom
}

// Error says what happened and what to do about it.
func (e *ExhaustedError) Error() string {
	var b strings.Builder
	b.WriteString(ErrEphemeralExhausted.Error())
	if e.Err != nil {
		b.WriteString(" (")
		b.WriteString(e.Err.Error())
		b.WriteString(")")
	}
	rng := "local port range"
	if e.PerSocket {
		rng = "per-socket port range"
	}
	if e.Range != (PortRange{}) {
		rng += " " + e.Range.String()
	}
	if ns, ok := namespaceRange(); ok && e.PerSocket && (e.Range.Lo < ns.Lo || e.Range.Hi > ns.Hi) && e.Range.Hi >= ns.Lo && e.Range.Lo <= ns.Hi {
		// The kernel uses the intersection: say so.
		rng += fmt.Sprintf(" (the kernel uses only %v, its part within the namespace's net.ipv4.ip_local_port_range)", PortRange{Lo: max(e.Range.Lo, ns.Lo), Hi: min(e.Range.Hi, ns.Hi)})
	}
	sources := func() string {
		if len(e.Tried) > 1 {
			return " from every source tried (" + joinAddrs(e.Tried) + ")"
		} else if e.Source.IsValid() {
			return " from " + e.Source.String()
		}
		return ""
	}
	switch {
	case e.Syscall == "bind":
		fmt.Fprintf(&b, "; every port of the %s is bound", rng)
		if len(e.Tried) > 1 {
			fmt.Fprintf(&b, " on every source tried (%s)", joinAddrs(e.Tried))
		} else if e.Source.IsValid() {
			fmt.Fprintf(&b, " on %s", e.Source)
		}
		b.WriteString(": bind before connect allows one connection per port whatever the destination; dial with safedial's IP_BIND_ADDRESS_NO_PORT (do not set DisableBindNoPort) or do not set a local address")
	case strings.HasPrefix(e.Net, "udp") && e.Shared && e.Held != nil:
		fmt.Fprintf(&b, "; no port of the %s is left toward this destination%s: %s (with ShareUDPPorts a port serves one connected UDP socket per destination, and cannot be shared with a socket that does not share): close idle sockets, add source addresses, or widen the range", rng, sources(), heldText(e.Held))
	case strings.HasPrefix(e.Net, "udp") && e.Shared:
		fmt.Fprintf(&b, "; every port of the %s is in use toward this destination%s (with ShareUDPPorts a port serves one connected UDP socket per destination): add source addresses or destinations, close idle sockets, or widen the range", rng, sources())
	case strings.HasPrefix(e.Net, "udp"):
		fmt.Fprintf(&b, "; every port of the %s is taken by a UDP socket%s, whatever its destination: a connected UDP socket holds its port for every destination; close idle sockets, add source addresses, or widen the range", rng, sources())
	default:
		fmt.Fprintf(&b, "; %s is full for this destination%s: add source addresses or destinations, reuse connections, or widen the range", rng, sources())
	}
	if e.Refused != nil {
		b.WriteString("; ")
		b.WriteString(e.Refused.Error())
	}
	return b.String()
}

// noteRefused records in e the refusal of IP_BIND_ADDRESS_NO_PORT, when the
// dial went without it and that explains a bind-time exhaustion.
func (e *ExhaustedError) noteRefused(refused uint32) {
	if e.Syscall == "bind" && refused&bindNoPortOpt.bit != 0 {
		e.Refused = bindNoPortOpt.first.Load()
	}
}

// Unwrap returns the underlying system call error.
func (e *ExhaustedError) Unwrap() error { return e.Err }

// Is reports whether target is [ErrEphemeralExhausted].
func (e *ExhaustedError) Is(target error) bool { return target == ErrEphemeralExhausted }

// Timeout reports false: exhaustion is not a timeout.
func (e *ExhaustedError) Timeout() bool { return false }

// Temporary reports what the system call's error reports, so that the
// *net.OpError around e answers as net.Dialer's would.
//
// Deprecated: as for [net.Error], "temporary" is ill-defined; use
// errors.Is(err, [ErrEphemeralExhausted]).
func (e *ExhaustedError) Temporary() bool {
	var t interface{ Temporary() bool }
	return errors.As(e.Err, &t) && t.Temporary()
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// sourceError is the Err of the *net.OpError a Dialer returns when bind(2)
// answered EADDRNOTAVAIL: the source is not an address of this host.
type sourceError struct {
	src netip.Addr
	err error // *os.SyscallError
}

func (e *sourceError) Error() string {
	src := "the source address"
	if e.src.IsValid() {
		src = "source address " + e.src.String()
	}
	return fmt.Sprintf("%s is not an address of this host (%v); use an address assigned to a local interface (see ip addr)", src, e.err)
}

func (e *sourceError) Unwrap() error        { return e.err }
func (e *sourceError) Is(target error) bool { return target == ErrSourceNotLocal }

// configError is a configuration error; it matches ErrInvalidConfig.
type configError struct{ msg string }

func (e *configError) Error() string { return "safedial: " + e.msg }
func (e *configError) Unwrap() error { return ErrInvalidConfig }

func errConfig(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// RefusedError reports that the system refused an optional socket option
// (IP_BIND_ADDRESS_NO_PORT or SO_REUSEADDR on Linux, SO_REUSEADDR on the
// BSDs and macOS, SO_REUSE_UNICASTPORT on Windows): kernels before 4.2,
// Windows before 10 and Server 2016, sandboxes and seccomp profiles do.
// Those options only improve things, so a dial does not fail for them: it
// goes on as net.Dialer's would. A Dialer reports the first refusal of each
// option to its OnRefused hook, counts the dials made without an option in
// [Stats].Refused, and names the refusal in an exhaustion it explains.
type RefusedError struct {
	// Option is the option's name, such as "IP_BIND_ADDRESS_NO_PORT" or
	// "SO_REUSE_UNICASTPORT".
	Option string
	// Consequence says what dials lose without the option.
	Consequence string
	// Err is the setsockopt error, an [*os.SyscallError].
	Err error
}

// Error says which option was refused, why, and what that costs.
func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s was refused by this system (%v): %s", e.Option, e.Err, e.Consequence)
}

// Unwrap returns the setsockopt error.
func (e *RefusedError) Unwrap() error { return e.Err }

// unsupportedError reports a feature this system lacks or refuses; it
// matches errors.ErrUnsupported and wraps the system's answer, if any.
type unsupportedError struct {
	what string
	err  error
}

func (e *unsupportedError) Error() string {
	if e.err == nil {
		return "safedial: " + e.what
	}
	return fmt.Sprintf("safedial: %s (%v)", e.what, e.err)
}

func (e *unsupportedError) Unwrap() []error {
	if e.err == nil {
		return []error{errors.ErrUnsupported}
	}
	return []error{errors.ErrUnsupported, e.err}
}
