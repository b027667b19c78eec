//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http/httptrace"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"golang.org/x/sys/unix"
)

// The conformance suite: each scenario runs through net.Dialer (the
// reference, which must behave as stated) and through safedial without and
// with Sources, which must give the same outcome, the same error shape and
// the same timing class. Durations are net.Dialer's own (its partial deadline
// never goes below 2 s), so the slow scenarios run concurrently.

// unresponsive listens on addr with a full accept queue (backlog 0 and one
// connection queued): the kernel drops further SYNs, so a dial there hangs
// until its deadline, as toward a host that does not answer.
func unresponsive(t *testing.T, addr string) {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	var (
		family int
		sa     unix.Sockaddr
	)
	if ap.Addr().Is4() {
		family, sa = unix.AF_INET, &unix.SockaddrInet4{Addr: ap.Addr().As4(), Port: int(ap.Port())}
	} else {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: ap.Addr().As16(), Port: int(ap.Port())}
	}
	s, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	if err := unix.Bind(s, sa); err != nil {
		t.Fatalf("bind %s: %v", addr, err)
	}
	if err := unix.Listen(s, 0); err != nil {
		t.Fatal(err)
	}
	filler, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("fill the accept queue of %s: %v", addr, err)
	}
	t.Cleanup(func() { filler.Close() })
}

// timing classes: the marks the scenarios are built around.
var marks = []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second, 4 * time.Second}

// class names the mark nearest to d.
func class(d time.Duration) string {
	best := marks[0]
	for _, m := range marks {
		if (d - m).Abs() < (d - best).Abs() {
			best = m
		}
	}
	return "≈" + best.String()
}

// result is what a scenario compares across dialers.
type result struct {
	Outcome string // "connected to ADDR" or the error's text
	Chain   []link // the error chain, level by level
	Class   string // timing class
	Trace   []string
}

type dialerUnderTest struct {
	name string
	make func(nd net.Dialer) func(ctx context.Context, network, address string) (net.Conn, error)
	// sourced: the dialer names the source it used in errors, as
	// net.Dialer{LocalAddr: that source} does (TestPoolErrorSource checks
	// that): its outcome is compared without it.
	sourced bool
}

// withoutSource removes the source address from an error message that names
// one ("dial tcp 127.0.0.1:0->127.0.0.1:9: ..." becomes "dial tcp
// 127.0.0.1:9: ...").
func withoutSource(outcome string) string {
	return sourceInMessage.ReplaceAllString(outcome, "$1 ")
}

var sourceInMessage = regexp.MustCompile(`^(dial [a-z0-9]+) \S+:0->`)

var dialersUnderTest = []dialerUnderTest{
	{"net.Dialer", func(nd net.Dialer) func(context.Context, string, string) (net.Conn, error) { return nd.DialContext }, false},
	{"safedial", func(nd net.Dialer) func(context.Context, string, string) (net.Conn, error) {
		return (&safedial.Dialer{Base: nd}).DialContext
	}, false},
	{"safedial+Sources", func(nd net.Dialer) func(context.Context, string, string) (net.Conn, error) {
		return (&safedial.Dialer{Base: nd, Sources: mustAddrs("127.0.0.1", "::1")}).DialContext
	}, true},
}

type scenario struct {
	name    string
	network string
	address string
	base    func(nd *net.Dialer)
	ctx     func() (context.Context, context.CancelFunc)
	want    string // the reference's outcome, as a prefix
	class   string // the reference's timing class
}

