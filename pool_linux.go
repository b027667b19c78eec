package safedial

import (
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/safedial/safedial/internal/sysctl"
	"golang.org/x/sys/unix"
)

// checkLocal checks that s is an address of this host: a throwaway UDP
// socket binds it with IP_BIND_ADDRESS_NO_PORT, which takes no port. Where
// ip_nonlocal_bind lets bind accept any address, the routing table answers.
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
	if nonlocalBind(s.addr.Is6(), true) {
		if se := notLocalRoute(s); se != nil {
			se.src = s.conf
			return se
		}
	}
	return nil
}

// goneUnderNonlocalBind returns the not-local error of s when bind cannot
// tell (net.ipv4.ip_nonlocal_bind or net.ipv6.ip_nonlocal_bind is set: bind
// accepts any address, IPv4's connect then fails with ENETUNREACH and
// IPv6's sends its SYN from an address the host does not have) and the
// routing table has no local route for s. Without the sysctl it costs one
// cached read; with it, one RTM_GETROUTE.
func goneUnderNonlocalBind(s *source) *sourceError {
	if !nonlocalBind(s.addr.Is6(), false) {
		return nil
	}
	return notLocalRoute(s)
}

// nonlocalBinds caches the two ip_nonlocal_bind sysctls for the dial path,
// read at most once a second there: the check runs in every attempt, and
// reading the sysctls costs about 12 µs. SetSources reads them fresh (and
// refreshes the cache), so a pool set after the sysctl changed is checked
// against it; a dial may see a change up to a second late, and then IPv4's
// ENETUNREACH (unreachableFrom) still fails over.
var nonlocalBinds atomic.Pointer[struct {
	at     time.Duration // since epoch, on the real clock
	v4, v6 bool
}]

func nonlocalBind(v6, fresh bool) bool {
	now := time.Since(epoch)
	c := nonlocalBinds.Load()
	if fresh || c == nil || now-c.at >= time.Second {
		v4, _ := sysctl.ReadInt("net/ipv4/ip_nonlocal_bind")
		v6, _ := sysctl.ReadInt("net/ipv6/ip_nonlocal_bind")
		c = &struct {
			at     time.Duration
			v4, v6 bool
		}{now, v4 != 0, v6 != 0}
		nonlocalBinds.Store(c)
	}
	if v6 {
		return c.v6
	}
	return c.v4
}

// notLocalRoute returns the not-local error of s when the routing table
// answers that s is not an address of this host (a route type other than
// RTN_LOCAL); nil when it is, or when the routing cannot be asked. A
// link-local source (with a zone) is not asked: the lookup would need the
// interface.
func notLocalRoute(s *source) *sourceError {
	if s.zone != 0 {
		return nil
	}
	_, typ, err := routeGet(s.addr.WithZone(""))
	var se *os.SyscallError
	switch {
	case err == nil && typ == unix.RTN_LOCAL:
		return nil
	case err == nil:
		err = os.NewSyscallError("RTM_GETROUTE", unix.EADDRNOTAVAIL)
	case !errors.As(err, &se) || se.Syscall != "RTM_GETROUTE":
		return nil // the routing could not be asked; the kernel's answer (no route) falls through
	}
	return &sourceError{src: s.addr, err: err}
}

// unreachableFrom returns the not-local error of s when a connect from s
// failed with err because s is no longer an address of this host (IPv4
// under ip_nonlocal_bind answers ENETUNREACH), as the routing table says.
func unreachableFrom(s *source, call string, err error) *sourceError {
	if call != "connect" || err != unix.ENETUNREACH {
		return nil
	}
	return notLocalRoute(s)
}

// dupFD returns a second descriptor for socket s.
func dupFD(s int) (int, error) {
	n, err := unix.FcntlInt(uintptr(s), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("fcntl", err)
	}
	return n, nil
}
