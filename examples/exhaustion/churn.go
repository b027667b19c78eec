package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/safedial/safedial"
)

// The poolchurn mode: connections churn at capacity. Workers dial one
// destination, hold each connection a moment, close it (abortively: the port
// is free again at once, no TIME_WAIT) and dial again; a dial that fails
// with exhaustion is retried after a short pause. There are more workers
// than ports for one source, so the workers need every port a dialer has: a
// dialer that refuses a free port makes fewer connections than net.Dialer of
// the same capacity.

// churnFlags registers the poolchurn mode's flags.
func churnFlags(c *config) {
	flag.IntVar(&c.ChurnPorts, "churn-ports", 4, "poolchurn mode: range size")
	flag.IntVar(&c.Workers, "workers", 8, "poolchurn mode: concurrent workers")
	flag.DurationVar(&c.Hold, "hold", 20*time.Millisecond, "poolchurn mode: how long each connection is held")
	flag.DurationVar(&c.Duration, "duration", 2*time.Second, "poolchurn mode: how long each dialer churns")
	flag.DurationVar(&c.Retry, "retry", time.Millisecond, "poolchurn mode: pause after an exhausted dial")
	flag.IntVar(&c.Rounds, "rounds", 3, "poolchurn mode: rounds over every dialer; each row is the median round")
}

// churnRow is one row of the poolchurn mode's output.
type churnRow struct {
	Dialer      string `json:"dialer"`
	Capacity    int    `json:"capacity"` // connections the dialer's sources allow at once
	Connections int    `json:"connections"`
	Exhausted   int    `json:"exhausted"` // dials that failed with exhaustion
	OtherErrors int    `json:"other_errors"`
	FirstOther  string `json:"first_other_error,omitempty"`
}

// churnVariant is one dialer of the poolchurn mode.
type churnVariant struct {
	name    string
	sources int
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
}

func churnVariants() []churnVariant {
	a, b := netip.MustParseAddr("127.0.1.1"), netip.MustParseAddr("127.0.1.2")
	from := func(src netip.Addr) *net.TCPAddr { return net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)) }
	// net.Dialer with safedial's options (IP_BIND_ADDRESS_NO_PORT,
	// SO_REUSEADDR), so that the capacities are the same.
	opts := (&safedial.Dialer{}).ControlContext
	nd := func(src netip.Addr) *net.Dialer { return &net.Dialer{LocalAddr: from(src), ControlContext: opts} }
	naive := [2]*net.Dialer{nd(a), nd(b)}
	var turn atomic.Uint32
	return []churnVariant{
		{"net.Dialer{LocalAddr}+options", 1, nd(a).DialContext},
		{"safedial{Base.LocalAddr}", 1, (&safedial.Dialer{Base: net.Dialer{LocalAddr: from(a)}}).DialContext},
		{"safedial{Sources: [one]}", 1, (&safedial.Dialer{Sources: []netip.Addr{a}}).DialContext},
		{"2 net.Dialers, naive failover", 2, func(ctx context.Context, network, address string) (net.Conn, error) {
			// Start with each in turn; on exhaustion, try the other.
			i := turn.Add(1) % 2
			c, err := naive[i].DialContext(ctx, network, address)
			if err != nil && errors.Is(safedial.Classify(err), safedial.ErrEphemeralExhausted) {
				c, err = naive[1-i].DialContext(ctx, network, address)
			}
			return c, err
		}},
		{"safedial{Sources: [two]}", 2, (&safedial.Dialer{Sources: []netip.Addr{a, b}}).DialContext},
	}
}

// poolChurn runs variant name's churn in this namespace.
func poolChurn(c config, name string) (churnRow, error) {
	var v *churnVariant
	for _, x := range churnVariants() {
		if x.name == name {
			v = &x
		}
	}
	if v == nil {
		return churnRow{}, fmt.Errorf("unknown poolchurn dialer %q", name)
	}
	dests, err := listen(1, 1)
	if err != nil {
		return churnRow{}, err
	}
	r := churnRow{Dialer: v.name, Capacity: v.sources * c.ChurnPorts}
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	end := time.Now().Add(c.Duration)
	for range c.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var conns, exhausted, other int
			var first string
			for time.Now().Before(end) {
				conn, err := v.dial(context.Background(), "tcp", dests[0])
				switch {
				case err == nil:
					conns++
					time.Sleep(c.Hold)
					conn.(*net.TCPConn).SetLinger(0)
					conn.Close()
				case errors.Is(safedial.Classify(err), safedial.ErrEphemeralExhausted):
					exhausted++
					time.Sleep(c.Retry)
				default:
					other++
					if first == "" {
						first = describe(err)
					}
				}
			}
			mu.Lock()
			r.Connections += conns
			r.Exhausted += exhausted
			r.OtherErrors += other
			if r.FirstOther == "" {
				r.FirstOther = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return r, nil
}

// runPoolChurn runs every variant, each in a fresh namespace, in rounds (so
// that a busy moment of the machine hits every dialer alike), and returns
// each variant's median round by connections.
func runPoolChurn(c config) ([]churnRow, error) {
	vs := churnVariants()
	runs := make([][]churnRow, len(vs))
	for range max(c.Rounds, 1) {
		for i, v := range vs {
			var r churnRow
			if err := inNamespace(c, c.ChurnPorts, "poolchurn:"+v.name, &r); err != nil {
				return nil, err
			}
			runs[i] = append(runs[i], r)
		}
	}
	rows := make([]churnRow, len(vs))
	for i, rs := range runs {
		sort.Slice(rs, func(a, b int) bool { return rs[a].Connections < rs[b].Connections })
		rows[i] = rs[len(rs)/2]
	}
	return rows, nil
}

func printPoolChurn(w io.Writer, c config, rows []churnRow) {
	fmt.Fprintf(w, "poolchurn: range %d ports, one destination, %d workers for %v, each connection held %v then closed (RST), %v pause after an exhausted dial; median of %d rounds\n\n",
		c.ChurnPorts, c.Workers, c.Duration, c.Hold, c.Retry, max(c.Rounds, 1))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "dialer\tcapacity\tconnections\texhaustion errors\tother errors\t")
	conns := map[string]int{}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", r.Dialer, r.Capacity, r.Connections, r.Exhausted, r.OtherErrors, r.FirstOther)
		conns[r.Dialer] = r.Connections
	}
	tw.Flush()
	ratio := func(a, b string) float64 {
		if conns[b] == 0 {
			return 0
		}
		return float64(conns[a]) / float64(conns[b])
	}
	vs := churnVariants()
	fmt.Fprintf(w, "\npool of one / net.Dialer{LocalAddr}: %.2fx; pool of two / two net.Dialers: %.2fx\n",
		ratio(vs[2].name, vs[0].name), ratio(vs[4].name, vs[3].name))
}
