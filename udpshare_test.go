//go:build linux

package safedial_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netnstest"
)

// udpEcho serves UDP echo on each addr until the test ends.
func udpEcho(t *testing.T, addrs ...string) []string {
	t.Helper()
	var out []string
	for _, a := range addrs {
		pc, err := net.ListenPacket("udp", a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		}()
		out = append(out, pc.LocalAddr().String())
	}
	return out
}

// fillUDP dials the destinations in turn until the first error (at most
// max), checks that every socket has its own 4-tuple and gets its own echo,
// and returns the count and the error.
func fillUDP(t *testing.T, d *safedial.Dialer, dsts []string, max int) (int, error) {
	t.Helper()
	conns, err := fillConns(t, d.DialContext, "udp", dsts, max)
	checkUDP(t, conns)
	return len(conns), err
}

func checkUDP(t *testing.T, conns []net.Conn) {
	t.Helper()
	seen := map[[2]netip.AddrPort]int{}
	for i, c := range conns {
		k := [2]netip.AddrPort{addrPortOf(c.LocalAddr()), addrPortOf(c.RemoteAddr())}
		if j, ok := seen[k]; ok {
			t.Errorf("sockets %d and %d share the 4-tuple %v -> %v", j, i, k[0], k[1])
		}
		seen[k] = i
	}
	for i, c := range conns {
		msg := fmt.Sprintf("socket %d", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatalf("%s: write: %v", msg, err)
		}
	}
	for i, c := range conns {
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if want := fmt.Sprintf("socket %d", i); err != nil || string(buf[:n]) != want {
			t.Errorf("socket %d (%v -> %v) read %q, %v; want its own echo %q", i, c.LocalAddr(), c.RemoteAddr(), buf[:n], err, want)
		}
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	ap := a.(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// TestShareUDPPorts: with ShareUDPPorts, a 64-port range holds exactly 64
// connected UDP sockets per destination, each with its own 4-tuple and its
// own replies, bound, unbound and through Sources; then a typed exhaustion.
// Without it, exactly 64 in all.
func TestShareUDPPorts(t *testing.T) {
	const lo, hi = 40000, 40063
	udpSrc := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	for _, tc := range []struct {
		name string
		d    *safedial.Dialer
		want int
	}{
		{"bound", &safedial.Dialer{Base: net.Dialer{LocalAddr: udpSrc}, ShareUDPPorts: true}, 192},
		{"unbound", &safedial.Dialer{ShareUDPPorts: true}, 192},
		{"Sources", &safedial.Dialer{Sources: mustAddrs("127.0.0.1", "127.0.0.5"), ShareUDPPorts: true}, 384},
		{"without ShareUDPPorts", &safedial.Dialer{Base: net.Dialer{LocalAddr: udpSrc}}, 64},
		{"without ShareUDPPorts, unbound", &safedial.Dialer{}, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			inNamespace(t, lo, hi, func(t *testing.T) {
				dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000", "127.0.0.4:9000")
				n, err := fillUDP(t, tc.d, dsts, 1000)
				if n != tc.want {
					t.Errorf("connected UDP sockets = %d, want %d", n, tc.want)
				}
				if diff := cmp.Diff(exhaustedChain("udp", "connect", "EAGAIN"), chain(err)); diff != "" {
					t.Errorf("next dial: error chain (-want +got):\n%s", diff)
				}
				want := "is taken by a UDP socket"
				if tc.d.ShareUDPPorts {
					want = "in use toward this destination"
				}
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("message %v lacks %q", err, want)
				}
				// Again: the same error (with Base.LocalAddr or the
				// routed source, the dial searches again: nothing
				// remembered refuses a port freed since).
				_, again := tc.d.Dial("udp", dsts[0])
				if diff := cmp.Diff(exhaustedChain("udp", "connect", "EAGAIN"), chain(again)); diff != "" || !strings.Contains(again.Error(), want) {
					t.Errorf("dial after exhaustion: %v (-want +got chain):\n%s", again, diff)
				}
			})
		})
	}
}

// TestShareUDPPortsConcurrent: 64 goroutines dial at once until exhaustion:
// still exactly ports x destinations sockets, no 4-tuple twice, every reply
// to its own socket.
func TestShareUDPPortsConcurrent(t *testing.T) {
	inNamespace(t, 40000, 40063, func(t *testing.T) {
		dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000", "127.0.0.4:9000")
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		var (
			mu    sync.Mutex
			conns []net.Conn
			wg    sync.WaitGroup
		)
		t.Cleanup(func() {
			for _, c := range conns {
				c.Close()
			}
		})
		for g := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					c, err := d.Dial("udp", dsts[(g+i)%len(dsts)])
					if errors.Is(err, safedial.ErrEphemeralExhausted) {
						// This destination is full: any other left?
						c, err = anyFree(d, dsts)
						if c == nil && err == nil {
							return
						}
					}
					if err != nil {
						t.Errorf("goroutine %d: %v", g, err)
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(conns) != 192 {
			t.Errorf("connected UDP sockets = %d, want 192", len(conns))
		}
		checkUDP(t, conns)
	})
}

// anyFree dials the destinations in turn and returns the first connection
// made; nil and no error when every destination is out of ports for d.
func anyFree(d *safedial.Dialer, dsts []string) (net.Conn, error) {
	for _, dst := range dsts {
		c, err := d.Dial("udp", dst)
		if err == nil || !errors.Is(err, safedial.ErrEphemeralExhausted) {
			return c, err
		}
	}
	return nil, nil
}

// TestShareUDPPortsOtherUser: another user (uid 65534) cannot join a shared
// port, neither with SO_REUSEADDR nor SO_REUSEPORT, to connect to the same
// peer and take the replies; the safedial socket still gets them. Shared
// sockets never have SO_REUSEADDR.
func TestShareUDPPortsOtherUser(t *testing.T) {
	inNamespace(t, 40000, 40063, func(t *testing.T) {
		// A system python3, which uid 65534 can run (not one under
		// root's home).
		python, err := exec.LookPath("/usr/bin/python3")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("python3 plays the other user (CI=true, so this fails instead of skipping): %v", err)
			}
			t.Skipf("python3 plays the other user: %v", err)
		}
		dst := udpEcho(t, "127.0.0.2:9000")[0]
		d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		c, err := d.Dial("udp", dst)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		opts := readOpts(t, c)
		if opts.ReuseAddr != 0 || opts.ReusePort != 1 {
			t.Errorf("shared UDP socket: SO_REUSEADDR=%d SO_REUSEPORT=%d, want 0 and 1", opts.ReuseAddr, opts.ReusePort)
		}
		local := addrPortOf(c.LocalAddr())
		script := fmt.Sprintf(`
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    s.bind(("%s", %d))
    s.connect(("127.0.0.2", 9000))
    print("joined")
except OSError as e:
    print("refused", e.errno)
`, local.Addr(), local.Port())
		cmd := exec.Command(python, "-c", script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("run python3 as uid 65534 (CI=true, so this fails instead of skipping): %v: %s", err, out)
			}
			t.Skipf("cannot run python3 as uid 65534: %v: %s", err, out)
		}
		if got := strings.TrimSpace(string(out)); got != fmt.Sprintf("refused %d", syscall.EADDRINUSE) {
			t.Errorf("the other user's bind of %v: %q, want refused with EADDRINUSE", local, got)
		}
		checkUDP(t, []net.Conn{c})
	})
}