func TestConformance(t *testing.T) {
	inNamespace(t, 40000, 40999, func(t *testing.T) {
		needIPv6(t)
		servers(t, "tcp", []string{"127.0.0.1"}, []int{8080, 8081})
		servers(t, "tcp", []string{"::1"}, []int{8080})
		unresponsive(t, "127.0.0.2:8080")
		unresponsive(t, "[::1]:8081")
		names := map[string][]netip.Addr{
			"pd.test.":   mustAddrs("127.0.0.2", "127.0.0.1"), // [unresponsive, working], port 8080
			"he.test.":   mustAddrs("::1", "127.0.0.1"),       // [unresponsive IPv6, working IPv4], port 8081
			"rw.test.":   mustAddrs("127.0.0.3", "127.0.0.1"), // [refused, working], port 8080
			"v4.test.":   mustAddrs("127.0.0.1"),
			"slow.test.": mustAddrs("127.0.0.1"),
		}
		res := fakeResolver(names)
		for _, name := range []string{"pd.test", "he.test", "rw.test"} {
			order, err := res.LookupNetIP(context.Background(), "ip", name)
			if err != nil || order[0] != names[name+"."][0] {
				t.Fatalf("the resolver orders %s as %v (%v); the scenarios need %v first", name, order, err, names[name+"."][0])
			}
		}
		timeout := func(d time.Duration) func(*net.Dialer) { return func(nd *net.Dialer) { nd.Timeout = d } }
		deadline := func(d time.Duration) func(*net.Dialer) {
			return func(nd *net.Dialer) { nd.Deadline = time.Now().Add(d) }
		}
		ctxTimeout := func(d time.Duration) func() (context.Context, context.CancelFunc) {
			return func() (context.Context, context.CancelFunc) { return context.WithTimeout(context.Background(), d) }
		}
		cancelAfter := func(d time.Duration) func() (context.Context, context.CancelFunc) {
			return func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(d, cancel)
				return ctx, cancel
			}
		}
		canceled := func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx, cancel
		}
		fallback := func(d time.Duration, more func(*net.Dialer)) func(*net.Dialer) {
			return func(nd *net.Dialer) { nd.FallbackDelay = d; more(nd) }
		}
		withSlowDNS := func(more func(*net.Dialer)) func(*net.Dialer) {
			// A resolver of its own for each dial: a Resolver merges
			// concurrent lookups of one name, which would let one dial
			// ride on another's.
			return func(nd *net.Dialer) { nd.Resolver = slowResolver(names, 2*time.Second); more(nd) }
		}
		none := func(*net.Dialer) {}
		scenarios := []scenario{
			{"partial deadline, Timeout", "tcp", "pd.test:8080", timeout(4 * time.Second), nil, "connected to 127.0.0.1:8080", "≈2s"},
			{"partial deadline, Deadline", "tcp", "pd.test:8080", deadline(4 * time.Second), nil, "connected to 127.0.0.1:8080", "≈2s"},
			{"partial deadline, ctx deadline", "tcp", "pd.test:8080", none, ctxTimeout(4 * time.Second), "connected to 127.0.0.1:8080", "≈2s"},
			{"Happy Eyeballs, default FallbackDelay", "tcp", "he.test:8081", timeout(3 * time.Second), nil, "connected to 127.0.0.1:8081", "≈300ms"},
			{"Happy Eyeballs, no Timeout", "tcp", "he.test:8081", none, nil, "connected to 127.0.0.1:8081", "≈300ms"},
			{"Happy Eyeballs, FallbackDelay 100ms", "tcp", "he.test:8081", fallback(100*time.Millisecond, timeout(4*time.Second)), nil, "connected to 127.0.0.1:8081", "≈100ms"},
			{"Happy Eyeballs off, FallbackDelay < 0", "tcp", "he.test:8081", fallback(-1, timeout(4*time.Second)), nil, "connected to 127.0.0.1:8081", "≈2s"},
			{"slow DNS, Timeout", "tcp", "slow.test:8080", withSlowDNS(timeout(500 * time.Millisecond)), nil, "dial tcp: lookup slow.test", "≈500ms"},
			{"slow DNS, Deadline", "tcp", "slow.test:8080", withSlowDNS(deadline(500 * time.Millisecond)), nil, "dial tcp: lookup slow.test", "≈500ms"},
			{"slow DNS, cancel", "tcp", "slow.test:8080", withSlowDNS(none), cancelAfter(500 * time.Millisecond), "dial tcp: lookup slow.test", "≈500ms"},
			{"refused then working", "tcp", "rw.test:8080", none, nil, "connected to 127.0.0.1:8080", "≈0s"},
			{"literal", "tcp", "127.0.0.1:8080", none, nil, "connected to 127.0.0.1:8080", "≈0s"},
			{"name", "tcp4", "v4.test:8080", none, nil, "connected to 127.0.0.1:8080", "≈0s"},
			{"empty address", "tcp", "", none, nil, "dial tcp: missing address", "≈0s"},
			{"port only: the local system", "tcp", ":8080", none, nil, "connected to 127.0.0.1:8080", "≈0s"},
			{"unknown network", "tcp7", "127.0.0.1:8080", none, nil, "dial tcp7: unknown network tcp7", "≈0s"},
			{"tcp6 to an IPv4 literal", "tcp6", "127.0.0.1:8080", none, nil, "dial tcp6: address 127.0.0.1: no suitable address found", "≈0s"},
			{"refused", "tcp", "127.0.0.1:9", none, nil, "dial tcp 127.0.0.1:9: connect: connection refused", "≈0s"},
			{"unknown host", "tcp", "nx.test:80", none, nil, "dial tcp: lookup nx.test", "≈0s"},
			{"bad port", "tcp", "127.0.0.1:nope", none, nil, "dial tcp: lookup tcp/nope", "≈0s"},
			{"missing port", "tcp", "127.0.0.1", none, nil, "dial tcp: address 127.0.0.1: missing port in address", "≈0s"},
			{"timeout", "tcp", "127.0.0.2:8080", timeout(500 * time.Millisecond), nil, "dial tcp 127.0.0.2:8080: i/o timeout", "≈500ms"},
			{"canceled", "tcp", "127.0.0.1:8080", none, canceled, "dial tcp 127.0.0.1:8080: operation was canceled", "≈0s"},
			{"udp", "udp", "v4.test:53", none, nil, "connected to 127.0.0.1:53", "≈0s"},
		}
		var (
			mu    sync.Mutex
			table []string
		)
		t.Cleanup(func() {
			t.Logf("conformance (outcome, timing class) per dialer:\n%s", strings.Join(table, "\n"))
		})
		for _, sc := range scenarios {
			t.Run(sc.name, func(t *testing.T) {
				t.Parallel()
				// Outcomes, error chains and traces must match at the first
				// run. Timing classes are wall-clock: a class that differs
				// (from the scenario's, or between dialers) gets one more
				// run, so that a stalled machine does not fail the test
				// while a dialer that is really slower fails it both times.
				var results []result
				for attempt := 1; ; attempt++ {
					results = runAll(sc, res)
					if !sameBut(results, sc) || attempt == 2 || classesMatch(results, sc) {
						break
					}
				}
				row := fmt.Sprintf("%-40s", sc.name)
				for i, r := range results {
					row += fmt.Sprintf(" | %s: %.60s, %s", dialersUnderTest[i].name, r.Outcome, r.Class)
				}
				mu.Lock()
				table = append(table, row)
				mu.Unlock()
				ref := results[0]
				if !strings.HasPrefix(ref.Outcome, sc.want) || ref.Class != sc.class {
					t.Fatalf("the reference, net.Dialer: %q in %s; the scenario expects %q in %s", ref.Outcome, ref.Class, sc.want, sc.class)
				}
				for i, r := range results[1:] {
					if diff := cmp.Diff(ref, r); diff != "" {
						t.Errorf("%s differs from net.Dialer (-net.Dialer +%s):\n%s", dialersUnderTest[i+1].name, dialersUnderTest[i+1].name, diff)
					}
				}
			})
		}
	})
}

