//go:build linux

package safedial_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// Tests of issue 24: claims in flight, a link-local address on two links,
// no bind of port 0, settings read fresh, and the lock of a 4-tuple's
// claims across processes.

// inFlightDialer dials from 127.0.0.1 with ShareUDPPorts in a one-port
// range, so that one claim in flight holds every candidate.
func inFlightDialer() *safedial.Dialer {
	return &safedial.Dialer{ShareUDPPorts: true, PortRange: safedial.PortRange{Lo: 40000, Hi: 40000},
		Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
}

// pauseFirstClaim makes the first claim that gets to connect wait, once
// bound, until resume is closed; paused is closed when it waits.
func pauseFirstClaim(t *testing.T) (paused, resume chan struct{}) {
	paused, resume = make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(safedial.BeforeSharedConnect(func(int, uint16) {
		once.Do(func() {
			close(paused)
			<-resume
		})
	}))
	return paused, resume
}

type dialResult struct {
	c   net.Conn
	err error
}

func dialAsync(d *safedial.Dialer, dst string) <-chan dialResult {
	out := make(chan dialResult, 1)
	go func() {
		c, err := d.Dial("udp", dst)
		out <- dialResult{c, err}
	}()
	return out
}

// TestShareUDPPortsInFlight (issue 24, item 1): while the only port of the
// range is held by a claim toward another peer, paused between bind and
// connect, a dial toward a second peer waits for it under its context
// instead of reporting exhaustion, then shares the port; with a deadline
// shorter than the pause it returns its deadline's error; a claim that
// stays in flight for a second counts as a port held for good.
func TestShareUDPPortsInFlight(t *testing.T) {
	t.Run("waits", func(t *testing.T) {
		inNamespace(t, 40000, 40031, func(t *testing.T) {
			dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
			d := inFlightDialer()
			paused, resume := pauseFirstClaim(t)
			var waits atomic.Int32
			defer safedial.ShareWaiting(func() {
				if waits.Add(1) == 1 {
					close(resume) // the second dial waits: let the first go on
				}
			})()
			first := dialAsync(d, dsts[0])
			<-paused
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := d.DialContext(ctx, "udp", dsts[1])
			if err != nil {
				t.Fatalf("dial toward %s while a claim toward %s holds the only port: %v, want a connection", dsts[1], dsts[0], err)
			}
			a := <-first
			if a.err != nil {
				t.Fatalf("the paused dial: %v", a.err)
			}
			conns := []net.Conn{a.c, c}
			for _, c := range conns {
				if p := addrPortOf(c.LocalAddr()).Port(); p != 40000 {
					t.Errorf("%v -> %v: port %d, want 40000", c.LocalAddr(), c.RemoteAddr(), p)
				}
			}
			if waits.Load() == 0 {
				t.Error("the second dial never waited for the claim in flight")
			}
			checkUDP(t, conns)
		})
	})
	t.Run("deadline", func(t *testing.T) {
		inNamespace(t, 40000, 40031, func(t *testing.T) {
			dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
			d := inFlightDialer()
			paused, resume := pauseFirstClaim(t)
			first := dialAsync(d, dsts[0])
			<-paused
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_, err := d.DialContext(ctx, "udp", dsts[1])
			cancel()
			var ne net.Error
			if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() || errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Errorf("dial while the claim in flight outlasts its deadline: %v, want its deadline's error (Timeout), not exhaustion", err)
			}
			close(resume)
			if a := <-first; a.err != nil {
				t.Errorf("the paused dial: %v", a.err)
			} else {
				a.c.Close()
			}
		})
	})
	t.Run("stale", func(t *testing.T) {
		inNamespace(t, 40000, 40031, func(t *testing.T) {
			dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
			d := inFlightDialer()
			paused, resume := pauseFirstClaim(t)
			first := dialAsync(d, dsts[0])
			<-paused
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := d.DialContext(ctx, "udp", dsts[1])
			cancel()
			var ee *safedial.ExhaustedError
			if !errors.As(err, &ee) || ee.Held == nil || ee.Held.Bound != 1 {
				t.Errorf("dial while a claim stays in flight past a second: %v, want exhaustion with the port held (Bound 1)", err)
			}
			close(resume)
			if a := <-first; a.err != nil {
				t.Errorf("the paused dial: %v", a.err)
			} else {
				a.c.Close()
			}
		})
	})
}

