package netns

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

func sysProcAttr(cmd *exec.Cmd) error {
	attr := &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() != 0 {
		attr.Cloneflags |= unix.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	cmd.SysProcAttr = attr
	return nil
}

func setup(c Config) error {
	if err := loopbackUp(); err != nil {
		return err
	}
	if c.PortLo != 0 || c.PortHi != 0 {
		if err := writeSysctl("net/ipv4/ip_local_port_range", fmt.Sprintf("%d %d", c.PortLo, c.PortHi)); err != nil {
			return err
		}
	}
	if err := writeSysctl("net/ipv4/tcp_tw_reuse", fmt.Sprint(c.TWReuse)); err != nil {
		return err
	}
	// A stray RST kills a TIME_WAIT socket early unless RFC 1337 is
	// followed (seen here: one 4-tuple reused within a second, in about one
	// run in 25 of examples/exhaustion's churn test); exact counts of ports
	// held in TIME_WAIT need it followed.
	return writeSysctl("net/ipv4/tcp_rfc1337", "1")
}

// loopbackUp sets IFF_UP on lo: a new namespace starts with it down, and
// every dial would fail with ENETUNREACH.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: socket for ioctl: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("netns: get flags of lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("netns: bring lo up: %w", err)
	}
	return nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0); err != nil {
		return fmt.Errorf("netns: set %s=%q: %w", name, value, err)
	}
	return nil
}