// runAll runs sc through every dialer at once.
func runAll(sc scenario, res *net.Resolver) []result {
	results := make([]result, len(dialersUnderTest))
	var wg sync.WaitGroup
	for i, du := range dialersUnderTest {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd := net.Dialer{Resolver: res}
			sc.base(&nd)
			results[i] = run(du.make(nd), sc)
			if du.sourced {
				results[i].Outcome = withoutSource(results[i].Outcome)
			}
		}()
	}
	wg.Wait()
	return results
}

// sameBut reports whether the results agree with each other and with the
// scenario in everything but the timing class.
func sameBut(results []result, sc scenario) bool {
	if !strings.HasPrefix(results[0].Outcome, sc.want) {
		return false
	}
	for _, r := range results[1:] {
		a, b := results[0], r
		a.Class, b.Class = "", ""
		if !cmp.Equal(a, b) {
			return false
		}
	}
	return true
}

func classesMatch(results []result, sc scenario) bool {
	for _, r := range results {
		if r.Class != sc.class {
			return false
		}
	}
	return true
}

func run(dial func(context.Context, string, string) (net.Conn, error), sc scenario) result {
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if sc.ctx != nil {
		ctx, cancel = sc.ctx()
	}
	defer cancel()
	var (
		r  result
		mu sync.Mutex
	)
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		ConnectStart: func(network, addr string) {
			mu.Lock()
			r.Trace = append(r.Trace, "start "+network+" "+addr)
			mu.Unlock()
		},
		ConnectDone: func(network, addr string, err error) {
			if errors.Is(err, context.Canceled) || err != nil && strings.Contains(err.Error(), "operation was canceled") {
				return // Happy Eyeballs' losing racer, which may report after the dial returned
			}
			mu.Lock()
			r.Trace = append(r.Trace, fmt.Sprintf("done %s %s %v", network, addr, err))
			mu.Unlock()
		},
	})
	start := time.Now()
	c, err := dial(ctx, sc.network, sc.address)
	r.Class = class(time.Since(start))
	if err != nil {
		r.Outcome, r.Chain = err.Error(), chain(err)
		for i, l := range r.Chain {
			// net.Dialer itself returns either, depending on whether the
			// poller's deadline or the context fired first.
			if l.Type == "*poll.DeadlineExceededError" || l.Type == "*net.timeoutError" {
				r.Chain[i].Type = "net's timeout error"
			}
		}
	} else {
		r.Outcome = "connected to " + c.RemoteAddr().String()
		c.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	// Racers interleave: compare the events, not their order.
	r.Trace = slices.Sorted(slices.Values(r.Trace))
	return r
}