// TestShareUDPPortsTwoLinks (issue 24, item 2): fe80::1 on two links (veth pairs) holds
// a full range toward fe80::2 on each, as the kernel allows (checked first
// with net.Dialer), and each link's exhaustion counts its own sockets only.
func TestShareUDPPortsTwoLinks(t *testing.T) {
	inNamespace(t, 40000, 40015, func(t *testing.T) {
		twoLinks(t)
		fill := func(dial func(ctx context.Context, network, address string) (net.Conn, error), link string) ([]net.Conn, error) {
			return fillConns(t, dial, "udp", []string{"[fe80::2%" + link + "]:53"}, 100)
		}
		src := func(link string) *net.UDPAddr { return &net.UDPAddr{IP: net.ParseIP("fe80::1"), Zone: link} }
		// The kernel's answer: each link holds the range (16) for any
		// destination.
		var plain []net.Conn
		for _, link := range []string{"a0", "b0"} {
			conns, err := fill((&net.Dialer{LocalAddr: src(link)}).DialContext, link)
			if len(conns) != 16 || err == nil {
				t.Fatalf("net.Dialer from fe80::1%%%s: %d sockets, %v; want 16, then an error", link, len(conns), err)
			}
			plain = append(plain, conns...)
		}
		for _, c := range plain {
			c.Close()
		}
		for _, link := range []string{"a0", "b0"} {
			d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: src(link)}}
			hs, err := d.Headroom(context.Background(), "udp", "[fe80::2%"+link+"]:53")
			if err != nil || len(hs) != 1 || hs[0].Free != 16 {
				t.Errorf("Headroom from fe80::1%%%s before its dials: %+v, %v; want 16 free", link, hs, err)
			}
			conns, err := fill(d.DialContext, link)
			var ee *safedial.ExhaustedError
			if len(conns) != 16 || !errors.As(err, &ee) || ee.Held == nil || ee.Held.InUse != 16 {
				t.Errorf("ShareUDPPorts from fe80::1%%%s: %d sockets, then %v; want 16, then exhaustion with 16 in use", link, len(conns), err)
			}
			for _, c := range conns {
				if z := c.LocalAddr().(*net.UDPAddr).Zone; z != link {
					t.Errorf("socket %v on zone %q, want %q", c.LocalAddr(), z, link)
				}
			}
		}
	})
}

// twoLinks gives fe80::1 to two new links, a0 and b0 (veth pairs).
func twoLinks(t *testing.T) {
	t.Helper()
	needIPv6(t)
	if _, err := exec.LookPath("ip"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("iproute2's ip is needed to add links (CI=true, so this fails instead of skipping): %v", err)
		}
		t.Skipf("iproute2's ip is needed to add links: %v", err)
	}
	for _, link := range []string{"a0", "b0"} {
		for _, args := range [][]string{
			{"link", "add", link, "type", "veth", "peer", "name", link + "p"},
			{"link", "set", link + "p", "up"},
			{"link", "set", link, "up"},
			{"-6", "addr", "add", "fe80::1/64", "dev", link, "nodad"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
		waitLocal(t, "fe80::1", "oif", link)
	}
}

// TestShareUDPPortsTwoLinksUnbound (issue 24, item 2): without a source,
// a shared dial to fe80::2%a0 leaves from fe80::1 on a0, as the kernel's
// connect picks, and each link holds the full range toward its peer
// (failed with "bind: invalid argument": the routed source lost the
// zone); Headroom names the source with its link.
func TestShareUDPPortsTwoLinksUnbound(t *testing.T) {
	inNamespace(t, 40000, 40015, func(t *testing.T) {
		twoLinks(t)
		d := &safedial.Dialer{ShareUDPPorts: true}
		for _, link := range []string{"a0", "b0"} {
			dst := "[fe80::2%" + link + "]:53"
			hs, err := d.Headroom(context.Background(), "udp", dst)
			if want := netip.MustParseAddr("fe80::1%" + link); err != nil || len(hs) != 1 || hs[0].Source != want || hs[0].Free != 16 {
				t.Errorf("Headroom toward %s: %+v, %v; want 16 free from %v", dst, hs, err, want)
			}
			conns, err := fillConns(t, d.DialContext, "udp", []string{dst}, 100)
			var ee *safedial.ExhaustedError
			if len(conns) != 16 || !errors.As(err, &ee) || ee.Held == nil || ee.Held.InUse != 16 {
				t.Errorf("ShareUDPPorts toward %s: %d sockets, then %v; want 16, then exhaustion with 16 in use", dst, len(conns), err)
			}
			for _, c := range conns {
				if a := c.LocalAddr().(*net.UDPAddr); a.Zone != link || !a.IP.Equal(net.ParseIP("fe80::1")) {
					t.Errorf("socket from %v, want fe80::1%%%s", a, link)
				}
			}
		}
	})
}

// TestShareUDPPortsNoPortZero (issue 24, item 3): an exhausted search never
// tries port 0 (a bind to port 0 lets the kernel choose a port, possibly
// one a same-user SO_REUSEPORT receiver holds), with or without a recent
// dump of the pair.
func TestShareUDPPortsNoPortZero(t *testing.T) {
	inNamespace(t, 40000, 40007, func(t *testing.T) {
		dst := udpEcho(t, "127.0.0.2:9000")
		var mu sync.Mutex
		tried := map[uint16]int{}
		defer safedial.SharedCandidates(func(p uint16) {
			mu.Lock()
			tried[p]++
			mu.Unlock()
		})()
		for _, d := range []*safedial.Dialer{
			{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}},
			{ShareUDPPorts: true, DisableBindNoPort: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}},
		} {
			conns, err := fillConns(t, d.DialContext, "udp", dst, 100)
			if len(conns) != 8 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Fatalf("%d sockets, then %v; want 8, then exhaustion", len(conns), err)
			}
			for range 20 {
				if _, err := d.Dial("udp", dst[0]); !errors.Is(err, safedial.ErrEphemeralExhausted) {
					t.Fatalf("dial of a full range: %v, want exhaustion", err)
				}
			}
			for _, c := range conns {
				c.Close()
			}
		}
		mu.Lock()
		defer mu.Unlock()
		for p, n := range tried {
			if p < 40000 || p > 40007 {
				t.Errorf("port %d tried %d times, outside the range 40000-40007", p, n)
			}
		}
	})
}

