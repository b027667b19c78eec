package sysctl

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// PortSet is a set of ports, one bit each. A nil *PortSet is empty.
type PortSet [65536 / 64]uint64

// Has reports whether p is in s.
func (s *PortSet) Has(p uint16) bool { return s != nil && s[p/64]&(1<<(p%64)) != 0 }

// Add puts p in s.
func (s *PortSet) Add(p uint16) { s[p/64] |= 1 << (p % 64) }

// Count returns how many ports of lo..hi (inclusive) are in s; none when lo
// is 0.
func (s *PortSet) Count(lo, hi uint16) int {
	n := 0
	for p := int(lo); p <= int(hi) && lo != 0; p++ {
		if s.Has(uint16(p)) {
			n++
		}
	}
	return n
}

// ParsePortList parses the format of net.ipv4.ip_local_reserved_ports:
// comma-separated ports and inclusive ranges ("8080,9000-9010"), or nothing.
func ParsePortList(text string) (*PortSet, error) {
	s := new(PortSet)
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
			s.Add(uint16(p))
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
	set *PortSet
}

// ReservedPorts returns net.ipv4.ip_local_reserved_ports: ports the kernel
// never hands out as ephemeral ports. The set must not be modified.
func ReservedPorts() (*PortSet, error) {
	reserved.mu.Lock()
	defer reserved.mu.Unlock()
	if reserved.set != nil && time.Since(reserved.at) < time.Second {
		return reserved.set, nil
	}
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_reserved_ports")
	if err != nil {
		return nil, err
	}
	s, err := ParsePortList(string(b))
	if err != nil {
		return nil, fmt.Errorf("net.ipv4.ip_local_reserved_ports: %w", err)
	}
	reserved.set, reserved.at = s, time.Now()
	return s, nil
}

// The integer sysctls a probe reads, per name, each read at most once a
// second (same caveat as reserved).
var ints struct {
	mu sync.Mutex
	m  map[string]intValue
}

type intValue struct {
	at time.Time
	v  int
	ok bool
}

// Int returns the integer value of /proc/sys/name, and false where this
// kernel has no such sysctl (or it cannot be read). A value is read at most
// once a second.
func Int(name string) (int, bool) {
	ints.mu.Lock()
	defer ints.mu.Unlock()
	if c, ok := ints.m[name]; ok && time.Since(c.at) < time.Second {
		return c.v, c.ok
	}
	c := intValue{at: time.Now()}
	c.v, c.ok = ReadInt(name)
	if ints.m == nil {
		ints.m = map[string]intValue{}
	}
	ints.m[name] = c
	return c.v, c.ok
}

// ReadInt reads the integer sysctl name (net/ipv4/...) now, uncached: for
// checks that a caller asked for explicitly, where a value up to a second
// old would be a memory outliving its fact.
func ReadInt(name string) (int, bool) {
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		return 0, false
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return v, err == nil
}
