package safedial

import (
	"os"

	"golang.org/x/sys/unix"
)

// checkLocal checks that s is an address of this host: a throwaway UDP
// socket binds it with IP_BIND_ADDRESS_NO_PORT, which takes no port.
func checkLocal(s *source) error {
	domain := unix.AF_INET
	if s.addr.Is6() {
		domain = unix.AF_INET6
	}
	fd, err := unix.Socket(domain, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil // no socket to check with: the dials will tell
	}
	defer unix.Close(fd)
	unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1) // best-effort: without it the port is freed at once
	if err := unix.Bind(fd, sockaddr(s.addr, s.zone, 0)); err == unix.EADDRNOTAVAIL {
		return &sourceError{src: s.conf, err: os.NewSyscallError("bind", err)}
	}
	return nil
}

// dupFD returns a second descriptor for socket s.
func dupFD(s int) (int, error) {
	n, err := unix.FcntlInt(uintptr(s), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl", err)
	}
	return n, nil
}
