package safedial

// SetFollowRcvBuf sets the receive buffer of the sockets of Followers made
// from now on (0: the system's) until restore is called.
func SetFollowRcvBuf(n int) (restore func()) {
	was := followRcvBuf
	followRcvBuf = n
	return func() { followRcvBuf = was }
}

// Relists returns how often f listed the host's addresses again after the
// kernel dropped events.
func (f *Follower) Relists() uint64 { return f.relist.Load() }
