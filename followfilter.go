package safedial

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// What a Follower keeps of the host's addresses: FollowConfig's filter, the
// DAD and deprecation rules, and the error while nothing matches.

// matching returns the addresses that pass the filter, sorted, without
// duplicates.
func (s *followState) matching() []netip.Addr {
	var cand []hostAddr
	preferred := [2]bool{} // by family: 0 IPv4, 1 IPv6
	for _, a := range s.addrs {
		if !s.keeps(a) {
			continue
		}
		cand = append(cand, a)
		if !a.deprecated {
			preferred[fam(a.addr)] = true
		}
	}
	var srcs []netip.Addr
	for _, a := range cand {
		if !a.deprecated || !preferred[fam(a.addr)] {
			srcs = append(srcs, a.addr)
		}
	}
	slices.SortFunc(srcs, netip.Addr.Compare)
	return slices.Compact(srcs)
}

func fam(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

// keeps reports whether a passes the filter and can be a source now.
func (s *followState) keeps(a hostAddr) bool {
	c := &s.f.cfg
	switch {
	case a.tentative, a.addr.Is6() && a.addr.IsLinkLocalUnicast(), a.addr.IsMulticast(), a.addr.IsUnspecified():
		return false
	case c.Network == "ip4" && !a.addr.Is4(), c.Network == "ip6" && !a.addr.Is6():
		return false
	case a.addr.IsLoopback() && c.Interface == "" && len(c.Prefixes) == 0:
		return false
	case len(c.Prefixes) > 0 && !slices.ContainsFunc(c.Prefixes, func(p netip.Prefix) bool { return p.Contains(a.addr) }):
		return false
	}
	return c.Interface == "" || s.name(a.index) == c.Interface
}

// name returns the name of interface index, "" if it is gone.
func (s *followState) name(index int) string {
	if n, ok := s.names[index]; ok {
		return n
	}
	n := ""
	if ifi, err := net.InterfaceByIndex(index); err == nil {
		n = ifi.Name
	}
	s.names[index] = n
	return n
}

func (c *FollowConfig) describe() string {
	var parts []string
	if c.Interface != "" {
		parts = append(parts, "on interface "+c.Interface)
	}
	if len(c.Prefixes) > 0 {
		parts = append(parts, fmt.Sprintf("within %v", c.Prefixes))
	}
	switch c.Network {
	case "ip4":
		parts = append(parts, "IPv4")
	case "ip6":
		parts = append(parts, "IPv6 (past duplicate address detection)")
	}
	if len(parts) == 0 {
		return "any"
	}
	return strings.Join(parts, ", ")
}

// noMatchError is a Follower's error while no address matches.
type noMatchError struct{ what string }

func (e *noMatchError) Error() string {
	return "safedial: no address of this host matches the follower's filter (" + e.what +
		"), so there is no source to dial from; add one (ip addr add) or widen the FollowConfig"
}

func (e *noMatchError) Is(target error) bool { return target == ErrSourceNotLocal }
