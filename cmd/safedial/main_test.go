//go:build linux

package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
)

// sockets makes est held connections and tw connections closed by the
// client from src to a server at dst that closes on EOF.
func sockets(t *testing.T, src, dst string, est, tw int) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	dst, closed := netnstest.EOFServer(t, dst)
	for i := range est + tw {
		c, err := d.Dial("tcp", dst)
		if err != nil {
			t.Fatal(err)
		}
		if i < est {
			t.Cleanup(func() { c.Close() })
			continue
		}
		c.Close()
		<-closed // the server has closed its side too
	}
}

func TestHeadroomCommand(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		sockets(t, "127.0.0.1", "127.0.0.2:8080", 30, 0)
		sockets(t, "127.0.0.3", "127.0.0.2:8081", 5, 5)
		var out strings.Builder
		if err := run(context.Background(), []string{"-json"}, &out); err != nil {
			t.Fatal(err)
		}
		var r report
		if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		rng := safedial.PortRange{Lo: 40000, Hi: 40099}
		want := report{Range: rng, TWReuse: "0", ReservedPorts: "(none)", Network: "tcp", Pairs: []safedial.Headroom{
			{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort("127.0.0.2:8080"), Range: rng, InUse: 30, Free: 70},
			{Source: netip.MustParseAddr("127.0.0.3"), Dest: netip.MustParseAddrPort("127.0.0.2:8081"), Range: rng, InUse: 10, TimeWait: 5, Free: 90},
		}}
		cmpAddrs := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })}
		if diff := cmp.Diff(want, r, cmpAddrs); diff != "" {
			t.Errorf("headroom -json (-want +got):\n%s", diff)
		}

		out.Reset()
		if err := run(context.Background(), []string{"-src", "127.0.0.3"}, &out); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		t.Logf("safedial headroom -src 127.0.0.3:\n%s", text)
		for _, s := range []string{"ip_local_port_range 40000-40099 (100 ports), tcp_tw_reuse 0", "127.0.0.3  127.0.0.2:8081  10      5          90     10.0%  [##..................]"} {
			if !strings.Contains(text, s) {
				t.Errorf("output lacks %q", s)
			}
		}
		if strings.Contains(text, "127.0.0.1 ") {
			t.Errorf("-src 127.0.0.3 shows another source")
		}

		// Both -src and -dst: the pair is shown without sockets too.
		out.Reset()
		if err := run(context.Background(), []string{"-json", "-src", "127.0.0.5", "-dst", "127.0.0.2:8080"}, &out); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), `"in_use":0`) || !strings.Contains(out.String(), `"free":100`) {
			t.Errorf("an empty pair: %s", out.String())
		}
	})
}

func TestParseErrors(t *testing.T) {
	for _, args := range [][]string{{"-src", "nope"}, {"-dst", "nohostport"}, {"-watch", "-1s"}, {"extra"}} {
		if err := run(context.Background(), args, io.Discard); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