// TestShareUDPPortsReservedFresh (issue 24, item 4): ports reserved right
// after a dial are never used by the next ones.
func TestShareUDPPortsReservedFresh(t *testing.T) {
	inNamespace(t, 40000, 40007, func(t *testing.T) {
		dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		c, err := d.Dial("udp", dsts[0])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_reserved_ports", []byte("40000-40006"), 0); err != nil {
			t.Fatalf("reserve ports in the namespace: %v", err)
		}
		conns, err := fillConns(t, d.DialContext, "udp", dsts[1:], 100)
		var ports []uint16
		for _, c := range conns {
			ports = append(ports, addrPortOf(c.LocalAddr()).Port())
		}
		if len(ports) != 1 || ports[0] != 40007 {
			t.Errorf("after reserving 40000-40006: sockets on ports %v, want one, on 40007", ports)
		}
		var ee *safedial.ExhaustedError
		if !errors.As(err, &ee) || ee.Held == nil || ee.Held.Reserved != 7 || ee.Held.InUse != 1 {
			t.Errorf("then %v, want exhaustion with 7 reserved and 1 in use", err)
		}
		checkUDP(t, append(conns, c))
	})
}

const killedClaimEnv = "SAFEDIAL_KILLED_CLAIM" // the destination, in a helper process

// TestShareUDPPortsKilledClaimHelper is the process of
// TestShareUDPPortsKilledClaim: its one shared dial stops between bind and
// connect, says so, and waits to be killed.
func TestShareUDPPortsKilledClaimHelper(t *testing.T) {
	dst := os.Getenv(killedClaimEnv)
	if dst == "" {
		t.Skip("helper process of TestShareUDPPortsKilledClaim")
	}
	defer safedial.BeforeSharedConnect(func(_ int, port uint16) {
		fmt.Printf("paused %d\n", port)
		select {}
	})()
	_, err := inFlightDialer().Dial("udp", dst)
	t.Fatalf("the dial returned: %v", err)
}

