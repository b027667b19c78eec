package safedial

// WithoutCgroupCond makes the TCP probes act as on a kernel without
// INET_DIAG_BC_CGROUP_COND (before Linux 5.9) until restore is called.
func WithoutCgroupCond() (restore func()) {
	was := noCgroupCond.Load()
	noCgroupCond.Store(true)
	return func() { noCgroupCond.Store(was) }
}

// ForgetIdlePorts drops the cached ports of bound-inactive TCP sockets, as a
// second's wait would.
func ForgetIdlePorts() {
	idleCache.mu.Lock()
	defer idleCache.mu.Unlock()
	idleCache.set = nil
}