// TestConformanceDialTCP: DialTCP without Sources gives net.Dialer.DialTCP's
// errors where net.Dialer rejects the input (its own error, Source and Addr
// included), and connects where it connects. The differences kept on purpose
// (a zero laddr does not bind the wildcard; a zero raddr is "missing
// address") are in TestDialTCPErrors.
func TestConformanceDialTCP(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		needIPv6(t)
		v4 := netip.MustParseAddrPort(servers(t, "tcp", []string{"127.0.0.1"}, []int{8080})[0])
		v6 := netip.MustParseAddrPort(servers(t, "tcp", []string{"::1"}, []int{8080})[0])
		src4 := netip.MustParseAddrPort("127.0.0.1:0")
		for _, tc := range []struct {
			network      string
			laddr, raddr netip.AddrPort
		}{
			{"tcp6", netip.AddrPort{}, v4},
			{"tcp4", netip.AddrPort{}, v6},
			{"tcp6", src4, v4},
			{"tcp7", netip.AddrPort{}, v4},
			{"udp", src4, v4},
			{"tcp4", src4, v4},
			{"tcp", src4, v4},
		} {
			name := fmt.Sprintf("%s %v->%v", tc.network, tc.laddr, tc.raddr)
			var nd net.Dialer
			want := dialTCPResult(nd.DialTCP(context.Background(), tc.network, tc.laddr, tc.raddr))
			got := dialTCPResult((&safedial.Dialer{}).DialTCP(context.Background(), tc.network, tc.laddr, tc.raddr))
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s: safedial differs from net.Dialer (-net +safedial):\n%s", name, diff)
			}
		}
	})
}