// TestShareUDPPortsKilledClaim (issue 24, item 5): a process killed with
// SIGKILL in the middle of a claim (bound, not connected, holding the
// 4-tuple's lock) leaves nothing behind: the kernel releases the lock and
// the port, and a dial of the same 4-tuple from another process takes it.
func TestShareUDPPortsKilledClaim(t *testing.T) {
	if os.Getenv(killedClaimEnv) != "" {
		t.Skip("in a helper process")
	}
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		src, peer := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort(dst)
		h := startHelper(t, "TestShareUDPPortsKilledClaimHelper", killedClaimEnv+"="+dst)
		line, err := h.out.ReadString('\n')
		if err != nil || line != "paused 40000\n" {
			t.Fatalf("helper: %q, %v; want it paused on 40000", line, err)
		}
		if !safedial.TupleLocked(src, 0, 40000, peer) {
			t.Error("the claim in flight in the helper does not hold the 4-tuple's lock")
		}
		if err := h.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if err := h.cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("helper ended with %v, want killed", err)
		}
		if safedial.TupleLocked(src, 0, 40000, peer) {
			t.Error("the 4-tuple's lock outlived the killed claim")
		}
		c, err := inFlightDialer().Dial("udp", dst)
		if err != nil {
			t.Fatalf("dial of the killed claim's 4-tuple: %v", err)
		}
		if p := addrPortOf(c.LocalAddr()).Port(); p != 40000 {
			t.Errorf("port %d, want 40000", p)
		}
		checkUDP(t, []net.Conn{c})
	})
}

// TestShareUDPPortsSquattedLock (issue 24, item 5): another user (uid
// 65534) holding the lock names of every 4-tuple of the range toward a
// peer (stream sockets, listening or not; datagram sockets, whose names the
// kernel keeps apart from stream ones) turns no port away: the dials go on without the
// lock (checking for duplicates with a dump) and hold the whole range, as
// the kernel allows.
func TestShareUDPPortsSquattedLock(t *testing.T) {
	inNamespace(t, 40000, 40007, func(t *testing.T) {
		python, err := exec.LookPath("/usr/bin/python3")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("python3 plays the other user (CI=true, so this fails instead of skipping): %v", err)
			}
			t.Skipf("python3 plays the other user: %v", err)
		}
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		src, peer := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort(dst)
		var names []string
		for p := uint16(40000); p <= 40007; p++ {
			names = append(names, fmt.Sprintf("%q", "\x00"+strings.TrimPrefix(safedial.TupleName(src, 0, p, peer), "@")))
		}
		script := fmt.Sprintf(`
import socket, sys
held = []
for i, name in enumerate([%s]):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if i %% 2 == 0 else socket.SOCK_DGRAM)
    s.bind(name.encode("latin-1"))
    if i %% 4 == 0:
        s.listen(1)
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
`, strings.Join(names, ", "))
		cmd := exec.Command(python, "-c", script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer stdin.Close()
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
			t.Fatalf("the other user's squatter: %q, %v", line, err)
		}
		for p := uint16(40000); p <= 40007; p += 2 {
			if !safedial.TupleLocked(src, 0, p, peer) {
				t.Fatalf("the squatter does not hold the name of port %d", p)
			}
		}
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: src.AsSlice()}}}
		conns, err := fillConns(t, d.DialContext, "udp", []string{dst}, 100)
		if len(conns) != 8 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Errorf("with the lock names squatted: %d sockets, then %v; want 8, then exhaustion", len(conns), err)
		}
		checkUDP(t, conns)
	})
}

// TestShareUDPPortsRangeFresh (issue 24, item 4): without PortRange, a
// shared dial uses net.ipv4.ip_local_port_range as it reads when the dial
// starts, as the kernel's connect does: moved right after a dial, the next
// dial takes a port of the new range (it failed, "PortRange 40000-40007
// does not intersect", a range the user never set, read through a
// one-second cache); widened, the next dials hold the new range, as many
// as plain sockets get.
func TestShareUDPPortsRangeFresh(t *testing.T) {
	setRange := func(t *testing.T, r string) {
		t.Helper()
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte(r), 0); err != nil {
			t.Fatalf("set the namespace's range to %s: %v", r, err)
		}
	}
	src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	t.Run("moved", func(t *testing.T) {
		inNamespace(t, 40000, 40007, func(t *testing.T) {
			dst := udpEcho(t, "127.0.0.2:9000")[0]
			d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: src}}
			c, err := d.Dial("udp", dst)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			setRange(t, "41000 41007")
			c2, err := d.Dial("udp", dst)
			if err != nil {
				t.Fatalf("dial after the range moved to 41000-41007: %v", err)
			}
			defer c2.Close()
			if p := addrPortOf(c2.LocalAddr()).Port(); p < 41000 || p > 41007 {
				t.Errorf("port %d after the range moved, want one of 41000-41007", p)
			}
		})
	})
	t.Run("widened", func(t *testing.T) {
		inNamespace(t, 40000, 40003, func(t *testing.T) {
			dst := udpEcho(t, "127.0.0.2:9000")
			d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: src}}
			c, err := d.Dial("udp", dst[0])
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			setRange(t, "40000 40007")
			plain, err := fillConns(t, (&net.Dialer{LocalAddr: src}).DialContext, "udp", dst, 100)
			if len(plain) != 8 || err == nil {
				t.Fatalf("net.Dialer: %d sockets, then %v; want 8, then an error", len(plain), err)
			}
			for _, c := range plain {
				c.Close()
			}
			if n, err := fillUDP(t, d, dst, 100); n != 8 || !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Errorf("ShareUDPPorts after the range widened to 40000-40007: %d sockets, then %v; want 8, then exhaustion", n, err)
			}
		})
	})
}

