//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
)

// outcome tallies the answers the client got, by status code.
type outcome map[int]int

// loadTest runs in a namespace whose range has 20 ports: three upstreams on
// 127.0.0.2-4 hold every request until released; n concurrent requests go
// through a proxy dialing from 127.0.0.1 with the given dialer. It returns
// how many requests reached an upstream and the client's status codes, and
// the body of one answer per status.
func loadTest(t *testing.T, dialer string, n int) (reached int, got outcome, bodies map[int]string, p *proxy) {
	arrived := make(chan struct{}, n)
	release := make(chan struct{})
	for i := 2; i <= 4; i++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:8000", i))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-release
			io.WriteString(w, "upstream ok")
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	cfg, err := parseConfig("http://127.0.0.2:8000,http://127.0.0.3:8000,http://127.0.0.4:8000", "127.0.0.1", "", dialer)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	p, err = newProxy(cfg, log.New(&logs, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:8080")
	if err != nil {
		t.Fatal(err)
	}
	front := &http.Server{Handler: p}
	go front.Serve(ln)
	t.Cleanup(func() { front.Close() })

	// The client connects from explicit ports outside the ephemeral range:
	// a port bound by bind(ip:0), as the net.Dialer proxy does, is skipped
	// by connect()'s port search for every address, so client connections
	// using the range would race with the proxy for the same ports.
	var clientPort atomic.Int32
	clientPort.Store(30000)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 10), Port: int(clientPort.Add(1))}
		return (&net.Dialer{LocalAddr: src}).DialContext(ctx, network, addr)
	}}}

	type answer struct {
		code int
		body string
	}
	answers := make(chan answer, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get("http://127.0.0.1:8080/")
			if err != nil {
				t.Error(err)
				answers <- answer{}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers <- answer{resp.StatusCode, string(b)}
		}()
	}
	// Each request either reaches an upstream (and waits there) or is
	// answered with an error at once.
	got, bodies = outcome{}, map[int]string{}
	for answered := 0; reached+answered < n; answered++ {
		select {
		case <-arrived:
			reached++
			answered--
		case a := <-answers:
			got[a.code]++
			bodies[a.code] = a.body
		}
	}
	close(release)
	wg.Wait()
	close(answers)
	for a := range answers {
		got[a.code]++
		bodies[a.code] = a.body
	}
	if dialer == "safedial" && got[503] > 0 {
		// Every 503 was counted before it was answered; end the burst
		// with a clock past its quiet time.
		p.burst.mu.Lock()
		p.burst.now = func() time.Time { return time.Now().Add(time.Hour) }
		p.burst.mu.Unlock()
		p.burst.tick()
		if c := strings.Count(logs.String(), "ephemeral ports exhausted toward"); c != 1 {
			t.Errorf("exhaustion logged %d times for one burst, want once", c)
		}
		if want := fmt.Sprintf("proxy: exhaustion over: %d requests answered 503", got[503]); !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not say %q", want)
		}
	}
	t.Logf("proxy log:\n%s", logs.String())
	return reached, got, bodies, p
}

func inNamespace(t *testing.T, body func(t *testing.T)) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40019}, body)
}

// TestNetDialerBindCap: a plain net.Dialer with a pinned source stops at one
// connection per port (20) and the rest are 502s.
func TestNetDialerBindCap(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		reached, got, bodies, _ := loadTest(t, "net", 60)
		if reached != 20 {
			t.Errorf("%d requests reached an upstream, want 20 (the bind cap)", reached)
		}
		if diff := cmp.Diff(outcome{200: 20, 502: 40}, got); diff != "" {
			t.Errorf("status codes (-want +got):\n%s", diff)
		}
		if !strings.Contains(bodies[502], "bind: address already in use") {
			t.Errorf("502 body %q", bodies[502])
		}
	})
}

