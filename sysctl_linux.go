package safedial

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// portSet is a set of ports, one bit each.
type portSet [65536 / 64]uint64

func (s *portSet) has(p uint16) bool { return s[p/64]&(1<<(p%64)) != 0 }
func (s *portSet) add(p uint16)      { s[p/64] |= 1 << (p % 64) }

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
