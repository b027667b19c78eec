package safedial_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
)

// byDestination returns a GetSources that gives each destination host its
// own pool.
func byDestination(t *testing.T, pools map[string][]string) (func(context.Context, string, string) (*safedial.SourcePool, error), map[string]*safedial.SourcePool) {
	t.Helper()
	built := map[string]*safedial.SourcePool{}
	for host, srcs := range pools {
		p, err := safedial.NewSourcePool(addrs(srcs...))
		if err != nil {
			t.Fatal(err)
		}
		built[host] = p
	}
	return func(ctx context.Context, network, address string) (*safedial.SourcePool, error) {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, err
		}
		if p := built[host]; p != nil {
			return p, nil
		}
		return nil, errors.New("no pool for upstream " + host)
	}, built
}

// TestGetSourcesPerUpstream: a GetSources choosing by destination gives each
// upstream only its own sources (getsockname on every connection), spread
// evenly, counted in each pool's Stats; concurrent dials included.
func TestGetSourcesPerUpstream(t *testing.T) {
	inNamespace(t, 0, 0, func(t *testing.T) {
		dsts := servers(t, "tcp", []string{"127.0.0.2", "127.0.0.3"}, []int{0})
		get, pools := byDestination(t, map[string][]string{
			"127.0.0.2": {"127.0.0.10", "127.0.0.11"},
			"127.0.0.3": {"127.0.0.20", "127.0.0.21", "127.0.0.22"},
		})
		d := &safedial.Dialer{GetSources: get}
		var mu sync.Mutex
		got := map[string]map[netip.Addr]int{}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 60 {
					dst := dsts[(g+i)%2]
					c, err := d.Dial("tcp", dst)
					if err != nil {
						t.Error(err)
						return
					}
					src := localOf(t, c)
					c.Close()
					mu.Lock()
					if got[dst] == nil {
						got[dst] = map[netip.Addr]int{}
					}
					got[dst][src]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		want := map[string]map[netip.Addr]int{
			dsts[0]: {addrs("127.0.0.10")[0]: 60, addrs("127.0.0.11")[0]: 60},
			dsts[1]: {addrs("127.0.0.20")[0]: 40, addrs("127.0.0.21")[0]: 40, addrs("127.0.0.22")[0]: 40},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("sources per upstream, by getsockname (-want +got):\n%s", diff)
		}
		for host, p := range pools {
			for _, s := range p.Stats() {
				if s.Succeeded != s.Attempts || s.Attempts == 0 {
					t.Errorf("%s: pool stats %+v", host, s)
				}
			}
		}
		if st := d.Stats(); st.Dials != 240 || st.Succeeded != 240 || st.Sources != nil {
			t.Errorf("Dialer stats: %+v, want 240 dials, all succeeded, no Sources", st)
		}
	})
}

// TestGetSourcesTransport: through http.Transport, requests to two upstreams
// reach each from its own sources (the servers see the peer), connections
// reused or not.
func TestGetSourcesTransport(t *testing.T) {
	inNamespace(t, 0, 0, func(t *testing.T) {
		var mu sync.Mutex
		peers := map[string]map[string]bool{}
		var urls []string
		for _, host := range []string{"127.0.0.2", "127.0.0.3"} {
			ln, err := net.Listen("tcp", host+":0")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				src, _, _ := net.SplitHostPort(r.RemoteAddr)
				mu.Lock()
				if peers[host] == nil {
					peers[host] = map[string]bool{}
				}
				peers[host][src] = true
				mu.Unlock()
			})}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			urls = append(urls, "http://"+ln.Addr().String()+"/")
		}
		get, _ := byDestination(t, map[string][]string{
			"127.0.0.2": {"127.0.0.10", "127.0.0.11"},
			"127.0.0.3": {"127.0.0.20"},
		})
		d := &safedial.Dialer{GetSources: get}
		tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := (&http.Client{Transport: tr}).Get(urls[i%2])
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}()
		}
		wg.Wait()
		allowed := map[string]map[string]bool{
			"127.0.0.2": {"127.0.0.10": true, "127.0.0.11": true},
			"127.0.0.3": {"127.0.0.20": true},
		}
		for host, ok := range allowed {
			if len(peers[host]) == 0 {
				t.Errorf("upstream %s saw no connection", host)
			}
			for src := range peers[host] {
				if !ok[src] {
					t.Errorf("upstream %s saw a connection from %s, not one of its sources", host, src)
				}
			}
		}
	})
}

