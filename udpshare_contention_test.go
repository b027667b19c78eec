//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/safedial/safedial"
)

// The mix of TestShareUDPPortsContention: each goroutine of each process
// dials one way until its (source, peer) pair is full. Five pairs, each
// reached several ways: bound and unbound, by name and by the unspecified
// address, IPv4, IPv6 and link-local.
var contentionModes = []struct {
	name  string
	local string   // Base.LocalAddr's address; "" for the routed source
	dsts  []string // dialed in turn; all the same peer
	pair  string   // source -> peer, as the tuples print it
}{
	{"bound IPv4", "127.0.0.1", []string{"127.0.0.2:9000"}, "127.0.0.1 127.0.0.2:9000"},
	{"unbound IPv4", "", []string{"127.0.0.2:9000"}, "127.0.0.1 127.0.0.2:9000"},
	{":port IPv4", "127.0.0.1", []string{":9001", "127.0.0.1:9001", "0.0.0.0:9001"}, "127.0.0.1 127.0.0.1:9001"},
	{"unbound :port IPv4", "", []string{":9001"}, "127.0.0.1 127.0.0.1:9001"},
	{"bound IPv6", "::1", []string{"[::1]:9000"}, "::1 [::1]:9000"},
	{"unbound IPv6", "", []string{"[::1]:9000"}, "::1 [::1]:9000"},
	{":port IPv6", "::1", []string{"[::]:9002", "[::1]:9002"}, "::1 [::1]:9002"},
	{"link-local", "fe80::1%lo", []string{"[fe80::1%lo]:9000"}, "fe80::1 [fe80::1%lo]:9000"},
}

const contentionEnv = "SAFEDIAL_SHARE_CONTENTION" // goroutines, in a helper process

// TestShareUDPPortsContentionHelper is one process of
// TestShareUDPPortsContention: its goroutines dial until their pairs are
// full, it checks that each socket gets its own echo, prints its 4-tuples
// and how many sockets read something else, and holds its sockets until its
// stdin closes.
func TestShareUDPPortsContentionHelper(t *testing.T) {
	g, _ := strconv.Atoi(os.Getenv(contentionEnv))
	if g == 0 {
		t.Skip("helper process of TestShareUDPPortsContention")
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	for i := range g {
		m := contentionModes[i%len(contentionModes)]
		d := &safedial.Dialer{ShareUDPPorts: true}
		if m.local != "" {
			d.Base.LocalAddr = &net.UDPAddr{IP: net.ParseIP(strings.TrimSuffix(m.local, "%lo")), Zone: map[bool]string{true: "lo"}[strings.HasSuffix(m.local, "%lo")]}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; ; j++ {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				c, err := d.DialContext(ctx, "udp", m.dsts[j%len(m.dsts)])
				cancel()
				if errors.Is(err, safedial.ErrEphemeralExhausted) {
					return
				}
				if err != nil {
					t.Errorf("%s: %v", m.name, err)
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for i, c := range conns {
		if _, err := c.Write([]byte(fmt.Sprint("socket ", i))); err != nil {
			t.Fatal(err)
		}
	}
	misdelivered := 0
	for i, c := range conns {
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if want := fmt.Sprint("socket ", i); err != nil || string(buf[:n]) != want {
			misdelivered++
			t.Errorf("socket %d (%v -> %v) read %q, %v; want its own echo %q", i, c.LocalAddr(), c.RemoteAddr(), buf[:n], err, want)
		}
	}
	for _, c := range conns {
		fmt.Printf("tuple %v %v\n", c.LocalAddr(), c.RemoteAddr())
	}
	fmt.Printf("misdelivered %d\n", misdelivered)
	fmt.Println("holding")
	io.Copy(io.Discard, os.Stdin)
	// Held until here: unreachable sockets are closed by the garbage
	// collector, and others would take their 4-tuples while the test
	// still counts them.
	runtime.KeepAlive(conns)
}

// TestShareUDPPortsContention: several processes of many goroutines dial at
// once with every kind of shared dial into a 32-port range: together they
// hold exactly 32 sockets per (source, peer) pair (28 where plain sockets
// hold 4 ports of the source), no 4-tuple twice, and every socket reads
// only its own echo. SAFEDIAL_SHARE_CONTENTION=PxG sets
// the size (default 3x21; the held-out size is 8x64).
func TestShareUDPPortsContention(t *testing.T) {
	if os.Getenv(contentionEnv) != "" {
		t.Skip("in a helper process")
	}
	procs, g := 3, 21
	if v := os.Getenv("SAFEDIAL_SHARE_CONTENTION_SIZE"); v != "" {
		if _, err := fmt.Sscanf(v, "%dx%d", &procs, &g); err != nil {
			t.Fatalf("SAFEDIAL_SHARE_CONTENTION_SIZE=%q: want PxG: %v", v, err)
		}
	}
	inNamespace(t, 40000, 40031, func(t *testing.T) {
		addLinkLocal(t)
		udpEcho(t, "127.0.0.2:9000", "127.0.0.1:9001", "[::1]:9000", "[::1]:9002", "[fe80::1%lo]:9000")
		warmUp(t, "[fe80::1%lo]:9000")
		// Plain sockets hold 4 ports of 127.0.0.1 for every destination.
		for p := 40000; p < 40004; p++ {
			pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", p))
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
		}
		var helpers []helperProc
		for range procs {
			helpers = append(helpers, startHelper(t, "TestShareUDPPortsContentionHelper", contentionEnv+"="+strconv.Itoa(g)))
		}
		tuples := map[string]int{}
		pairs := map[string]int{}
		misdelivered := 0
		for i, h := range helpers {
			for {
				line, err := h.out.ReadString('\n')
				if err != nil {
					t.Fatalf("helper %d ended before holding its sockets: %v (its test output is above)", i, err)
				}
				if f := strings.Fields(line); len(f) == 3 && f[0] == "tuple" {
					tuples[f[1]+" "+f[2]]++
					local, _, _ := strings.Cut(strings.TrimPrefix(f[1], "["), "]:")
					if !strings.Contains(f[1], "]") {
						local, _, _ = strings.Cut(f[1], ":")
					}
					pairs[strings.TrimSuffix(local, "%lo")+" "+f[2]]++
				}
				if n, ok := strings.CutPrefix(line, "misdelivered "); ok {
					k, _ := strconv.Atoi(strings.TrimSpace(n))
					misdelivered += k
				}
				if line == "holding\n" {
					break
				}
			}
		}
		total, dups := 0, 0
		for tuple, n := range tuples {
			total += n
			if n > 1 {
				dups += n - 1
				t.Errorf("%s held by %d sockets", tuple, n)
			}
		}
		t.Logf("%d processes x %d goroutines: %d sockets, %d duplicate 4-tuples, %d misdelivered replies; per pair %v", procs, g, total, dups, misdelivered, pairs)
		for _, m := range contentionModes {
			want := 32
			if strings.HasPrefix(m.pair, "127.0.0.1 ") {
				want = 28 // 4 ports held by plain sockets
			}
			if n := pairs[m.pair]; n != want {
				t.Errorf("pair %s: %d sockets, want %d", m.pair, n, want)
			}
		}
		for i, h := range helpers {
			h.stdin.Close()
			if err := h.cmd.Wait(); err != nil {
				t.Errorf("helper %d: %v", i, err)
			}
		}
	})
}
