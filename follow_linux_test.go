package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// ip runs ip(8) with args and fails the test if it fails.
func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// veth makes a veth pair, name and name+"p", both up. (A veth rather than a
// dummy link: the dummy module may be missing, and DAD does not run on it.)
func veth(t *testing.T, name string) {
	t.Helper()
	ip(t, "link", "add", name, "type", "veth", "peer", "name", name+"p")
	ip(t, "link", "set", name+"p", "up")
	ip(t, "link", "set", name, "up")
}

// changes records what a Follower's OnChange reports.
type changes struct {
	mu   sync.Mutex
	last []netip.Addr
	at   time.Time // of the last change
	n    int
	seen chan struct{} // a token after each change
	// check, when set, runs on each change (on the follower's goroutine).
	check func(srcs []netip.Addr)
}

func (c *changes) setCheck(f func(srcs []netip.Addr)) {
	c.mu.Lock()
	c.check = f
	c.mu.Unlock()
}

func newChanges() *changes { return &changes{seen: make(chan struct{}, 1)} }

func (c *changes) on(srcs []netip.Addr) {
	c.mu.Lock()
	check := c.check
	c.mu.Unlock()
	if check != nil {
		check(srcs)
	}
	c.mu.Lock()
	c.last, c.at = srcs, time.Now()
	c.n++
	c.mu.Unlock()
	select {
	case c.seen <- struct{}{}:
	default:
	}
}

// wait waits until the follower's sources are want, and returns when that
// change was reported. 20 s is a bound, not a pace.
func (c *changes) wait(t *testing.T, want ...string) time.Time {
	t.Helper()
	w := addrs(want...)
	timer := time.NewTimer(20 * time.Second)
	defer timer.Stop()
	for {
		c.mu.Lock()
		last, at := c.last, c.at
		c.mu.Unlock()
		if slices.Equal(last, w) {
			return at
		}
		select {
		case <-c.seen:
		case <-timer.C:
			t.Fatalf("follower's sources: %v, want %v (20 s passed)", last, w)
		}
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// follow starts a follower of cfg until the test ends, its changes recorded.
func follow(t *testing.T, cfg safedial.FollowConfig) (*safedial.Follower, *changes) {
	t.Helper()
	ch := newChanges()
	cfg.OnChange = ch.on
	ctx, cancel := context.WithCancel(context.Background())
	f, err := cfg.Follow(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-f.Done() })
	return f, ch
}

// localOf returns the source of c, as getsockname(2) says.
func localOf(t *testing.T, c net.Conn) netip.Addr {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var serr error
	rc.Control(func(fd uintptr) { sa, serr = unix.Getsockname(int(fd)) })
	if serr != nil {
		t.Fatal(serr)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrFrom4(sa.Addr)
	case *unix.SockaddrInet6:
		return netip.AddrFrom16(sa.Addr)
	}
	t.Fatalf("getsockname: %T", sa)
	return netip.Addr{}
}

// TestFollowAddDelete: an address added to the interface takes its share of
// the dials as soon as the follower has seen it; one deleted while dials run
// takes none after its removal is seen, and no dial fails meanwhile.
func TestFollowAddDelete(t *testing.T) {
	inNamespace(t, 0, 0, func(t *testing.T) {
		veth(t, "eth9")
		ip(t, "addr", "add", "198.18.0.1/32", "dev", "eth9")
		ip(t, "addr", "add", "198.18.0.2/32", "dev", "eth9")
		dst := servers(t, "tcp", []string{"127.0.0.1"}, []int{0})[0]

		f, ch := follow(t, safedial.FollowConfig{Interface: "eth9"})
		ch.wait(t, "198.18.0.1", "198.18.0.2")
		d := &safedial.Dialer{GetSources: f.GetSources}
		count := func(n int) map[netip.Addr]int {
			got := map[netip.Addr]int{}
			for range n {
				c, err := d.Dial("tcp", dst)
				if err != nil {
					t.Fatal(err)
				}
				got[localOf(t, c)]++
				c.Close()
			}
			return got
		}

		start := time.Now()
		ip(t, "addr", "add", "198.18.0.3/32", "dev", "eth9")
		seen := ch.wait(t, "198.18.0.1", "198.18.0.2", "198.18.0.3")
		t.Logf("an added address joined the pool %v after ip addr add began", seen.Sub(start))
		want := map[netip.Addr]int{}
		for _, a := range addrs("198.18.0.1", "198.18.0.2", "198.18.0.3") {
			want[a] = 10
		}
		if diff := cmp.Diff(want, count(30)); diff != "" {
			t.Errorf("sources of 30 dials after the add (-want +got):\n%s", diff)
		}

		// Delete 198.18.0.2 while four goroutines dial.
		gone := netip.MustParseAddr("198.18.0.2")
		var removed atomic.Bool
		var failed, after, fromGone, total atomic.Int64
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					seenBefore := removed.Load()
					c, err := d.Dial("tcp", dst)
					if err != nil {
						failed.Add(1)
						t.Errorf("dial during the removal: %v", err)
						return
					}
					total.Add(1)
					if seenBefore {
						after.Add(1)
						if c.LocalAddr().(*net.TCPAddr).AddrPort().Addr() == gone {
							fromGone.Add(1)
						}
					}
					c.Close()
				}
			}()
		}
		ch.setCheck(func(srcs []netip.Addr) {
			if !slices.Contains(srcs, gone) {
				removed.Store(true)
			}
		})
		ip(t, "addr", "del", "198.18.0.2/32", "dev", "eth9")
		ch.wait(t, "198.18.0.1", "198.18.0.3")
		for after.Load() < 400 && failed.Load() == 0 {
			runtime.Gosched()
		}
		close(stop)
		wg.Wait()
		t.Logf("%d dials while deleting, %d after the removal was seen, %d failed, %d of those after from the deleted source",
			total.Load(), after.Load(), failed.Load(), fromGone.Load())
		if fromGone.Load() != 0 {
			t.Errorf("%d dials begun after the removal was seen came from the deleted address", fromGone.Load())
		}
		t.Logf("Dialer stats after the delete: %+v", d.Stats())
		if st := f.Pool().Stats(); len(st) != 2 {
			t.Errorf("pool stats after the delete: %+v, want two sources", st)
		}
	})
}