// TestGetSourcesErrors: what a pool or a choice that cannot work gives.
func TestGetSourcesErrors(t *testing.T) {
	inNamespace(t, 0, 0, func(t *testing.T) {
		dst := servers(t, "tcp", []string{"127.0.0.1"}, []int{0})[0]
		if _, err := safedial.NewSourcePool(addrs("198.51.100.7")); !errors.Is(err, safedial.ErrSourceNotLocal) {
			t.Errorf("NewSourcePool of an address not of this host: %v, want ErrSourceNotLocal", err)
		}
		for _, srcs := range [][]netip.Addr{nil, addrs("0.0.0.0"), addrs("224.0.0.1"), {{}}} {
			if _, err := safedial.NewSourcePool(srcs); !errors.Is(err, safedial.ErrInvalidConfig) {
				t.Errorf("NewSourcePool(%v): %v, want ErrInvalidConfig", srcs, err)
			}
		}
		p, err := safedial.NewSourcePool(addrs("127.0.0.5"))
		if err != nil {
			t.Fatal(err)
		}
		fixed := func(context.Context, string, string) (*safedial.SourcePool, error) { return p, nil }
		mine := errors.New("tenant unknown")
		for _, tc := range []struct {
			name    string
			d       *safedial.Dialer
			network string
			want    error
		}{
			{"with Sources", &safedial.Dialer{GetSources: fixed, Sources: addrs("127.0.0.1")}, "tcp", safedial.ErrInvalidConfig},
			{"with LocalAddr", &safedial.Dialer{GetSources: fixed, Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}}, "tcp", safedial.ErrInvalidConfig},
			{"unix network", &safedial.Dialer{GetSources: fixed}, "unix", safedial.ErrInvalidConfig},
			{"the function's error", &safedial.Dialer{GetSources: func(context.Context, string, string) (*safedial.SourcePool, error) { return nil, mine }}, "tcp", mine},
			{"IPv6 destination, IPv4 pool", &safedial.Dialer{GetSources: fixed}, "tcp", safedial.ErrInvalidConfig},
			{"a zero SourcePool", &safedial.Dialer{GetSources: func(context.Context, string, string) (*safedial.SourcePool, error) {
				return &safedial.SourcePool{}, nil
			}}, "tcp", safedial.ErrInvalidConfig},
		} {
			addr := dst
			if tc.name == "IPv6 destination, IPv4 pool" {
				addr = "[::1]:1"
			}
			_, err := tc.d.Dial(tc.network, addr)
			var op *net.OpError
			if !errors.Is(err, tc.want) || !errors.As(err, &op) || op.Op != "dial" {
				t.Errorf("%s: %v, want a *net.OpError matching %v", tc.name, err, tc.want)
			}
		}
		// A nil pool dials from the routed source; the pool's source binds.
		for _, tc := range []struct {
			p    *safedial.SourcePool
			want string
		}{{nil, "127.0.0.1"}, {p, "127.0.0.5"}} {
			d := &safedial.Dialer{GetSources: func(context.Context, string, string) (*safedial.SourcePool, error) { return tc.p, nil }}
			c, err := d.Dial("tcp", dst)
			if err != nil {
				t.Fatal(err)
			}
			if got := localOf(t, c).String(); got != tc.want {
				t.Errorf("pool %v: source %s, want %s", tc.p, got, tc.want)
			}
			c.Close()
		}
	})
}

