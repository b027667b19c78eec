//go:build linux

package safedial_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/safedial/safedial"
)

// TestTransport fills the range through an http.Transport whose requests
// block on the server, then checks that the next request's error matches
// ErrEphemeralExhausted through *url.Error.
func TestTransport(t *testing.T) {
	const ports = 20 // 40000-40019
	inNamespace(t, 40000, 40000+ports-1, func(t *testing.T) {
		arrived := make(chan struct{}, 2*ports)
		release := make(chan struct{})
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-release
			io.WriteString(w, "ok")
		})
		for _, host := range []string{"127.0.0.2", "127.0.0.3"} {
			ln, err := net.Listen("tcp", host+":80")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: handler}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
		}

		d := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}}
		tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2 * ports}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}

		var wg sync.WaitGroup
		errs := make(chan error, 2*ports)
		for i := 0; i < 2*ports; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := client.Get(fmt.Sprintf("http://127.0.0.%d/", 2+i%2))
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}()
		}
		for i := 0; i < 2*ports; i++ {
			<-arrived // every port toward both servers is now in use
		}

		_, err := client.Get("http://127.0.0.2/")
		var ue *url.Error
		var ee *safedial.ExhaustedError
		switch {
		case err == nil:
			t.Error("request beyond the 4-tuple limit succeeded")
		case !errors.As(err, &ue):
			t.Errorf("error %T is not a *url.Error", err)
		case !errors.Is(err, safedial.ErrEphemeralExhausted) || !errors.As(err, &ee) || ee.Syscall != "connect":
			t.Errorf("error %v: want exhaustion from connect", err)
		}

		close(release)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("request within the limit failed: %v", err)
		}
		if st := d.Stats(); st.Succeeded != 2*ports || st.Exhausted != 1 || st.Dials != 2*ports+1 {
			t.Errorf("Stats = %+v, want %d dials, %d succeeded, 1 exhausted", st, 2*ports+1, 2*ports)
		}
	})
}

// TestNoLeaks makes hundreds of concurrent dials that fail in every way a
// dial can (exhaustion, source not local, refused, hook error, bad config)
// and checks that no file descriptor or goroutine is left behind.
func TestNoLeaks(t *testing.T) {
	inNamespace(t, 40000, 40009, func(t *testing.T) {
		dst, accepted := acceptingServer(t, "127.0.0.2:8080")
		full := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}}
		if n, err := fill(t, full.DialContext, "tcp", []string{dst}, 100); n != 10 {
			t.Fatalf("filled %d (%v), want 10", n, err)
		}
		// A second source, full too, so that a pool fails over on fresh
		// sockets and still ends exhausted.
		full3 := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.3:0")}}
		if n, err := fill(t, full3.DialContext, "tcp", []string{dst}, 100); n != 10 {
			t.Fatalf("filled %d (%v), want 10", n, err)
		}
		receive(t, accepted, 20) // before the descriptors are counted
		// 10 shared UDP sockets toward one destination fill the range for it.
		udpDst := "127.0.0.2:9999"
		shared := &safedial.Dialer{ShareUDPPorts: true, Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
		if n, err := fill(t, shared.DialContext, "udp", []string{udpDst}, 100); n != 10 {
			t.Fatalf("filled %d shared UDP sockets (%v), want 10", n, err)
		}
		hookErr := errors.New("hook failed")
		failing := []struct {
			d       *safedial.Dialer
			network string
			dst     string
			is      error
		}{
			{full, "tcp", dst, safedial.ErrEphemeralExhausted},
			{&safedial.Dialer{Sources: mustAddrs("127.0.0.1", "127.0.0.3")}, "tcp", dst, safedial.ErrEphemeralExhausted},
			{&safedial.Dialer{Sources: mustAddrs("127.0.0.1", "192.0.2.1")}, "tcp", dst, safedial.ErrEphemeralExhausted}, // fails over past the source not local
			{&safedial.Dialer{Sources: mustAddrs("192.0.2.1")}, "tcp", dst, safedial.ErrSourceNotLocal},
			{&safedial.Dialer{Sources: mustAddrs("127.0.0.3")}, "tcp", "127.0.0.2:9", syscall.ECONNREFUSED}, // the source named in the error
			{&safedial.Dialer{Sources: mustAddrs("127.255.255.255")}, "tcp", dst, safedial.ErrInvalidConfig},
			{&safedial.Dialer{PortRange: safedial.PortRange{Lo: 50000, Hi: 50009}}, "tcp", dst, safedial.ErrInvalidConfig},
			{shared, "udp", udpDst, safedial.ErrEphemeralExhausted},
			{&safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("192.0.2.1:0")}}, "tcp", dst, safedial.ErrSourceNotLocal},
			{&safedial.Dialer{Sources: mustAddrs("127.0.0.1")}, "tcp", dst, safedial.ErrEphemeralExhausted},
			{&safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}, PortRange: safedial.PortRange{Lo: 2, Hi: 1}}, "tcp", dst, safedial.ErrInvalidConfig},
			{&safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0"), ControlContext: func(context.Context, string, string, syscall.RawConn) error { return hookErr }}}, "tcp", dst, hookErr},
			{&safedial.Dialer{Sources: mustAddrs("127.0.0.1"), Base: net.Dialer{ControlContext: func(context.Context, string, string, syscall.RawConn) error { return hookErr }}}, "tcp", dst, hookErr},
		}
		runtime.GC()
		fds, gs := fdCount(t), runtime.NumGoroutine()
		var wg sync.WaitGroup
		const perKind = 60
		for i := 0; i < perKind*len(failing); i++ {
			f := failing[i%len(failing)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := f.d.DialContext(context.Background(), f.network, f.dst)
				if err == nil {
					c.Close()
					t.Error("dial succeeded")
				} else if !errors.Is(err, f.is) {
					t.Errorf("%v does not match %v", err, f.is)
				}
			}()
		}
		wg.Wait()
		if got := fdCount(t); got != fds {
			t.Errorf("open fds: %d before, %d after %d failing dials", fds, got, perKind*len(failing))
		}
		// A goroutine that has called wg.Done may not have exited yet:
		// yield until the count settles, for at most a few seconds.
		for end := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > gs && time.Now().Before(end); {
			runtime.Gosched()
		}
		if got := runtime.NumGoroutine(); got != gs {
			t.Errorf("goroutines: %d before, %d after", gs, got)
		}
	})
}

// TestConcurrent dials from 64 goroutines at once (run it with -race).
func TestConcurrent(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dsts := servers(t, "tcp", []string{"127.0.0.2", "127.0.0.3"}, []int{8080, 8081})
		d := &safedial.Dialer{Base: net.Dialer{LocalAddr: tcpAddr("127.0.0.1:0")}}
		const workers, each = 64, 5 // 320 of the 400 possible connections
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			conns []net.Conn
		)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					c, err := d.DialContext(context.Background(), "tcp", dsts[(w+i)%len(dsts)])
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
		if st := d.Stats(); st.Dials != workers*each || st.Succeeded != workers*each || st.Exhausted != 0 {
			t.Errorf("Stats = %+v, want %d dials, all succeeded", st, workers*each)
		}
	})
}
