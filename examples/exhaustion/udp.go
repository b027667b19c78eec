package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/safedial/safedial"
)

// udpVariants are the UDP dialers of the udp mode.
func udpVariants(c config) []variant {
	src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	var pool []netip.Addr
	for i := 1; i <= c.Sources; i++ {
		pool = append(pool, netip.AddrFrom4([4]byte{127, 0, 1, byte(i)}))
	}
	d := c.Hosts // one UDP port per destination address
	return []variant{
		{"net.Dialer", false, c.Ports, (&net.Dialer{}).DialContext},
		{"net.Dialer+LocalAddr", false, c.Ports, (&net.Dialer{LocalAddr: src}).DialContext},
		{"safedial+LocalAddr", false, c.Ports, (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}}).DialContext},
		{"safedial+LocalAddr+ShareUDPPorts", false, c.Ports * d, (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}, ShareUDPPorts: true}).DialContext},
		{"safedial+ShareUDPPorts", false, c.Ports * d, (&safedial.Dialer{ShareUDPPorts: true}).DialContext},
		{fmt.Sprintf("safedial+Sources(%d)+ShareUDPPorts", c.Sources), false, c.Sources * c.Ports * d, (&safedial.Dialer{Sources: pool, ShareUDPPorts: true}).DialContext},
	}
}

// udpEchoes serves UDP echo on 127.0.0.2 up, port 9000, one per host.
func udpEchoes(hosts int) ([]string, error) {
	var addrs []string
	for h := range hosts {
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.%d:9000", h+2))
		if err != nil {
			return nil, err
		}
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
		addrs = append(addrs, pc.LocalAddr().String())
	}
	return addrs, nil
}

// udpCapacity holds connected UDP sockets toward the destinations in turn
// until the first error.
func udpCapacity(c config, v variant) (result, error) {
	dests, err := udpEchoes(c.Hosts)
	if err != nil {
		return result{}, err
	}
	return dialLoop(v, "udp", dests, true), nil
}

// udpCost fills the range toward one destination to each level with held
// sockets of the variant, then times dials (closed at once, which frees the
// port) at that fill.
func udpCost(c config, name string) ([]latencyRow, error) {
	dests, err := udpEchoes(1)
	if err != nil {
		return nil, err
	}
	dst := dests[0]
	src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	dial := (&net.Dialer{LocalAddr: src}).DialContext
	if name != "net.Dialer+LocalAddr" {
		dial = (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}, ShareUDPPorts: true}).DialContext
	}
	var rows []latencyRow
	held := 0
	for _, pct := range []int{0, 50, 95} {
		for ; held < c.LatencyPort*pct/100; held++ {
			conn, err := dial(context.Background(), "udp", dst)
			if err != nil {
				return nil, fmt.Errorf("filling to %d%%: %w", pct, err)
			}
			defer conn.Close()
		}
		row := latencyRow{Dialer: name, FillPct: pct}
		ds := make([]time.Duration, 0, c.Samples)
		for range c.Samples {
			start := time.Now()
			conn, err := dial(context.Background(), "udp", dst)
			elapsed := time.Since(start)
			if err != nil {
				row.FirstFail = describe(err)
				break
			}
			conn.Close()
			ds = append(ds, elapsed)
		}
		row.MedianUS, row.P99US = quantile(ds, 0.5), quantile(ds, 0.99)
		rows = append(rows, row)
	}
	return rows, nil
}

func printUDP(w io.Writer, c config, rows []result, cost []latencyRow) {
	fmt.Fprintf(w, "udp capacity: range %d ports (%d-%d), %s\n\n", c.Ports, portLo, portLo+c.Ports-1, count(c.Hosts, "destination address", "destination addresses"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "dialer\tconnected sockets\tlimit\tfirst error")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Dialer, r.Connections, r.Limit, r.FirstError)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nudp dial cost vs fill: range %d ports, one destination, %d dials per level\n\n", c.LatencyPort, c.Samples)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "dialer\tfill\tmedian µs\tp99 µs\t")
	for _, r := range cost {
		fmt.Fprintf(tw, "%s\t%d%%\t%.1f\t%.1f\t%s\n", r.Dialer, r.FillPct, r.MedianUS, r.P99US, r.FirstFail)
	}
	tw.Flush()
}
