// Package netns runs code in a private Linux network namespace with its own
// ephemeral port range, so that port exhaustion can be reproduced exactly
// without touching the host's sysctls.
//
// The pattern is a child process: the parent re-executes a binary (a test
// binary or an example program) with [Command], which creates the process in a
// fresh network namespace, and the child calls [Setup] before doing anything
// else. Setting up from a child process, rather than moving one thread with
// unshare(2), keeps every goroutine and every runtime thread of the child in
// the namespace.
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// Env is the environment variable that carries a [Config] from the parent to
// the child. Its presence tells the child that it runs inside a namespace.
const Env = "SAFEDIAL_NETNS"

// Config describes the namespace a child gets.
type Config struct {
	// PortLo and PortHi set net.ipv4.ip_local_port_range (which applies to
	// IPv4 and IPv6). Zero leaves the namespace default (32768-60999).
	PortLo, PortHi uint16
	// TWReuse sets net.ipv4.tcp_tw_reuse. The zero value sets 0, so that
	// ports in TIME_WAIT are never reused and counts are exact.
	// (net.ipv4.tcp_rfc1337 is always set to 1, so that no RST ends a
	// TIME_WAIT early.)
	TWReuse int
}

// ErrUnsupported is returned where private network namespaces cannot be made.
var ErrUnsupported = errors.New("private network namespaces need Linux")

// String encodes c for [Env].
func (c Config) String() string {
	return fmt.Sprintf("%d-%d,%d", c.PortLo, c.PortHi, c.TWReuse)
}

// parseConfig decodes the value of [Env].
func parseConfig(s string) (Config, error) {
	var c Config
	ports, tw, ok := strings.Cut(s, ",")
	lo, hi, ok2 := strings.Cut(ports, "-")
	if !ok || !ok2 {
		return c, fmt.Errorf("netns: malformed %s=%q", Env, s)
	}
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	t, err3 := strconv.Atoi(tw)
	if err := errors.Join(err1, err2, err3); err != nil {
		return c, fmt.Errorf("netns: malformed %s=%q: %w", Env, s, err)
	}
	return Config{PortLo: uint16(l), PortHi: uint16(h), TWReuse: t}, nil
}

// Inside reports whether this process was started by [Command] and so runs in
// its own namespace (after [Setup]).
func Inside() bool { return os.Getenv(Env) != "" }

// Command returns a command that runs name with args in a fresh network
// namespace described by c. The child must call [Setup] first.
// When the caller is not root it also creates a user namespace mapping root to
// the caller, where the system allows unprivileged user namespaces.
//
// Setting the environment variable SAFEDIAL_NETNS_UNAVAILABLE makes Command
// fail as on a system without namespaces, to test what callers do then.
func Command(c Config, name string, args ...string) (*exec.Cmd, error) {
	if os.Getenv("SAFEDIAL_NETNS_UNAVAILABLE") != "" {
		return nil, fmt.Errorf("%w (SAFEDIAL_NETNS_UNAVAILABLE is set)", ErrUnsupported)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), Env+"="+c.String())
	if os.Getenv("GORACE") == "" {
		// A race-enabled child would otherwise sleep a second before exiting.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	if err := sysProcAttr(cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// Setup prepares the namespace this process was started in: it brings the
// loopback interface up and sets the sysctls from the [Config] in [Env].
// It must be called only where [Inside] reports true: anywhere else it would
// change the host.
func Setup() error {
	v := os.Getenv(Env)
	if v == "" {
		return fmt.Errorf("netns: %s is not set; refusing to change the host's network settings", Env)
	}
	c, err := parseConfig(v)
	if err != nil {
		return err
	}
	return setup(c)
}