// TestShareUDPPortsReservedAfterDump (issue 24, item 4): a port reserved
// after a dial dumped the ports of its pair is not used by the next dial of
// that pair, which orders its candidates by that dump (the remembered dump
// ordered a reserved port first, and a bind that names a port ignores
// ip_local_reserved_ports).
func TestShareUDPPortsReservedAfterDump(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
		d := inFlightDialer()
		paused, resume := pauseFirstClaim(t)
		first := dialAsync(d, dsts[0])
		<-paused
		// A dial toward the second peer finds the only port held by the
		// claim in flight: it dumps (the dump is remembered) and waits
		// until its deadline.
		dumped := make(chan struct{})
		var once sync.Once
		defer safedial.ShareWaiting(func() { once.Do(func() { close(dumped) }) })()
		ctx, cancel := context.WithCancel(context.Background())
		second := make(chan error, 1)
		go func() {
			_, err := d.DialContext(ctx, "udp", dsts[1])
			second <- err
		}()
		<-dumped
		cancel()
		if err := <-second; !errors.Is(err, context.Canceled) {
			t.Fatalf("the waiting dial: %v, want its context's error", err)
		}
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_reserved_ports", []byte("40000"), 0); err != nil {
			t.Fatalf("reserve ports in the namespace: %v", err)
		}
		close(resume)
		a := <-first
		if a.err != nil {
			t.Fatalf("the paused dial: %v", a.err)
		}
		defer a.c.Close()
		c, err := d.Dial("udp", dsts[1])
		if err == nil {
			c.Close()
			t.Fatalf("dial toward %s after reserving 40000, the only port: connected from %v, want exhaustion", dsts[1], c.LocalAddr())
		}
		var ee *safedial.ExhaustedError
		if !errors.As(err, &ee) || ee.Held == nil || ee.Held.Reserved != 1 {
			t.Errorf("dial after reserving the only port: %v, want exhaustion with 1 reserved", err)
		}
	})
}

// TestShareUDPPortsStuckClaim (issue 24, item 1): a claim stuck in flight
// (here a socket made to look like one: marked as ShareUDPPorts sockets
// are, bound, never connected, as a stopped process leaves it) costs the
// first dial that needs its port a wait of a second, then counts as held;
// the next dial of the process reports exhaustion without waiting again
// (each dial waited its own second, and a dial with a shorter deadline
// never got its exhaustion).
func TestShareUDPPortsStuckClaim(t *testing.T) {
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR_RFC4884, 1); err != nil {
			t.Skipf("the kernel refuses IP_RECVERR_RFC4884 (before 5.9): %v", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: 40000}); err != nil {
			t.Fatal(err)
		}
		var waits atomic.Int32
		defer safedial.ShareWaiting(func() { waits.Add(1) })()
		d := inFlightDialer()
		for i := range 2 {
			waits.Store(0)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := d.DialContext(ctx, "udp", dst)
			cancel()
			var ee *safedial.ExhaustedError
			if !errors.As(err, &ee) || ee.Held == nil || ee.Held.Bound != 1 {
				t.Fatalf("dial %d while a claim is stuck on the only port: %v, want exhaustion with the port held (Bound 1)", i+1, err)
			}
			if w := waits.Load(); i == 0 && w == 0 {
				t.Error("the first dial did not wait for the claim in flight")
			} else if i == 1 && w != 0 {
				t.Errorf("the second dial waited %d times for a claim the first found stuck", w)
			}
		}
	})
}
