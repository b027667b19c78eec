package safedial

import (
	"syscall"
	"testing"
	"time"
)

// TestRefusalMemory: a refusal meaning the kernel lacks the option is
// remembered for good (no failing system call on every dial); a permission
// refusal is retried after refusalRetry; the first refusal is what messages
// name.
func TestRefusalMemory(t *testing.T) {
	advance, restore := StopClock()
	defer restore()
	for _, tc := range []struct {
		errno syscall.Errno
		retry bool
	}{
		{syscall.ENOPROTOOPT, false}, {syscall.EOPNOTSUPP, false}, {syscall.EINVAL, false},
		{syscall.EPERM, true}, {syscall.EACCES, true},
	} {
		o := &optional{bit: 1, name: "OPT", cost: "it costs"}
		if o.refused() {
			t.Fatalf("%v: refused before any refusal", tc.errno)
		}
		o.refuse(tc.errno)
		o.refuse(syscall.ENOMEM) // a later refusal does not replace the first in messages
		if !o.refused() {
			t.Errorf("%v: not remembered", tc.errno)
		}
		if got, want := o.first.Load().Error(), "OPT was refused by this system (setsockopt: "+tc.errno.Error()+"): it costs"; got != want {
			t.Errorf("%v: message %q, want %q", tc.errno, got, want)
		}
		o.refuse(tc.errno)
		advance(int64(refusalRetry + time.Second))
		if got := o.refused(); got == tc.retry {
			t.Errorf("%v: refused after %v = %v, want %v", tc.errno, refusalRetry, got, !tc.retry)
		}
	}
}
