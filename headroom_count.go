package safedial

import (
	"slices"

	"github.com/safedial/safedial/internal/sysctl"
)

// How a probe counts the ports of a range, from what the kernel showed
// (headroom_linux.go): each port once, in the first of InUse, TimeWait,
// Reserved, Bound that applies, and Free for the rest.

// portSet is a set of ports, one bit each.
type portSet = sysctl.PortSet

// pairPorts is what the kernel's tables show of one pair's ports of a range.
type pairPorts struct {
	live     []uint16 // ports of the pair's sockets not in TIME_WAIT
	tw       []uint16 // ports of its TIME_WAIT sockets the kernel will not reuse now
	old      []uint16 // ports of its TIME_WAIT sockets old enough to be reused when reusable
	reusable bool     // the kernel reuses this pair's TIME_WAIT 4-tuples (tcp_tw_reuse)
}

// hostPorts is what holds ports of a range whatever the pair.
type hostPorts struct {
	r         PortRange
	reserved  *portSet // net.ipv4.ip_local_reserved_ports
	bound     *portSet // ports a bind() took (TCP); nil for UDP
	nReserved int      // ports of r in reserved
	nBound    int      // ports of r in bound and not in reserved
	// unreached are ports of which connect()'s search may skip one (see
	// connectSearch): when one is free, Free counts one less.
	unreached []uint16
}

// fill sets h's counts for the pair p, each port of the range counted once:
// InUse, then TimeWait, Reserved, Bound, and Free for the rest.
func (host *hostPorts) fill(h *Headroom, p *pairPorts) {
	reserved, bound := host.nReserved, host.nBound
	take := func(port uint16) { // a port counted before Reserved and Bound
		switch {
		case host.reserved.Has(port):
			reserved--
		case host.bound.Has(port):
			bound--
		}
	}
	live, young, old := uniq(p.live), uniq(p.tw), uniq(p.old)
	has := func(ps []uint16, port uint16) bool { _, ok := slices.BinarySearch(ps, port); return ok }
	for _, port := range live {
		take(port)
	}
	h.InUse = len(live)
	for _, port := range young {
		if !has(live, port) {
			h.TimeWait++
			take(port)
		}
	}
	// An old enough TIME_WAIT port is reused when the kernel reuses the
	// pair's, and never when connect() skips the port anyway.
	for _, port := range old {
		switch {
		case has(live, port), has(young, port):
		case p.reusable && !host.reserved.Has(port) && !host.bound.Has(port):
			// Free
		default:
			h.TimeWait++
			take(port)
		}
	}
	for _, port := range host.unreached {
		if !has(live, port) && !has(young, port) && !host.reserved.Has(port) && !host.bound.Has(port) &&
			(!has(old, port) || p.reusable) {
			reserved++ // free, but connect() may never try it
			break
		}
	}
	h.Reserved, h.Bound = reserved, bound
	h.Free = max(host.r.size()-h.InUse-h.TimeWait-reserved-bound, 0)
	h.TimeWaitReusable = p.reusable
}

// uniq sorts ps and returns its distinct ports, in place.
func uniq(ps []uint16) []uint16 {
	slices.Sort(ps)
	return slices.Compact(ps)
}
