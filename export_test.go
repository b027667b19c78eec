package safedial

// StopClock freezes safedial's monotonic clock (the refusal memory and the
// namespace range cache read it), so that tests count exactly; advance moves
// it on. The returned func restores the real clock.
func StopClock() (advance func(ns int64), restore func()) {
	real := nanotime
	now := real()
	nanotime = func() int64 { return now }
	return func(ns int64) { now += ns }, func() { nanotime = real }
}

// FullTTL is how long a pool's mark of a full source orders it last.
const FullTTL = fullTTL