// TestFollowIPv6DAD: an IPv6 address joins only once duplicate address
// detection has passed (every set the follower hands out binds), and a
// deprecated one leaves while a preferred one remains.
func TestFollowIPv6DAD(t *testing.T) {
	inNamespace(t, 0, 0, func(t *testing.T) {
		veth(t, "veth0") // DAD runs on a veth link (not on lo)
		_, ch := follow(t, safedial.FollowConfig{Interface: "veth0", Network: "ip6"})
		var bad atomic.Value
		ch.setCheck(func(srcs []netip.Addr) {
			for _, a := range srcs {
				fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					continue
				}
				if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: a.As16()}); err != nil {
					bad.Store(fmt.Sprintf("%v handed out while bind says %v (tentative?)", a, err))
				}
				unix.Close(fd)
			}
		})
		ip(t, "addr", "add", "2001:db8::1/64", "dev", "veth0")
		out, _ := exec.Command("ip", "-6", "addr", "show", "dev", "veth0").CombinedOutput()
		if !strings.Contains(string(out), "tentative") {
			t.Fatalf("2001:db8::1 is not tentative right after ip addr add, so DAD does not run and this test proves nothing:\n%s", out)
		}
		ch.wait(t, "2001:db8::1")
		ip(t, "addr", "add", "2001:db8::2/64", "dev", "veth0")
		ch.wait(t, "2001:db8::1", "2001:db8::2")
		if b := bad.Load(); b != nil {
			t.Fatal(b)
		}

		ip(t, "addr", "change", "2001:db8::1/64", "dev", "veth0", "preferred_lft", "0")
		ch.wait(t, "2001:db8::2")
		// With no preferred address left, the deprecated ones are better
		// than none.
		ip(t, "addr", "change", "2001:db8::2/64", "dev", "veth0", "preferred_lft", "0")
		ch.wait(t, "2001:db8::1", "2001:db8::2")
		ip(t, "addr", "change", "2001:db8::1/64", "dev", "veth0", "preferred_lft", "forever")
		ch.wait(t, "2001:db8::1")
	})
}