// shareHelperEnv makes the test binary a helper process of
// TestShareUDPPortsProcesses: it dials until exhaustion, checks its echoes,
// prints its 4-tuples and holds its sockets until its stdin closes.
const shareHelperEnv = "SAFEDIAL_SHARE_HELPER"

func TestShareUDPPortsHelper(t *testing.T) {
	dsts := os.Getenv(shareHelperEnv)
	if dsts == "" {
		t.Skip("helper process of TestShareUDPPortsProcesses")
	}
	d := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
	conns, err := fillConns(t, d.DialContext, "udp", strings.Split(dsts, ","), 1000)
	if !errors.Is(err, safedial.ErrEphemeralExhausted) {
		t.Fatalf("after %d sockets: %v, want exhaustion", len(conns), err)
	}
	checkUDP(t, conns)
	for _, c := range conns {
		fmt.Printf("tuple %v %v\n", c.LocalAddr(), c.RemoteAddr())
	}
	fmt.Println("holding")
	io.Copy(io.Discard, os.Stdin)
	// Held until here: unreachable sockets are closed by the garbage
	// collector, and others would take their 4-tuples while the test
	// still counts them.
	runtime.KeepAlive(conns)
}

// TestShareUDPPortsProcesses: four processes dial with ShareUDPPorts at once
// from one source: together they hold exactly ports x destinations sockets,
// no 4-tuple twice, each socket with its own echo (checked in each process).
func TestShareUDPPortsProcesses(t *testing.T) {
	if os.Getenv(shareHelperEnv) != "" {
		t.Skip("in a helper process")
	}
	inNamespace(t, 40000, 40063, func(t *testing.T) {
		dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000", "127.0.0.4:9000")
		var helpers []helperProc
		for range 4 {
			helpers = append(helpers, startHelper(t, "TestShareUDPPortsHelper", shareHelperEnv+"="+strings.Join(dsts, ",")))
		}
		tuples := map[string]int{}
		for i, h := range helpers {
			for {
				line, err := h.out.ReadString('\n')
				if err != nil {
					t.Fatalf("helper %d ended before holding its sockets: %v (its test output is above)", i, err)
				}
				if strings.HasPrefix(line, "tuple ") {
					tuples[strings.TrimSpace(line)]++
				}
				if line == "holding\n" {
					break
				}
			}
		}
		total := 0
		for tuple, n := range tuples {
			total += n
			if n > 1 {
				t.Errorf("%s held by %d sockets", tuple, n)
			}
		}
		if total != 192 {
			t.Errorf("the processes hold %d connected UDP sockets together, want 192", total)
		}
		for i, h := range helpers {
			h.stdin.Close()
			if err := h.cmd.Wait(); err != nil {
				t.Errorf("helper %d: %v", i, err)
			}
		}
	})
}

