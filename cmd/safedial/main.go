// Command safedial shows how close a host is to ephemeral-port exhaustion.
//
//	safedial headroom [-src ADDR] [-dst HOST:PORT] [-udp] [-json] [-watch 2s]
//	safedial exporter -listen ADDR [-top N] [-src ADDR] [-dst HOST:PORT] [-min-interval 1s]
//	safedial help [subcommand]
//
// With no flag, headroom lists every (source, destination) pair of this
// network namespace that has sockets with a local port in the ephemeral
// range, fewest free ports first, one line each: source, destination, then
// the ports of the range by what holds them (disjoint, adding up to the
// range): in use by the pair, in TIME_WAIT (and not reusable now), reserved
// (net.ipv4.ip_local_reserved_ports), bound (taken by a bind() for every
// destination), and free for a new connection of the pair; then the share of
// the range not free, and a bar. The header gives the namespace's
// net.ipv4.ip_local_port_range, tcp_tw_reuse (in words) and
// ip_local_reserved_ports. -src and -dst narrow the list (with both, the pair
// is shown even when it has no socket); -udp counts UDP ports per source
// instead (wildcard sockets count against every source they cover; with
// -dst, a row is a socket bound to -src, or else an unbound one, toward each
// address); -json prints the same as JSON, one object per sample; -watch
// refreshes it at a fixed period, printing the time of each sample.
//
// exporter (or headroom -listen ADDR) serves the same numbers to Prometheus
// on /metrics, probing when scraped, at most once per -min-interval: the
// -top pairs of each protocol closest to exhaustion (default 100) and every
// pair -src and -dst name (see github.com/safedial/safedial/prometheus).
//
// safedial, -h, --help and help print this description of the subcommands
// to standard output and exit 0, except a bare safedial, which prints it to
// standard error and exits 2, as a command line missing its subcommand.
// Usage errors exit 2, failures at run time 1.
//
// It reads the kernel's socket tables through sock_diag (NETLINK_SOCK_DIAG),
// which needs Linux and no privilege, and changes nothing. Run it from a
// clone of the repository with:
//
//	go run ./cmd/safedial headroom   # from a clone of the repository
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
)

// A command is one subcommand of safedial. Subcommands in other files add
// themselves to commands from an init function.
type command struct {
	name    string
	summary string                                                           // one line, for safedial help
	usage   func(w io.Writer)                                                // the subcommand's help
	run     func(ctx context.Context, args []string, stdout io.Writer) error // a *usageError for bad usage
}

var commands = []command{
	{name: "headroom", summary: "show how many ephemeral ports each (source, destination) pair has left", usage: headroomUsage, run: run},
}

// usageError is a mistake on the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := runMain(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runMain runs the command line args and returns the exit status.
func runMain(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		help(stderr)
		return 2
	}
	switch args[0] {
	case "-version", "--version":
		fmt.Fprintln(stdout, version())
		return 0
	case "help", "-h", "-help", "--help":
		if len(args) > 1 && args[0] == "help" {
			c := lookup(args[1])
			if c == nil {
				fmt.Fprintf(stderr, "safedial help: unknown subcommand %q\nRun 'safedial help' for the list.\n", args[1])
				return 2
			}
			c.usage(stdout)
			return 0
		}
		help(stdout)
		return 0
	}
	if isExporter(args) { // headroom -listen ADDR is the exporter (exporter.go)
		args = append([]string{"exporter"}, args[1:]...)
	}
	c := lookup(args[0])
	if c == nil {
		fmt.Fprintf(stderr, "safedial: unknown subcommand %q\nRun 'safedial help' for the list.\n", args[0])
		return 2
	}
	err := c.run(ctx, args[1:], stdout)
	var ue *usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "safedial %s: %v\nRun 'safedial help %s' for usage.\n", c.name, err, c.name)
		return 2
	default:
		fmt.Fprintf(stderr, "safedial %s: %v\n", c.name, err)
		return 1
	}
}

func lookup(name string) *command {
	i := slices.IndexFunc(commands, func(c command) bool { return c.name == name })
	if i < 0 {
		return nil
	}
	return &commands[i]
}

func help(w io.Writer) {
	fmt.Fprint(w, `Safedial shows how close this host (its network namespace) is to
ephemeral-port exhaustion: for each source and destination, how many more
connections the kernel will accept, and what holds the other ports. It reads
the kernel's socket tables through sock_diag (Linux, no privilege needed) and
changes nothing.

Usage:

	safedial <subcommand> [flags]

Subcommands:

`)
	var b strings.Builder
	for _, c := range commands {
		fmt.Fprintf(&b, "\t%-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, b.String())
	fmt.Fprint(w, `
Run 'safedial help <subcommand>' for a subcommand's flags.
`)
}
