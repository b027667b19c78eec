package safedial_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/netip"

	"github.com/safedial/safedial"
)

// Each upstream gets its own sources: the choice is by destination, so
// http.Transport's per-host connection reuse never crosses pools.
func ExampleDialer_getSources() {
	pools := map[string]*safedial.SourcePool{}
	for host, srcs := range map[string][]string{
		"127.0.0.2": {"127.0.0.10", "127.0.0.11"},
		"127.0.0.3": {"127.0.0.20"},
	} {
		var addrs []netip.Addr
		for _, s := range srcs {
			addrs = append(addrs, netip.MustParseAddr(s))
		}
		p, err := safedial.NewSourcePool(addrs) // checked once, as SetSources checks
		if err != nil {
			log.Fatal(err)
		}
		pools[host] = p
	}
	d := &safedial.Dialer{
		GetSources: func(ctx context.Context, network, address string) (*safedial.SourcePool, error) {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return nil, err
			}
			if p, ok := pools[host]; ok {
				return p, nil
			}
			return nil, fmt.Errorf("no source pool for upstream %s", host)
		},
	}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	_ = client
	fmt.Println(pools["127.0.0.2"])
	// Output: 127.0.0.10, 127.0.0.11
}

// The sources are eth0's addresses, followed as they are added and removed,
// until ctx ends.
func ExampleFollowConfig_Follow() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f, err := (&safedial.FollowConfig{
		Interface: "eth0",
		OnChange:  func(srcs []netip.Addr) { log.Printf("sources: %v", srcs) },
	}).Follow(ctx)
	if err != nil {
		log.Fatal(err) // ErrFollowUnsupported on systems other than Linux
	}
	d := &safedial.Dialer{GetSources: f.GetSources}
	_ = d
}
