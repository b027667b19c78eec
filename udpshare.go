package safedial

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// sharedFull is the exhaustion of a shared UDP dial: connect's EAGAIN, as
// the kernel reports a UDP range with no port left, and what held the ports
// of the range when the dial gave up.
type sharedFull struct {
	err  *os.SyscallError
	held Headroom
}

func (e *sharedFull) Error() string { return e.err.Error() }
func (e *sharedFull) Unwrap() error { return e.err }

// errClaimsInFlight is what a shared dial from one source of a pool returns
// instead of waiting when its candidates are held only by claims in flight
// (bound, not yet connected): the pool tries its other sources first, and
// comes back for these only when none can take the dial now. It never
// leaves the package.
var errClaimsInFlight = errors.New("safedial: the candidate ports are held by claims in flight")

// claimsPatience is how long a port may look held by a claim in flight
// before a dial counts it as held (shareStale on Linux): a claim takes well
// under a millisecond.
const claimsPatience = time.Second

// heldBy returns what held the ports of a shared dial's exhaustion, or nil.
func heldBy(err error) *Headroom {
	var f *sharedFull
	if errors.As(err, &f) {
		h := f.held
		return &h
	}
	return nil
}

// notPool clears ExhaustedError.Tried in the error of a dial outside a
// pool, where it has no meaning.
func notPool(out outcome) outcome {
	var ee *ExhaustedError
	if errors.As(out.err, &ee) {
		ee.Tried = nil
	}
	return out
}

// heldText says what holds the ports of a shared exhaustion.
func heldText(h *Headroom) string {
	var parts []string
	if h.InUse > 0 {
		parts = append(parts, fmt.Sprintf("%d in use toward this destination", h.InUse))
	}
	if h.Bound > 0 {
		parts = append(parts, fmt.Sprintf("%d held for every destination by UDP sockets a shared port cannot join (plain or another user's sockets, wildcard binds)", h.Bound))
	}
	if h.Reserved > 0 {
		parts = append(parts, fmt.Sprintf("%d never handed out (net.ipv4.ip_local_reserved_ports, or outside the namespace range)", h.Reserved))
	}
	if h.Free > 0 {
		parts = append(parts, fmt.Sprintf("%d taken by concurrent dials while this one searched", h.Free))
	}
	return strings.Join(parts, ", ")
}
