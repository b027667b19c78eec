package safedial

import (
	"net/netip"
	"time"

	"github.com/safedial/safedial/internal/sysctl"
)

// The sysctls themselves are read by internal/sysctl; what they mean for a
// probe is here.

// twReuse is what the kernel's tcp_twsk_unique needs to reuse a TIME_WAIT
// 4-tuple for a new outgoing connection: net.ipv4.tcp_tw_reuse (0 never, 1
// always, 2 when the source or the destination is a loopback address),
// timestamps (net.ipv4.tcp_timestamps, and the peer's, which the probe
// cannot see: it assumes them), and a TIME_WAIT socket older than
// net.ipv4.tcp_tw_reuse_delay (milliseconds, Linux 6.13+). Older kernels
// compare the second of the last timestamp received plus one with the
// current second, which means between one and two seconds: the probe waits
// the two, so that it never calls a port free that the kernel would not
// reuse yet.
type twReuse struct {
	mode  int           // tcp_tw_reuse
	delay time.Duration // age past which a TIME_WAIT socket is reusable
}

func readTWReuse() twReuse {
	mode, ok := sysctl.Int("net/ipv4/tcp_tw_reuse")
	if !ok {
		mode = 2 // the kernel's default since 4.19
	}
	if ts, ok := sysctl.Int("net/ipv4/tcp_timestamps"); ok && ts == 0 {
		mode = 0 // without timestamps nothing is reused
	}
	delay := 2 * time.Second
	if ms, ok := sysctl.Int("net/ipv4/tcp_tw_reuse_delay"); ok {
		delay = time.Duration(ms) * time.Millisecond
	}
	return twReuse{mode: mode, delay: delay}
}

// reuses reports whether the kernel reuses the TIME_WAIT sockets from src to
// dst (old enough) for new outgoing connections.
func (t twReuse) reuses(src, dst netip.Addr) bool {
	switch t.mode {
	case 1:
		return true
	case 2:
		return src.Unmap().IsLoopback() || dst.Unmap().IsLoopback()
	}
	return false
}