// TestShareUDPPortsHeadroom: a Dialer's headroom counts UDP ports per
// destination when it shares them, and for every destination otherwise.
func TestShareUDPPortsHeadroom(t *testing.T) {
	inNamespace(t, 40000, 40063, func(t *testing.T) {
		dsts := udpEcho(t, "127.0.0.2:9000", "127.0.0.3:9000")
		src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
		shared := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: src}}
		if n, err := fillUDP(t, shared, dsts[:1], 10); n != 10 || err != nil {
			t.Fatalf("%d sockets, %v", n, err)
		}
		for _, tc := range []struct {
			d          *safedial.Dialer
			dst        string
			inUse      int
			perDestMsg string
		}{
			{shared, dsts[0], 10, "shared, toward the destination of the sockets"},
			{shared, dsts[1], 0, "shared, toward another destination"},
			{&safedial.Dialer{Base: net.Dialer{LocalAddr: src}}, dsts[1], 10, "not shared: a port is held for every destination"},
		} {
			hs, err := tc.d.Headroom(context.Background(), "udp", tc.dst)
			if err != nil || len(hs) != 1 || hs[0].InUse != tc.inUse || hs[0].Free != 64-tc.inUse {
				t.Errorf("%s: Headroom = %+v, %v; want %d in use, %d free", tc.perDestMsg, hs, err, tc.inUse, 64-tc.inUse)
			}
		}
	})
}

// helperProc is a copy of the test binary running one helper test, fed
// through stdin and read line by line from stdout.
type helperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// helperCommand is the command of a helper process: the test binary
// running only the test named, with env added to its environment, and under
// go test -cover writing its counters where the parent's are merged.
func helperCommand(test, env string) *exec.Cmd {
	args := append([]string{"-test.run=^" + test + "$", "-test.count=1"}, netnstest.CoverArgs()...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), env)
	return cmd
}

// startHelper starts the test binary running only the test named, with env
// added to its environment (the marker that makes it act as a helper).
func startHelper(t *testing.T, test, env string) helperProc {
	t.Helper()
	cmd := helperCommand(test, env)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return helperProc{cmd, stdin, bufio.NewReader(stdout)}
}