// TestGetSourcesHeadroom: Dialer.Headroom asks GetSources for the pool of
// the address, as a dial does, and reports that pool's sources, with the
// same counts as a Dialer whose Sources is that pool (the kernel's answer:
// 10 connections held from one source leave 90 of 100 ports). A nil pool
// is the routed source; GetSources' error is Headroom's.
func TestGetSourcesHeadroom(t *testing.T) {
	inNamespace(t, 40000, 40099, func(t *testing.T) {
		dsts := servers(t, "tcp", []string{"127.0.0.2", "127.0.0.3"}, []int{8080}) // outside the range
		get, _ := byDestination(t, map[string][]string{"127.0.0.2": {"127.0.0.10", "127.0.0.11"}})
		held := &safedial.Dialer{Sources: addrs("127.0.0.10")}
		for range 10 {
			c, err := held.Dial("tcp", dsts[0])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		ctx := context.Background()
		chosen, err := (&safedial.Dialer{GetSources: get}).Headroom(ctx, "tcp", dsts[0])
		if err != nil {
			t.Fatal(err)
		}
		fixed, err := (&safedial.Dialer{Sources: addrs("127.0.0.10", "127.0.0.11")}).Headroom(ctx, "tcp", dsts[0])
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(fixed, chosen) {
			t.Errorf("Headroom with GetSources: %+v\nwith Sources, the same pool: %+v", chosen, fixed)
		}
		if len(chosen) != 2 || chosen[0].Source != addrs("127.0.0.10")[0] || chosen[0].Free != 90 || chosen[1].Free != 100 {
			t.Errorf("Headroom with GetSources: %+v, want 127.0.0.10 with 90 free, 127.0.0.11 with 100", chosen)
		}
		nilPool := &safedial.Dialer{GetSources: func(context.Context, string, string) (*safedial.SourcePool, error) { return nil, nil }}
		routed, err := nilPool.Headroom(ctx, "tcp", dsts[1])
		plain, err2 := (&safedial.Dialer{}).Headroom(ctx, "tcp", dsts[1])
		if err != nil || err2 != nil || !slices.Equal(routed, plain) {
			t.Errorf("GetSources returning nil: %+v, %v; want the routed source's %+v, %v", routed, err, plain, err2)
		}
		if _, err := (&safedial.Dialer{GetSources: get}).Headroom(ctx, "tcp", dsts[1]); err == nil || !strings.Contains(err.Error(), "no pool for upstream 127.0.0.3") {
			t.Errorf("GetSources failing: %v, want its error", err)
		}
		both := &safedial.Dialer{GetSources: get, Sources: addrs("127.0.0.10")}
		if _, err := both.Headroom(ctx, "tcp", dsts[0]); !errors.Is(err, safedial.ErrInvalidConfig) || !strings.HasPrefix(err.Error(), "safedial: Headroom: ") || strings.Count(err.Error(), "safedial:") != 1 {
			t.Errorf("Sources and GetSources both set: %v; want ErrInvalidConfig, named safedial: Headroom once", err)
		}
	})
}

// TestGetSourcesHeadroomBound: a pool GetSources returns binds its sources
// as Sources' does, and Dialer.Headroom counts its ports so (it took such a
// Dialer for an unbound one). The kernel's answers, range of 10 ports:
// UDP dials from 127.0.0.10 get all 10 though 4 UDP sockets hold ports on
// 127.0.0.20 (Headroom said 6 free); with DisableBindNoPort, TCP dials from
// 127.0.0.10 get 7 when 3 connections from it go elsewhere (Headroom said
// 10); toward 0.0.0.0 the dial reaches the source itself, 127.0.0.10
// (Headroom said 127.0.0.1).
func TestGetSourcesHeadroomBound(t *testing.T) {
	inNamespace(t, 40000, 40009, func(t *testing.T) {
		ctx := context.Background()
		pool, err := safedial.NewSourcePool(addrs("127.0.0.10"))
		if err != nil {
			t.Fatal(err)
		}
		get := func(context.Context, string, string) (*safedial.SourcePool, error) { return pool, nil }
		fill := func(d *safedial.Dialer, network, dst string) int {
			n := 0
			for ; n < 20; n++ {
				c, err := d.Dial(network, dst)
				if err != nil {
					if !errors.Is(err, safedial.ErrEphemeralExhausted) {
						t.Fatalf("dial %d to %s: %v", n, dst, err)
					}
					return n
				}
				t.Cleanup(func() { c.Close() })
			}
			return n
		}

		// UDP: ports held on another address do not count.
		for range 4 {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 20)})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		d := &safedial.Dialer{GetSources: get}
		hs, err := d.Headroom(ctx, "udp", "127.0.0.2:53")
		if err != nil {
			t.Fatal(err)
		}
		if got := fill(d, "udp", "127.0.0.2:53"); len(hs) != 1 || hs[0].Free != got {
			t.Errorf("UDP: Headroom %+v; the kernel took %d", hs, got)
		}

		// TCP with DisableBindNoPort: bind() avoids every port on the source.
		dsts := servers(t, "tcp", []string{"127.0.0.2", "127.0.0.3"}, []int{8080})
		for range 3 {
			c, err := (&safedial.Dialer{Sources: addrs("127.0.0.10")}).Dial("tcp", dsts[1])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		d = &safedial.Dialer{GetSources: get, DisableBindNoPort: true}
		hs, err = d.Headroom(ctx, "tcp", dsts[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := fill(d, "tcp", dsts[0]); len(hs) != 1 || hs[0].Free != got {
			t.Errorf("TCP with DisableBindNoPort: Headroom %+v; the kernel took %d", hs, got)
		}

		// The unspecified address: the dial reaches the source itself.
		fixed, err := (&safedial.Dialer{Sources: addrs("127.0.0.10")}).Headroom(ctx, "tcp", "0.0.0.0:8080")
		if err != nil {
			t.Fatal(err)
		}
		chosen, err := (&safedial.Dialer{GetSources: get}).Headroom(ctx, "tcp", "0.0.0.0:8080")
		if err != nil || !slices.Equal(fixed, chosen) {
			t.Errorf("toward 0.0.0.0:8080 with GetSources: %+v, %v; with Sources, the same pool: %+v", chosen, err, fixed)
		}

		// A configuration the dial refuses, Headroom refuses too.
		for _, d := range []*safedial.Dialer{
			{GetSources: get, Sources: addrs("127.0.0.10")},
			{GetSources: get, Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 10)}}},
		} {
			_, dialErr := d.Dial("tcp", dsts[0])
			_, err := d.Headroom(ctx, "tcp", dsts[0])
			if !errors.Is(dialErr, safedial.ErrInvalidConfig) || !errors.Is(err, safedial.ErrInvalidConfig) {
				t.Errorf("Sources %v, LocalAddr %v with GetSources: dial %v, Headroom %v; want ErrInvalidConfig from both", d.Sources, d.Base.LocalAddr, dialErr, err)
			}
		}
	})
}
