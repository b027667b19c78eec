//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/sys/unix"
)

// inNamespace runs body in a private network namespace whose ephemeral range
// is lo-hi and whose tcp_tw_reuse is 0.
func inNamespace(t *testing.T, lo, hi uint16, body func(t *testing.T)) {
	t.Helper()
	netnstest.Run(t, netns.Config{PortLo: lo, PortHi: hi}, body)
}

// servers listens on every host x port and accepts connections, holding them
// open until the test ends. It returns the listening addresses, host-major.
func servers(t *testing.T, network string, hosts []string, ports []int) []string {
	t.Helper()
	var (
		addrs []string
		mu    sync.Mutex
		held  []net.Conn
		wg    sync.WaitGroup
	)
	for _, h := range hosts {
		for _, p := range ports {
			ln, err := net.Listen(network, net.JoinHostPort(h, fmt.Sprint(p)))
			if err != nil {
				t.Fatalf("listen: %v", err)
			}
			addrs = append(addrs, ln.Addr().String())
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					held = append(held, c)
					mu.Unlock()
				}
			}()
			t.Cleanup(func() { ln.Close() })
		}
	}
	t.Cleanup(func() {
		// Runs before the listeners' Close (cleanups are LIFO), so wait
		// after closing them here too.
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	return addrs
}

// acceptingServer listens on addr (TCP) until the test ends and sends each
// connection it accepts on the returned channel; the test closes those it
// receives, the cleanup the rest. Tests that count descriptors wait for the
// server's side of their connections there, so that a late accept is not
// taken for a leak.
func acceptingServer(t *testing.T, addr string) (string, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 256)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range accepted {
			c.Close()
		}
	})
	return ln.Addr().String(), accepted
}

// receive takes n connections from accepted and closes them when the test
// ends.
func receive(t *testing.T, accepted <-chan net.Conn, n int) {
	t.Helper()
	held := make([]net.Conn, 0, n)
	for range n {
		held = append(held, <-accepted)
	}
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
}

// fill dials the destinations in turn until the first error, and returns the
// number of connections made and that error. The connections stay open until
// the test ends.
func fill(t *testing.T, dial func(ctx context.Context, network, address string) (net.Conn, error), network string, dests []string, max int) (int, error) {
	t.Helper()
	conns, err := fillConns(t, dial, network, dests, max)
	return len(conns), err
}

// fillConns is fill returning the connections themselves.
func fillConns(t *testing.T, dial func(ctx context.Context, network, address string) (net.Conn, error), network string, dests []string, max int) ([]net.Conn, error) {
	t.Helper()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; i < max; i++ {
		c, err := dial(context.Background(), network, dests[i%len(dests)])
		if err != nil {
			return conns, err
		}
		conns = append(conns, c)
	}
	return conns, nil
}

// link describes one level of an error chain for comparison with cmp.Diff.
type link struct {
	Type string
	What string // Op and Net, Syscall, Syscall of ExhaustedError, or errno name
}

// chain walks err's Unwrap() error chain, one link per level.
func chain(err error) []link {
	var out []link
	for err != nil {
		l := link{Type: reflect.TypeOf(err).String()}
		switch e := err.(type) {
		case *net.OpError:
			l.What = e.Op + " " + e.Net
		case *os.SyscallError:
			l.What = e.Syscall
		case *safedial.ExhaustedError:
			l.What = e.Syscall
		case syscall.Errno:
			l.What = errnoName(e)
		}
		out = append(out, l)
		err = errors.Unwrap(err)
	}
	return out
}

func errnoName(e syscall.Errno) string {
	for _, n := range []struct {
		e    syscall.Errno
		name string
	}{
		{syscall.EADDRINUSE, "EADDRINUSE"}, {syscall.EADDRNOTAVAIL, "EADDRNOTAVAIL"},
		{syscall.EAGAIN, "EAGAIN"}, {syscall.ECONNREFUSED, "ECONNREFUSED"},
		{syscall.ENETUNREACH, "ENETUNREACH"}, {syscall.EINVAL, "EINVAL"},
	} {
		if e == n.e {
			return n.name
		}
	}
	return fmt.Sprintf("errno %d", uintptr(e))
}

// Chains the tests expect.
func exhaustedChain(network, op, errno string) []link {
	return []link{
		{"*net.OpError", "dial " + network},
		{"*safedial.ExhaustedError", op},
		{"*os.SyscallError", op},
		{"syscall.Errno", errno},
	}
}

func plainChain(network, syscallName, errno string) []link {
	return []link{
		{"*net.OpError", "dial " + network},
		{"*os.SyscallError", syscallName},
		{"syscall.Errno", errno},
	}
}

// reuseAddrOnly is a net.Dialer hook that sets SO_REUSEADDR alone: the
// classic fix that no longer works.
func reuseAddrOnly(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

func tcpAddr(s string) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))
}

