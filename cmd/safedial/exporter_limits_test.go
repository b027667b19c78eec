//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"golang.org/x/crypto/bcrypt"
)

// bigCollector sends n series with 1 kB labels (few series, so that the
// answer is large but cheap to make), and counts its scrapes.
type bigCollector struct {
	n       int
	calls   atomic.Int64
	once    sync.Once
	started chan struct{} // closed at the first scrape
	desc    *prometheus.Desc
}

func newBigCollector(n int) *bigCollector {
	return &bigCollector{n: n, started: make(chan struct{}), desc: prometheus.NewDesc("test_big", "Filler for the stalled-client tests.", []string{"id", "filler"}, nil)}
}

func (c *bigCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *bigCollector) Collect(ch chan<- prometheus.Metric) {
	c.calls.Add(1)
	c.once.Do(func() { close(c.started) })
	filler := strings.Repeat("x", 1000)
	for i := range c.n {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(i), strconv.Itoa(i), filler)
	}
}

// connStates counts the servers' connections by state and lets a test wait
// for a count.
type connStates struct {
	mu     sync.Mutex
	cond   *sync.Cond
	counts map[http.ConnState]int
}

func newConnStates() *connStates {
	s := &connStates{counts: map[http.ConnState]int{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *connStates) hook(_ net.Conn, st http.ConnState) {
	s.mu.Lock()
	s.counts[st]++
	s.mu.Unlock()
	s.cond.Broadcast()
}

// writing counts the answers of /metrics that started to be written
// (exporterWriting).
func (s *connStates) writing() { s.hook(nil, writingState) }

// writingState is the count of connStates.writing.
const writingState http.ConnState = -1

// wait returns once the count of state reaches n.
func (s *connStates) wait(state http.ConnState, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.counts[state] < n {
		s.cond.Wait()
	}
}

// fds is the number of descriptors this process holds.
func fds(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// heap is the Go heap's live and unswept objects, in bytes.
func heap() int {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// rss is this process's resident memory in bytes.
func rss(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// stalledClient connects with a small receive buffer, asks for /metrics
// and never reads.
func stalledClient(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

// startExporter runs the exporter with args until the test ends and
// returns its address.
func startExporter(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan string, 1), make(chan error, 1)
	var logs lockedBuffer
	go func() { done <- exporter(ctx, args, io.Discard, &logs, ready) }()
	select {
	case addr := <-ready:
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("exporter: %v", err)
			}
		})
		return addr
	case err := <-done:
		cancel()
		t.Fatalf("exporter: %v\n%s", err, logs.String())
		return ""
	}
}

// TestExporterStalledClients: 300 clients ask for /metrics (about 600 kB)
// and never read. At most --web.max-requests (40) are answered at once,
// the others get 503 and their connection closed; the write timeout then
// closes the 40, so the descriptors and the memory come back while the
// clients still hold their ends.
//
// The kernel would take a whole answer of this size into its buffers (up
// to net.ipv4.tcp_wmem's 4 MiB) and the write would not stall: the test
// caps tcp_wmem at 64 KiB in its namespace, as an answer larger than the
// buffers would find it. Answers that fit end at once and the connection
// then waits for its next request: the idle timeout closes it.
func TestExporterStalledClients(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40999}, func(t *testing.T) {
		const clients, maxRequests = 300, 40
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_wmem", []byte("4096 16384 65536"), 0); err != nil {
			t.Fatal(err)
		}
		big := newBigCollector(600)
		states := newConnStates()
		oldExtra, oldState, oldWriting, oldWrite, oldIdle := exporterExtra, exporterConnState, exporterWriting, exporterWriteTimeout, exporterIdleTimeout
		exporterExtra, exporterConnState, exporterWriting, exporterWriteTimeout, exporterIdleTimeout = big, states.hook, states.writing, 20*time.Second, 20*time.Second
		t.Cleanup(func() {
			exporterExtra, exporterConnState, exporterWriting, exporterWriteTimeout, exporterIdleTimeout = oldExtra, oldState, oldWriting, oldWrite, oldIdle
		})
		addr := startExporter(t, "--web.listen-address", "127.0.0.1:0", "-top", "0")

		// One scrape read to the end, on a connection closed after it.
		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		states.wait(http.StateClosed, 1)
		runtime.GC()
		debug.FreeOSMemory()
		fd0, rss0, heap0 := fds(t), rss(t), heap()

		conns := make([]net.Conn, clients)
		for i := range conns {
			conns[i] = stalledClient(t, addr)
		}
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		// Every request read; the 260 beyond the limit answered 503 and
		// closed; 40 answers stalled in their write. A request read is not
		// yet a scrape: wait for the 40 to be writing, so that their
		// collectors have run and returned (under load, a handler could
		// still be gathering, with its own descriptors open).
		states.wait(http.StateActive, 1+clients)
		states.wait(http.StateClosed, 1+clients-maxRequests)
		states.wait(writingState, 1+maxRequests)
		if got := big.calls.Load(); got != 1+maxRequests {
			t.Errorf("%d scrapes of the collector, want %d (one, then --web.max-requests)", got, 1+maxRequests)
		}
		fd1, rss1, heap1 := fds(t), rss(t), heap()

		// The write timeout ends the 40.
		states.wait(http.StateClosed, 1+clients)
		runtime.GC()
		debug.FreeOSMemory()
		fd2, rss2, heap2 := fds(t), rss(t), heap()

		mib := func(b int) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
		t.Logf("scrape body %d bytes; %d clients that never read, --web.max-requests %d", n, clients, maxRequests)
		t.Logf("before: %d fds, RSS %s, Go heap %s", fd0, mib(rss0), mib(heap0))
		t.Logf("during: %d fds (%d the exporter's), RSS %s, Go heap %s", fd1, fd1-fd0-clients, mib(rss1), mib(heap1))
		t.Logf("after the write timeout, clients still connected: %d fds (%d the exporter's), RSS %s, Go heap %s", fd2, fd2-fd0-clients, mib(rss2), mib(heap2))
		if fd2-fd0-clients != 0 {
			t.Errorf("the exporter holds %d descriptors after the write timeout, want 0", fd2-fd0-clients)
		}
		if fd1-fd0-clients > maxRequests {
			t.Errorf("the exporter held %d descriptors during the stall, want at most %d", fd1-fd0-clients, maxRequests)
		}
		// Memory comes back: within 16 MiB of before (the runtime keeps
		// some of what it grew). The race detector's shadow memory never
		// goes back: under -race, the Go heap stands for the RSS.
		if heap2-heap0 > 16<<20 {
			t.Errorf("Go heap %s after, %s before: %s more, want at most 16 MiB", mib(heap2), mib(heap0), mib(heap2-heap0))
		}
		if !raceEnabled && rss2-rss0 > 16<<20 {
			t.Errorf("RSS %s after, %s before: %s more, want at most 16 MiB", mib(rss2), mib(rss0), mib(rss2-rss0))
		}
	})
}

