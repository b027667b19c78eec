package safedial

// StopClock freezes the clock the pool's memory of full sources reads, so
// that tests count skips and re-probes exactly; advance moves it on. The
// returned func restores the real clock.
func StopClock() (advance func(ns int64), restore func()) {
	real := nanotime
	now := real()
	nanotime = func() int64 { return now }
	return func(ns int64) { now += ns }, func() { nanotime = real }
}

// FullTTL is how long a full source is skipped, in nanoseconds.
const FullTTL = int64(fullTTL)