// needIPv6 skips t where the namespace has no IPv6 loopback, or fails it when
// CI=true, so that the IPv6 tests cannot vanish from CI. It probes on a port
// outside the ephemeral range, so the range stays whole.
func needIPv6(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:9000")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("IPv6 loopback unavailable in the namespace (CI=true, so this fails instead of skipping): %v", err)
		}
		t.Skipf("IPv6 loopback unavailable in the namespace: %v", err)
	}
	ln.Close()
}

// netipCmp lets cmp.Diff compare netip values, whose fields are unexported.
var netipCmp = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
}

// fdCount counts this process's open file descriptors.
func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count fds: %v", err)
	}
	return len(ents)
}

func mustAddrs(ss ...string) []netip.Addr {
	as := make([]netip.Addr, len(ss))
	for i, s := range ss {
		as[i] = netip.MustParseAddr(s)
	}
	return as
}

// fakeResolver answers A and AAAA queries from names, in-process over a
// net.Pipe (DNS over a stream), so that tests control what a host name
// resolves to without any server or /etc/hosts entry.
func fakeResolver(names map[string][]netip.Addr) *net.Resolver {
	return slowResolver(names, 0)
}

// slowResolver is fakeResolver answering each query after delay, as a slow
// DNS server does.
func slowResolver(names map[string][]netip.Addr, delay time.Duration) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		client, server := net.Pipe()
		go serveDNS(server, names, delay)
		return client, nil
	}}
}

func serveDNS(c net.Conn, names map[string][]netip.Addr, delay time.Duration) {
	defer c.Close()
	for {
		var n [2]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return
		}
		q := make([]byte, int(n[0])<<8|int(n[1]))
		if _, err := io.ReadFull(c, q); err != nil || len(q) < 12 {
			return
		}
		// The question: labels, then type and class.
		i, labels := 12, []string(nil)
		for i < len(q) && q[i] != 0 {
			l := int(q[i])
			labels = append(labels, string(q[i+1:i+1+l]))
			i += 1 + l
		}
		qend := i + 5
		qtype := uint16(q[i+1])<<8 | uint16(q[i+2])
		var answers [][]byte
		for _, a := range names[strings.Join(labels, ".")+"."] {
			if a.Is4() && qtype == 1 || a.Is6() && qtype == 28 {
				ip := a.AsSlice()
				rr := []byte{0xc0, 12, byte(qtype >> 8), byte(qtype), 0, 1, 0, 0, 0, 60, 0, byte(len(ip))}
				answers = append(answers, append(rr, ip...))
			}
		}
		time.Sleep(delay) // the server's latency, not synchronisation
		resp := append([]byte{q[0], q[1], 0x81, 0x80, 0, 1, 0, byte(len(answers)), 0, 0, 0, 0}, q[12:qend]...)
		for _, rr := range answers {
			resp = append(resp, rr...)
		}
		if _, err := c.Write(append([]byte{byte(len(resp) >> 8), byte(len(resp))}, resp...)); err != nil {
			return
		}
	}
}

// addLinkLocal adds fe80::1/64 to lo in the test's namespace and waits until
// the routing takes it for local.
func addLinkLocal(t *testing.T) {
	t.Helper()
	needIPv6(t)
	ip, err := exec.LookPath("ip")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("iproute2's ip is needed to add a link-local address (CI=true, so this fails instead of skipping): %v", err)
		}
		t.Skipf("iproute2's ip is needed to add a link-local address: %v", err)
	}
	if out, err := exec.Command(ip, "-6", "addr", "add", "fe80::1/64", "dev", "lo", "nodad").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	waitLocal(t, "fe80::1", "oif", "lo")
}

// waitLocal waits until the routing takes addr for an address of this host.
// The kernel adds an address's local route from a work queue, after ip addr
// add returns: until then a connect to it fails with ENETUNREACH (seen in a
// third of the runs of TestSourcesLinkLocal). ip route get asks the same
// routing the dial will, so this waits for the condition itself; 10 s is a
// bound, not a pace.
func waitLocal(t *testing.T, addr string, routeArgs ...string) {
	t.Helper()
	args := append([]string{"route", "get", addr}, routeArgs...)
	for end := time.Now().Add(10 * time.Second); ; {
		out, err := exec.Command("ip", args...).Output()
		if err == nil && strings.HasPrefix(string(out), "local ") {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("ip %v: %s %v, 10 s after the address was added to lo", args, out, err)
		}
	}
}

// ipCommand returns a function that runs iproute2's ip with its arguments
// and fails t if it fails. Without ip, t skips, or fails when CI=true.
func ipCommand(t *testing.T) func(args ...string) {
	t.Helper()
	ip, err := exec.LookPath("ip")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("iproute2's ip is needed to add and remove an address (CI=true, so this fails instead of skipping): %v", err)
		}
		t.Skipf("iproute2's ip is needed to add and remove an address: %v", err)
	}
	return func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ip, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
}
