package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
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

// tableRow is one row of the udp mode's cost against the UDP table's size.
type tableRow struct {
	Sockets  int     `json:"udp_sockets"`
	Dialer   string  `json:"dialer"`
	MedianUS float64 `json:"median_us"`
	P99US    float64 `json:"p99_us"`
	MaxUS    float64 `json:"max_us,omitempty"`
}

// udpTable measures, in a fresh namespace per size, a plain and a shared
// dial with that many unrelated UDP sockets held.
func udpTable(c config, asJSON bool, w io.Writer) error {
	var rows []tableRow
	for _, f := range strings.Split(c.UDPSockets, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 {
			return fmt.Errorf("-udp-sockets %q: want comma-separated counts", c.UDPSockets)
		}
		var rs []tableRow
		if err := inNamespace(c, c.LatencyPort, "table:"+strconv.Itoa(n), &rs); err != nil {
			return err
		}
		rows = append(rows, rs...)
	}
	if asJSON {
		return json.NewEncoder(w).Encode(rows)
	}
	fmt.Fprintf(w, "udp dial cost vs unrelated UDP sockets: range %d ports, one destination, %d dials per row\n\n", c.LatencyPort, c.Samples)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UDP sockets\tdialer\tmedian µs\tp99 µs\tmax µs\t")
	for _, r := range rows {
		max := ""
		if r.MaxUS > 0 {
			max = fmt.Sprintf("%.1f", r.MaxUS)
		}
		fmt.Fprintf(tw, "%d\t%s\t%.1f\t%.1f\t%s\t\n", r.Sockets, r.Dialer, r.MedianUS, r.P99US, max)
	}
	return tw.Flush()
}

// holdPer is how many sockets one holder process keeps (under the 20,000
// descriptors a process may have here).
const holdPer = 15000

// udpTableCost holds n unrelated UDP sockets (bound to explicit ports below
// the range on 127.0.2.x, by helper processes in this namespace: the UDP
// table is host-wide, so a shared dial's dumps walk them wherever they are),
// then times plain and shared dials, each closed at once.
func udpTableCost(c config, n string) ([]tableRow, error) {
	total, err := strconv.Atoi(n)
	if err != nil {
		return nil, err
	}
	for first := 0; first < total; first += holdPer {
		count := min(holdPer, total-first)
		sc, _ := json.Marshal(scenario{Config: c, Name: fmt.Sprintf("hold:%d,%d", first, count)})
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"="+string(sc))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return nil, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		defer cmd.Wait()
		defer stdin.Close()
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil || line != "ready\n" {
			return nil, fmt.Errorf("holding %d UDP sockets: %q, %v", count, line, err)
		}
	}
	dests, err := udpEchoes(1)
	if err != nil {
		return nil, err
	}
	src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	var rows []tableRow
	for _, v := range []struct {
		name string
		dial func(context.Context, string, string) (net.Conn, error)
	}{
		{"net.Dialer+LocalAddr", (&net.Dialer{LocalAddr: src}).DialContext},
		{"safedial+LocalAddr+ShareUDPPorts", (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}, ShareUDPPorts: true}).DialContext},
	} {
		ds := make([]time.Duration, 0, c.Samples)
		for range c.Samples {
			start := time.Now()
			conn, err := v.dial(context.Background(), "udp", dests[0])
			elapsed := time.Since(start)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", v.name, err)
			}
			conn.Close()
			ds = append(ds, elapsed)
		}
		rows = append(rows, tableRow{Sockets: total, Dialer: v.name, MedianUS: quantile(ds, 0.5), P99US: quantile(ds, 0.99)})
	}
	more, err := udpDeadline(c, total, dests[0])
	return append(rows, more...), err
}

// udpDeadline times shared dials with a 50 ms deadline while other
// goroutines keep dialing from a source whose every port is held by plain
// sockets (each of their dials ends in exhaustion after a dump): the
// deadline must bound them whatever those do. Plain dials under the same
// load are the control: what they show beyond 50 ms is the machine's
// (scheduling), not the shared dial's.
func udpDeadline(c config, total int, dst string) ([]tableRow, error) {
	busySrc := net.IPv4(127, 0, 0, 5)
	var plain []net.PacketConn
	defer func() {
		for _, pc := range plain {
			pc.Close()
		}
	}()
	for p := portLo; p < portLo+c.LatencyPort; p++ {
		pc, err := net.ListenPacket("udp4", fmt.Sprintf("%v:%d", busySrc, p))
		if err != nil {
			return nil, err
		}
		plain = append(plain, pc)
	}
	busy := &safedial.Dialer{Base: net.Dialer{LocalAddr: &net.UDPAddr{IP: busySrc}}, ShareUDPPorts: true}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if conn, err := busy.Dial("udp", "127.0.0.3:9000"); err == nil {
					conn.Close()
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	src := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}
	var rows []tableRow
	for _, v := range []struct {
		name string
		dial func(context.Context, string, string) (net.Conn, error)
	}{
		{"plain, 50 ms deadline, another source full", (&net.Dialer{LocalAddr: src}).DialContext},
		{"shared, 50 ms deadline, another source full", (&safedial.Dialer{Base: net.Dialer{LocalAddr: src}, ShareUDPPorts: true}).DialContext},
	} {
		ds := make([]time.Duration, 0, c.Samples)
		for range c.Samples {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			start := time.Now()
			conn, err := v.dial(ctx, "udp", dst)
			ds = append(ds, time.Since(start))
			cancel()
			if err == nil {
				conn.Close()
			}
		}
		rows = append(rows, tableRow{Sockets: total, Dialer: v.name, MedianUS: quantile(ds, 0.5), P99US: quantile(ds, 0.99), MaxUS: quantile(ds, 1)})
	}
	return rows, nil
}

// holdUDP binds count UDP sockets from the first-th ("first,count"), says
// "ready" and holds them until stdin closes.
func holdUDP(spec string) error {
	var first, count int
	if _, err := fmt.Sscanf(spec, "%d,%d", &first, &count); err != nil {
		return err
	}
	const ports = portLo - 1024 // 1024 up to the range
	var held []net.PacketConn
	for i := first; i < first+count; i++ {
		addr := fmt.Sprintf("127.0.2.%d:%d", 1+i/ports, 1024+i%ports)
		pc, err := net.ListenPacket("udp4", addr)
		if err != nil {
			return fmt.Errorf("holding UDP socket %d (%s): %w", i, addr, err)
		}
		held = append(held, pc)
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	for _, pc := range held {
		pc.Close()
	}
	return nil
}
