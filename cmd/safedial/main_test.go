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
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, ControlContext: (&safedial.Dialer{}).ControlContext}
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

// TestHeadroomCommand builds a host in a namespace with a 100-port range: a
// database pool from 127.0.0.1 that has closed 20 of its 85 connections
// (TIME_WAIT), a cache client, and a web client from 127.0.0.5; the output
// in the README's "Watching headroom" is this test's log
// (go test -count=1 -v -run TestHeadroomCommand ./cmd/safedial).
func TestHeadroomCommand(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40099}, func(t *testing.T) {
		sockets(t, "127.0.0.1", "127.0.0.2:5432", 65, 20)
		sockets(t, "127.0.0.1", "127.0.0.3:6379", 30, 0)
		sockets(t, "127.0.0.5", "127.0.0.2:443", 7, 5)

		var out strings.Builder
		if err := run(context.Background(), nil, &out); err != nil {
			t.Fatal(err)
		}
		t.Logf("safedial headroom:\n%s", out.String())
		wantText := `ip_local_port_range 40000-40099 (100 ports), tcp_tw_reuse 0, ip_local_reserved_ports (none)

source     destination     in use  TIME_WAIT  free  used    
127.0.0.1  127.0.0.2:5432  85      20         15     85.0%  [#################...]
127.0.0.1  127.0.0.3:6379  30      0          70     30.0%  [######..............]
127.0.0.5  127.0.0.2:443   12      5          88     12.0%  [##..................]
`
		if diff := cmp.Diff(wantText, out.String()); diff != "" {
			t.Errorf("safedial headroom (-want +got):\n%s", diff)
		}

		out.Reset()
		if err := run(context.Background(), []string{"-json"}, &out); err != nil {
			t.Fatal(err)
		}
		var r report
		if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
			t.Fatalf("%v: %s", err, out.String())
		}
		rng := safedial.PortRange{Lo: 40000, Hi: 40099}
		want := report{Range: rng, TWReuse: "0", ReservedPorts: "(none)", Network: "tcp", Pairs: []safedial.Headroom{
			{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort("127.0.0.2:5432"), Range: rng, InUse: 85, TimeWait: 20, Free: 15},
			{Source: netip.MustParseAddr("127.0.0.1"), Dest: netip.MustParseAddrPort("127.0.0.3:6379"), Range: rng, InUse: 30, Free: 70},
			{Source: netip.MustParseAddr("127.0.0.5"), Dest: netip.MustParseAddrPort("127.0.0.2:443"), Range: rng, InUse: 12, TimeWait: 5, Free: 88},
		}}
		cmpAddrs := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })}
		if diff := cmp.Diff(want, r, cmpAddrs); diff != "" {
			t.Errorf("headroom -json (-want +got):\n%s", diff)
		}

		out.Reset()
		if err := run(context.Background(), []string{"-src", "127.0.0.5"}, &out); err != nil {
			t.Fatal(err)
		}
		text := out.String()
		if !strings.Contains(text, "127.0.0.5  127.0.0.2:443  12      5          88     12.0%  [##..................]") || strings.Contains(text, "127.0.0.1 ") {
			t.Errorf("-src 127.0.0.5 shows:\n%s", text)
		}
		out.Reset()
		if err := run(context.Background(), []string{"-dst", "127.0.0.3:6379"}, &out); err != nil {
			t.Fatal(err)
		}
		if text := out.String(); !strings.Contains(text, "127.0.0.1  127.0.0.3:6379  30") || strings.Contains(text, "5432") {
			t.Errorf("-dst 127.0.0.3:6379 shows:\n%s", text)
		}

		// Both -src and -dst: the pair is shown without sockets too.
		out.Reset()
		if err := run(context.Background(), []string{"-json", "-src", "127.0.0.9", "-dst", "127.0.0.2:5432"}, &out); err != nil {
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