// TestFollowBurst: 1,000 add and delete events in a burst, through a socket
// buffer small enough that the kernel drops events (ENOBUFS): the follower
// re-lists, its final set is exact, and once its context ends no goroutine
// or descriptor of it is left.
func TestFollowBurst(t *testing.T) {
	inNamespace(t, 0, 0, func(t *testing.T) {
		veth(t, "eth9")
		goroutines, fds := runtime.NumGoroutine(), countFDs(t)
		defer safedial.SetFollowRcvBuf(4096)()

		ch := newChanges()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f, err := (&safedial.FollowConfig{Interface: "eth9", OnChange: ch.on}).Follow(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var batch strings.Builder
		var want []string
		for i := range 600 {
			fmt.Fprintf(&batch, "addr add 198.18.%d.%d/32 dev eth9\n", i/200, i%200+1)
		}
		for i := range 600 {
			if i%3 == 0 {
				want = append(want, fmt.Sprintf("198.18.%d.%d", i/200, i%200+1))
			} else {
				fmt.Fprintf(&batch, "addr del 198.18.%d.%d/32 dev eth9\n", i/200, i%200+1)
			}
		}
		cmd := exec.Command("ip", "-batch", "-")
		cmd.Stdin = strings.NewReader(batch.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ip -batch: %v: %s", err, out)
		}
		slices.SortFunc(want, func(a, b string) int { return netip.MustParseAddr(a).Compare(netip.MustParseAddr(b)) })
		ch.wait(t, want...)
		t.Logf("1,000 events: %d changes reported, %d re-lists after ENOBUFS", ch.n, f.Relists())
		if f.Relists() == 0 {
			t.Errorf("no re-list with a 4 KiB buffer and 1,000 events: the overrun path went untested")
		}

		cancel()
		<-f.Done()
		if err := f.Err(); err != context.Canceled {
			t.Errorf("Err after cancel: %v, want context.Canceled", err)
		}
		if got := countFDs(t); got != fds {
			t.Errorf("descriptors: %d before Follow, %d after it stopped", fds, got)
		}
		for end := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > goroutines; {
			if time.Now().After(end) {
				t.Fatalf("goroutines: %d before Follow, %d 10 s after it stopped", goroutines, runtime.NumGoroutine())
			}
			runtime.Gosched()
		}
		// The last pool stays after the follower stopped.
		if p, err := f.GetSources(ctx, "tcp", "127.0.0.1:1"); err != nil || len(p.Addrs()) != 200 {
			t.Errorf("GetSources after stop: %v, %v", p, err)
		}
	})
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestFollowCapacity: with the kernel as the judge, a followed pool holds
// exactly sources x ports connections; an address added then carries its own
// range's worth more, and once the interface is gone a dial fails with
// ErrSourceNotLocal, saying no address matches.
func TestFollowCapacity(t *testing.T) {
	inNamespace(t, 40000, 40019, func(t *testing.T) {
		veth(t, "eth9")
		ip(t, "addr", "add", "198.18.0.1/32", "dev", "eth9")
		ip(t, "addr", "add", "198.18.0.2/32", "dev", "eth9")
		dst := servers(t, "tcp", []string{"127.0.0.1"}, []int{9000})[0]
		f, ch := follow(t, safedial.FollowConfig{Interface: "eth9", Network: "ip4"})
		ch.wait(t, "198.18.0.1", "198.18.0.2")
		d := &safedial.Dialer{GetSources: f.GetSources}
		var held []net.Conn
		t.Cleanup(func() {
			for _, c := range held {
				c.Close()
			}
		})
		fill := func() (int, error) {
			n := 0
			for {
				c, err := d.Dial("tcp", dst)
				if err != nil {
					return n, err
				}
				held = append(held, c)
				n++
			}
		}
		n, err := fill()
		var ee *safedial.ExhaustedError
		if n != 40 || !errors.As(err, &ee) || len(ee.Tried) != 2 {
			t.Fatalf("two sources, 20 ports: %d connections, then %v; want 40, then exhaustion naming both sources", n, err)
		}
		ip(t, "addr", "add", "198.18.0.3/32", "dev", "eth9")
		ch.wait(t, "198.18.0.1", "198.18.0.2", "198.18.0.3")
		if n, err := fill(); n != 20 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Fatalf("after adding a third source: %d more connections, then %v; want 20, then exhaustion", n, err)
		}
		out, err := exec.Command("ss", "-Htn", "state", "established", "src", "198.18.0.0/24").Output()
		if err != nil {
			t.Fatalf("ss: %v", err)
		}
		bySrc := map[string]int{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if f := strings.Fields(line); len(f) >= 3 {
				host, _, _ := net.SplitHostPort(f[2])
				bySrc[host]++
			}
		}
		if diff := cmp.Diff(map[string]int{"198.18.0.1": 20, "198.18.0.2": 20, "198.18.0.3": 20}, bySrc); diff != "" {
			t.Errorf("established connections by source, per ss (-want +got):\n%s", diff)
		}
		ip(t, "link", "del", "eth9")
		ch.wait(t)
		if _, err := d.Dial("tcp", dst); !errors.Is(err, safedial.ErrSourceNotLocal) || !strings.Contains(err.Error(), "no address of this host matches") {
			t.Errorf("dial once the interface is gone: %v, want ErrSourceNotLocal saying no address matches", err)
		}
	})
}

// TestFollowFilter: what each filter keeps, from the listing Follow makes
// before it returns; loopback only when asked for, IPv6 link-local never.
func TestFollowFilter(t *testing.T) {
	inNamespace(t, 0, 0, func(t *testing.T) {
		veth(t, "eth9")
		ip(t, "addr", "add", "198.18.0.1/32", "dev", "eth9")
		ip(t, "addr", "add", "198.18.1.1/32", "dev", "eth9")
		ip(t, "addr", "add", "2001:db8::1/64", "dev", "eth9", "nodad")
		ip(t, "addr", "add", "fe80::99/64", "dev", "eth9", "nodad")
		for _, tc := range []struct {
			cfg  safedial.FollowConfig
			want []netip.Addr
		}{
			{safedial.FollowConfig{}, addrs("198.18.0.1", "198.18.1.1", "2001:db8::1")},
			{safedial.FollowConfig{Interface: "eth9", Network: "ip4"}, addrs("198.18.0.1", "198.18.1.1")},
			{safedial.FollowConfig{Prefixes: []netip.Prefix{netip.MustParsePrefix("198.18.1.0/24")}}, addrs("198.18.1.1")},
			{safedial.FollowConfig{Network: "ip6"}, addrs("2001:db8::1")},
			{safedial.FollowConfig{Interface: "lo"}, addrs("127.0.0.1", "::1")},
			{safedial.FollowConfig{Interface: "eth10"}, nil},
		} {
			ctx, cancel := context.WithCancel(context.Background())
			f, err := tc.cfg.Follow(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, f.Pool().Addrs(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("%+v: sources (-want +got):\n%s", tc.cfg, diff)
			}
			cancel()
			<-f.Done()
		}
		for _, cfg := range []safedial.FollowConfig{{Network: "tcp"}, {Prefixes: []netip.Prefix{{}}}} {
			if _, err := cfg.Follow(context.Background()); !errors.Is(err, safedial.ErrInvalidConfig) {
				t.Errorf("%+v: %v, want ErrInvalidConfig", cfg, err)
			}
		}
	})
}

// TestFollowInterfaceRenamed: a follower of an interface's name follows
// renames. veth0 (198.18.0.1) is renamed veth9 and vethx (198.18.1.1) takes
// the name veth0: the sources become vethx's address, and an address added
// to veth9 later stays out. Before the follower watched link events it kept
// the renamed interface's addresses (the name was cached by index) and never
// took the new veth0's.
func TestFollowInterfaceRenamed(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		veth(t, "veth0")
		veth(t, "vethx")
		ip(t, "addr", "add", "198.18.0.1/24", "dev", "veth0")
		ip(t, "addr", "add", "198.18.1.1/24", "dev", "vethx")
		_, ch := follow(t, safedial.FollowConfig{Interface: "veth0", Network: "ip4"})
		ch.wait(t, "198.18.0.1")
		ip(t, "link", "set", "veth0", "down")
		ip(t, "link", "set", "veth0", "name", "veth9")
		ip(t, "link", "set", "veth9", "up")
		ip(t, "link", "set", "vethx", "down")
		ip(t, "link", "set", "vethx", "name", "veth0")
		ip(t, "link", "set", "veth0", "up")
		ch.wait(t, "198.18.1.1")
		ip(t, "addr", "add", "198.18.2.1/24", "dev", "veth9")
		ip(t, "addr", "add", "198.18.1.2/24", "dev", "veth0")
		ch.wait(t, "198.18.1.1", "198.18.1.2")
	})
}