// TestSafedialUpToLimit: with safedial every request succeeds up to the
// 4-tuple limit (3 upstreams x 20 ports); beyond it the client gets 503 with
// the exhaustion message, and /debug/vars shows the counts.
func TestSafedialUpToLimit(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		reached, got, bodies, p := loadTest(t, "safedial", 66)
		if reached != 60 {
			t.Errorf("%d requests reached an upstream, want 60", reached)
		}
		if diff := cmp.Diff(outcome{200: 60, 503: 6}, got); diff != "" {
			t.Errorf("status codes (-want +got):\n%s", diff)
		}
		for _, want := range []string{"503 service unavailable", "ephemeral ports exhausted", "local port range 40000-40019 is full"} {
			if !strings.Contains(bodies[503], want) {
				t.Errorf("503 body %q lacks %q", bodies[503], want)
			}
		}

		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/vars", nil))
		var vars struct {
			Safedial safedial.Stats `json:"safedial"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &vars); err != nil {
			t.Fatalf("/debug/vars: %v\n%s", err, rec.Body.String())
		}
		st := vars.Safedial
		if st.Succeeded != 60 || st.Exhausted != 6 || st.Dials != 66 {
			t.Errorf("/debug/vars safedial = %+v, want 66 dials, 60 succeeded, 6 exhausted", st)
		}
	})
}

// TestBurstLogger: one line when a burst starts, its count every 10 s while
// it lasts, and its total when it ends, whether a tick or the next burst
// finds it over.
func TestBurstLogger(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	b := &burstLogger{logger: log.New(&buf, "", 0), quiet: time.Second, every: 10 * time.Second, now: func() time.Time { return now }}
	ee := &safedial.ExhaustedError{Syscall: "connect", Dest: netip.MustParseAddrPort("127.0.0.2:80")}
	step := func(d time.Duration) { now = now.Add(d); b.tick() }

	// A burst of 25 s, 10 answers a second, ticks every 250 ms.
	for range 250 {
		b.exhausted(ee)
		for range 4 {
			step(25 * time.Millisecond)
		}
	}
	step(500 * time.Millisecond) // quiet, but not for long enough
	step(500 * time.Millisecond) // over
	step(time.Minute)            // nothing more to say
	// Two short bursts with no tick between them.
	b.exhausted(ee)
	b.exhausted(ee)
	now = now.Add(2 * time.Second)
	b.exhausted(ee)
	step(2 * time.Second)

	var got []string
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if i := strings.Index(l, "free up: "); i >= 0 {
			l = l[:i+len("free up")] // without the error's own text
		}
		got = append(got, l)
	}
	start := "proxy: ephemeral ports exhausted toward 127.0.0.2:80, answering 503 until ports free up"
	want := []string{
		start,
		"proxy: ports still exhausted: 100 requests answered 503 in the 10s since this burst began",
		"proxy: ports still exhausted: 200 requests answered 503 in the 20s since this burst began",
		"proxy: exhaustion over: 250 requests answered 503 in 24.9s",
		start,
		"proxy: exhaustion over: 2 requests answered 503 in 0s",
		start,
		"proxy: exhaustion over: 1 request answered 503 in 0s",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("log lines (-want +got):\n%s", diff)
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct{ up, src, pr, dialer, want string }{
		{"", "", "", "safedial", "-upstream is required"},
		{"http://127.0.0.2", "x", "", "safedial", "-sources"},
		{"http://127.0.0.2", "", "1-", "safedial", "-port-range"},
		{"http://127.0.0.2", "", "", "curl", "-dialer"},
		{"http://127.0.0.2", "127.0.0.1,127.0.0.2", "", "net", "at most one source"},
	} {
		if _, err := parseConfig(tc.up, tc.src, tc.pr, tc.dialer); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseConfig(%q, %q, %q, %q) = %v, want an error about %s", tc.up, tc.src, tc.pr, tc.dialer, err, tc.want)
		}
	}
	for _, tc := range []struct{ src, dialer, want string }{
		{"127.0.0.1", "safedial", "exclusive"},
		{"", "net", "needs -dialer safedial"},
	} {
		cfg, err := parseConfig("http://127.0.0.2", tc.src, "", tc.dialer)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cfg.withSourcesFrom("eth0"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("-sources-from eth0 with -sources %q -dialer %s: %v, want an error about %s", tc.src, tc.dialer, err, tc.want)
		}
	}
}

// TestSourcesFrom: with -sources-from, upstream connections come from the
// interface's addresses, and follow them: an address deleted carries no
// request once the proxy has seen the change.
func TestSourcesFrom(t *testing.T) {
	inNamespace(t, func(t *testing.T) {
		ip := func(args ...string) {
			t.Helper()
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
		ip("link", "add", "eth9", "type", "veth", "peer", "name", "eth9p")
		ip("link", "set", "eth9p", "up")
		ip("link", "set", "eth9", "up")
		ip("addr", "add", "198.18.0.1/32", "dev", "eth9")
		ip("addr", "add", "198.18.0.2/32", "dev", "eth9")

		var mu sync.Mutex
		peers := map[string]int{}
		ln, err := net.Listen("tcp", "127.0.0.2:8000")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			mu.Lock()
			peers[host]++
			mu.Unlock()
		})}
		srv.SetKeepAlivesEnabled(false) // a connection per request: each dial shows
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })

		cfg, err := parseConfig("http://127.0.0.2:8000", "", "", "safedial")
		if err == nil {
			cfg, err = cfg.withSourcesFrom("eth9")
		}
		if err != nil {
			t.Fatal(err)
		}
		var logs bytes.Buffer
		p, err := newProxy(cfg, log.New(&logs, "", 0))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		front := httptest.NewServer(p)
		t.Cleanup(front.Close)
		get := func(n int) map[string]int {
			t.Helper()
			mu.Lock()
			clear(peers)
			mu.Unlock()
			for range n {
				resp, err := http.Get(front.URL + "/")
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(peers)
		}
		if diff := cmp.Diff(map[string]int{"198.18.0.1": 10, "198.18.0.2": 10}, get(20)); diff != "" {
			t.Errorf("upstream's peers (-want +got):\n%s", diff)
		}
		for len(p.changed) > 0 {
			<-p.changed
		}
		ip("addr", "del", "198.18.0.1/32", "dev", "eth9")
		select {
		case <-p.changed:
		case <-time.After(20 * time.Second):
			t.Fatalf("the proxy did not see the deletion in 20 s; log:\n%s", &logs)
		}
		if diff := cmp.Diff(map[string]int{"198.18.0.2": 10}, get(10)); diff != "" {
			t.Errorf("upstream's peers after the delete (-want +got):\n%s", diff)
		}
		if !strings.Contains(logs.String(), "proxy: sources from eth9: [198.18.0.2]") {
			t.Errorf("log:\n%s", &logs)
		}
	})
}