// lockedBuffer is a strings.Builder that goroutines may write and read at
// once.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestExporterSIGTERMWhileStalled: SIGTERM while a client stalls a scrape
// ends the exporter with status 0 after the bounded drain.
func TestExporterSIGTERMWhileStalled(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		// A 600 kB answer, quick to make (a slow one could meet the scrape
		// timeout and be answered 503 at once), and buffers too small to
		// take it (see TestExporterStalledClients): the write stalls.
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_wmem", []byte("4096 16384 65536"), 0); err != nil {
			t.Fatal(err)
		}
		big := newBigCollector(600)
		states := newConnStates()
		ready := make(chan string, 1)
		// The exporter's log, read here while a handler goroutine that
		// net/http's TimeoutHandler left behind may still write to it (the
		// stalled write fails after the exporter returns, and promhttp logs
		// that).
		var stderr lockedBuffer
		oldExtra, oldState, oldReady, oldWrite, oldDrain, oldLog := exporterExtra, exporterConnState, exporterReady, exporterWriteTimeout, exporterDrainTimeout, exporterLog
		exporterExtra, exporterConnState, exporterReady, exporterLog = big, states.hook, ready, &stderr
		exporterWriteTimeout = time.Hour // the drain, not the write timeout, ends the stall
		exporterDrainTimeout = 100 * time.Millisecond
		t.Cleanup(func() {
			exporterExtra, exporterConnState, exporterReady, exporterWriteTimeout, exporterDrainTimeout, exporterLog = oldExtra, oldState, oldReady, oldWrite, oldDrain, oldLog
		})
		code := make(chan int, 1)
		go func() {
			code <- runMain(context.Background(), []string{"exporter", "--web.listen-address", "127.0.0.1:0"}, io.Discard, io.Discard)
		}()
		var addr string
		select {
		case addr = <-ready:
		case c := <-code:
			t.Fatalf("exporter: exit %d\n%s", c, stderr.String())
		}
		c := stalledClient(t, addr)
		defer c.Close()
		states.wait(http.StateActive, 1)
		<-big.started // the scrape is under way
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if got := <-code; got != 0 {
			t.Errorf("SIGTERM during a stalled scrape: exit %d, want 0\n%s", got, stderr.String())
		}
		if !strings.Contains(stderr.String(), "drain timed out") {
			t.Errorf("the log does not say the drain timed out:\n%s", stderr.String())
		}
	})
}

// TestExporterWebConfig: --web.config.file turns on basic authentication
// (exporter-toolkit's format): /metrics without the password is 401, with
// it 200. A web configuration that does not parse stops the exporter at
// start with status 1.
func TestExporterWebConfig(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		cfg := dir + "/web.yml"
		if err := os.WriteFile(cfg, []byte("basic_auth_users:\n  prom: "+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		addr := startExporter(t, "--web.listen-address", "127.0.0.1:0", "--web.config.file", cfg)
		for _, tc := range []struct {
			user, pass string
			want       int
		}{{"", "", http.StatusUnauthorized}, {"prom", "wrong", http.StatusUnauthorized}, {"prom", "s3cret", http.StatusOK}} {
			req, _ := http.NewRequest("GET", "http://"+addr+"/metrics", nil)
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("GET /metrics as %q/%q: %d, want %d", tc.user, tc.pass, resp.StatusCode, tc.want)
			}
		}

		bad := dir + "/bad.yml"
		if err := os.WriteFile(bad, []byte("tls_server_config: [\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		if code := runMain(context.Background(), []string{"exporter", "--web.listen-address", "127.0.0.1:0", "--web.config.file", bad}, io.Discard, &stderr); code != 1 || !strings.Contains(stderr.String(), "--web.config.file "+bad) {
			t.Errorf("a web configuration that does not parse: exit %d, stderr %q; want exit 1 naming the file", code, stderr.String())
		}
	})
}
