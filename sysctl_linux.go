package safedial

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// add puts p in s (portSet is in headroom_count.go).
func (s *portSet) add(p uint16) { s[p/64] |= 1 << (p % 64) }

// count returns how many ports of r are in s.
func (s *portSet) count(r PortRange) int {
	n := 0
	for p := int(r.Lo); p <= int(r.Hi) && r.Lo != 0; p++ {
		if s.has(uint16(p)) {
			n++
		}
	}
	return n
}

// parsePortList parses the format of net.ipv4.ip_local_reserved_ports:
// comma-separated ports and inclusive ranges ("8080,9000-9010"), or nothing.
func parsePortList(text string) (*portSet, error) {
	s := new(portSet)
	text = strings.TrimSpace(text)
	if text == "" {
		return s, nil
	}
	for _, f := range strings.Split(text, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(f), "-")
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port list %q: %w", text, err)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 16); err != nil {
				return nil, fmt.Errorf("port list %q: %w", text, err)
			}
		}
		if b < a {
			return nil, fmt.Errorf("port list %q: inverted range %q", text, f)
		}
		for p := a; p <= b; p++ {
			s.add(uint16(p))
		}
	}
	return s, nil
}

// The reserved ports of the caller's network namespace, read at most once a
// second. The cache is keyed by nothing but time: a process that moves
// between namespaces (the tests' children do not) would see the old set for
// up to a second.
var reserved struct {
	mu  sync.Mutex
	at  time.Time
	set *portSet
}

// reservedPorts returns net.ipv4.ip_local_reserved_ports: ports the kernel
// never hands out as ephemeral ports. The set must not be modified.
func reservedPorts() (*portSet, error) {
	reserved.mu.Lock()
	defer reserved.mu.Unlock()
	if reserved.set != nil && time.Since(reserved.at) < time.Second {
		return reserved.set, nil
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports")
	if err != nil {
		return nil, err
	}
	s, err := parsePortList(string(b))
	if err != nil {
		return nil, fmt.Errorf("net.ipv4.ip_local_reserved_ports: %w", err)
	}
	reserved.set, reserved.at = s, time.Now()
	return s, nil
}

// The integer sysctls a probe reads, per name, each read at most once a
// second (same caveat as reserved).
var sysctls struct {
	mu sync.Mutex
	m  map[string]sysctlValue
}

type sysctlValue struct {
	at time.Time
	v  int
	ok bool
}

// sysctlInt returns the integer value of /proc/sys/name, and false where
// this kernel has no such sysctl (or it cannot be read).
func sysctlInt(name string) (int, bool) {
	sysctls.mu.Lock()
	defer sysctls.mu.Unlock()
	if c, ok := sysctls.m[name]; ok && time.Since(c.at) < time.Second {
		return c.v, c.ok
	}
	c := sysctlValue{at: time.Now()}
	c.v, c.ok = readSysctl(name)
	if sysctls.m == nil {
		sysctls.m = map[string]sysctlValue{}
	}
	sysctls.m[name] = c
	return c.v, c.ok
}

// readSysctl reads the integer sysctl name (net/ipv4/...) now, uncached:
// for checks that a caller asked for explicitly (SetSources), where a
// value up to a second old would be a memory outliving its fact.
func readSysctl(name string) (int, bool) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return 0, false
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return v, err == nil
}

// twReuse is what the kernel's tcp_twsk_unique needs to reuse a TIME_WAIT
// 4-tuple for a new outgoing connection: net.ipv4.tcp_tw_reuse (0 never, 1
// always, 2 when the source or the destination is a loopback address),
// timestamps (net.ipv4.tcp_timestamps, and the peer's, which the probe
// cannot see: it assumes them), and a TIME_WAIT socket older than
// net.ipv4.tcp_tw_reuse_delay (milliseconds, Linux 6.13+). Older kernels
// compare the second of the last timestamp received plus one with the
// current second, which means between one and two seconds: the probe waits
// the two, so that it never calls a port free that the kernel would not
// reuse yet.
type twReuse struct {
	mode  int           // tcp_tw_reuse
	delay time.Duration // age past which a TIME_WAIT socket is reusable
}

func readTWReuse() twReuse {
	mode, ok := sysctlInt("net/ipv4/tcp_tw_reuse")
	if !ok {
		mode = 2 // the kernel's default since 4.19
	}
	if ts, ok := sysctlInt("net/ipv4/tcp_timestamps"); ok && ts == 0 {
		mode = 0 // without timestamps nothing is reused
	}
	delay := 2 * time.Second
	if ms, ok := sysctlInt("net/ipv4/tcp_tw_reuse_delay"); ok {
		delay = time.Duration(ms) * time.Millisecond
	}
	return twReuse{mode: mode, delay: delay}
}

// reuses reports whether the kernel reuses the TIME_WAIT sockets from src to
// dst (old enough) for new outgoing connections.
func (t twReuse) reuses(src, dst netip.Addr) bool {
	switch t.mode {
	case 1:
		return true
	case 2:
		return src.Unmap().IsLoopback() || dst.Unmap().IsLoopback()
	}
	return false
}