func dialTCPResult(c *net.TCPConn, err error) result {
	if err != nil {
		return result{Outcome: err.Error(), Chain: chain(err)}
	}
	defer c.Close()
	return result{Outcome: "connected to " + c.RemoteAddr().String()}
}

// TestConformanceDivergences names the differences from net.Dialer that are
// kept on purpose, each run through both so that the difference itself is
// what is checked (and documented on the field or method).
func TestConformanceDivergences(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dir := t.TempDir()
		ln, err := net.Listen("unix", dir+"/sock")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()

		// Dialer.Sources: a unix (or ip) network cannot be pinned to a
		// source address. net.Dialer connects; with Sources, safedial
		// refuses instead of passing an unpinned dial for a pinned one.
		c, err := (&net.Dialer{}).Dial("unix", dir+"/sock")
		if err != nil {
			t.Fatalf("net.Dialer: %v", err)
		}
		c.Close()
		_, err = (&safedial.Dialer{Sources: mustAddrs("127.0.0.1")}).Dial("unix", dir+"/sock")
		if !errors.Is(err, safedial.ErrInvalidConfig) || !strings.Contains(err.Error(), `Sources apply to the tcp and udp networks, not "unix"`) {
			t.Errorf("safedial with Sources, unix network: %v, want ErrInvalidConfig", err)
		}
		// Without Sources, safedial dials it as net.Dialer does.
		c, err = (&safedial.Dialer{}).Dial("unix", dir+"/sock")
		if err != nil {
			t.Fatalf("safedial without Sources: %v", err)
		}
		c.Close()

		// DialTCP with a zero remote address: net.Dialer.DialTCP dials the
		// wildcard address (port 0); safedial says the address is missing.
		_, netErr := (&net.Dialer{}).DialTCP(context.Background(), "tcp", netip.AddrPort{}, netip.AddrPort{})
		_, sdErr := (&safedial.Dialer{}).DialTCP(context.Background(), "tcp", netip.AddrPort{}, netip.AddrPort{})
		if netErr == nil || strings.Contains(netErr.Error(), "missing address") {
			t.Errorf("net.Dialer.DialTCP with a zero raddr: %v; the divergence is gone, update the docs", netErr)
		}
		if sdErr == nil || !strings.Contains(sdErr.Error(), "missing address") {
			t.Errorf("safedial DialTCP with a zero raddr: %v, want missing address", sdErr)
		}

	})
}

// TestConformanceDialTCPNoBind: DialTCP with a zero local address.
// net.Dialer.DialTCP binds the wildcard address before connect, so each port
// is chosen without the destination and serves one connection; safedial
// does not bind, so a port serves one connection per destination. In a
// 2-port range, toward 2 destinations (each dialer in its own namespace: a
// port bound without the destination is skipped by every later connect):
func TestConformanceDialTCPNoBind(t *testing.T) {
	for _, tc := range []struct {
		name string
		dial func(raddr netip.AddrPort) (*net.TCPConn, error)
		want int
	}{
		{"net.Dialer", func(raddr netip.AddrPort) (*net.TCPConn, error) {
			return (&net.Dialer{}).DialTCP(context.Background(), "tcp", netip.AddrPort{}, raddr)
		}, 2},
		{"safedial", func(raddr netip.AddrPort) (*net.TCPConn, error) {
			return (&safedial.Dialer{}).DialTCP(context.Background(), "tcp", netip.AddrPort{}, raddr)
		}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inNamespace(t, 40000, 40001, func(t *testing.T) {
				dsts := servers(t, "tcp", []string{"127.0.0.2", "127.0.0.3"}, []int{8080})
				n, _ := fill(t, func(_ context.Context, _, address string) (net.Conn, error) {
					return tc.dial(netip.MustParseAddrPort(address))
				}, "tcp", dsts, 10)
				if n != tc.want {
					t.Errorf("%s DialTCP with a zero laddr: %d connections in a 2-port range toward 2 destinations, want %d", tc.name, n, tc.want)
				}
			})
		})
	}
}
