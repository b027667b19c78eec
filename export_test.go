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

// WithoutCgroupCond makes the TCP probes act as on a kernel without
// INET_DIAG_BC_CGROUP_COND (before Linux 5.9) until restore is called.
func WithoutCgroupCond() (restore func()) {
	was := noCgroupCond.Load()
	noCgroupCond.Store(true)
	return func() { noCgroupCond.Store(was) }
}
