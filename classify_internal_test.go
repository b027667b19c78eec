package safedial

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"
)

// TestNotLocalRule: a bind that answers "not an address of this host" is
// ErrSourceNotLocal, not exhaustion, with the errno of every system: on
// Windows a real Winsock error (WSAEADDRNOTAVAIL, 10049) never equals
// syscall.EADDRNOTAVAIL, a value the syscall package invents there.
// Without it a pool on Windows would not fail over past a removed address.
func TestNotLocalRule(t *testing.T) {
	for _, tc := range []struct {
		name  string
		errno syscall.Errno
		call  string
		want  bool
	}{
		{"EADDRNOTAVAIL", syscall.EADDRNOTAVAIL, "bind", true},
		{"windows WSAEADDRNOTAVAIL", wsaEADDRNOTAVAIL, "bind", true},
		{"connect EADDRNOTAVAIL is exhaustion", syscall.EADDRNOTAVAIL, "connect", false},
		{"windows connectex WSAEADDRNOTAVAIL", wsaEADDRNOTAVAIL, "connectex", false},
		{"bind EADDRINUSE", syscall.EADDRINUSE, "bind", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op := &net.OpError{Op: "dial", Net: "tcp", Source: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1)},
				Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 80}, Err: os.NewSyscallError(tc.call, tc.errno)}
			_, err := (&Dialer{}).classify(op, 0)
			if got := errors.Is(err, ErrSourceNotLocal); got != tc.want {
				t.Errorf("classify(%v) = %v: matches ErrSourceNotLocal %v, want %v", op, err, got, tc.want)
			}
			if tc.want && (errors.Is(err, ErrEphemeralExhausted) || !errors.Is(err, tc.errno)) {
				t.Errorf("classify(%v) = %v: want the errno in the chain, and no exhaustion", op, err)
			}
		})
	}
}
