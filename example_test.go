package safedial_test

import (
	"context"
	"errors"
	"expvar"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/safedial/safedial"
)

// Pin the source address of an http.Client without capping it at one
// connection per ephemeral port.
func ExampleDialer() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	defer srv.Close()

	d := &safedial.Dialer{Base: net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, // the source to pin
	}}
	client := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}

	resp, err := client.Get(srv.URL)
	if errors.Is(err, safedial.ErrEphemeralExhausted) {
		log.Print("out of ports: ", err) // add Sources, or reuse connections
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status, string(body))
	// Output: 200 OK hello
}

// Keep your own net.Dialer and add only safedial's socket options.
func ExampleDialer_ControlContext() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	var sd safedial.Dialer
	nd := &net.Dialer{
		LocalAddr:      &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
		ControlContext: sd.ControlContext,
	}
	c, err := nd.Dial("tcp", ln.Addr().String())
	// Errors from your own dialer can be classified afterwards.
	if err := safedial.Classify(err); errors.Is(err, safedial.ErrEphemeralExhausted) {
		log.Print(err)
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	c.Close()
	fmt.Println("connected")
	// Output: connected
}

// Classify recognises exhaustion in errors from any dialer. This is the
// error a bound net.Dialer returns when every port of the range is bound.
func ExampleClassify() {
	err := &net.OpError{
		Op: "dial", Net: "tcp",
		Source: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
		Addr:   &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 8080},
		Err:    os.NewSyscallError("bind", syscall.EADDRINUSE),
	}
	cerr := safedial.Classify(err)
	var ee *safedial.ExhaustedError
	fmt.Println(errors.Is(cerr, safedial.ErrEphemeralExhausted), errors.As(cerr, &ee) && ee.Syscall == "bind")
	fmt.Println(errors.Is(cerr, syscall.EADDRINUSE))
	var op *net.OpError
	fmt.Println(errors.As(cerr, &op) && op == cerr)
	// Output:
	// true true
	// true
	// true
}

// Handle exhaustion apart from other failures.
func ExampleExhaustedError() {
	d := &safedial.Dialer{Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}}}
	_, err := d.DialContext(context.Background(), "tcp", "127.0.0.1:1") // nothing listens there
	var ee *safedial.ExhaustedError
	switch {
	case errors.As(err, &ee):
		log.Printf("no port from %v to %v (%s); range %v", ee.Source, ee.Dest, ee.Syscall, ee.Range)
	case errors.Is(err, safedial.ErrSourceNotLocal), errors.Is(err, safedial.ErrInvalidConfig):
		log.Fatal("fix the configuration: ", err)
	case err != nil:
		fmt.Println("other failure:", errors.Is(err, syscall.ECONNREFUSED))
	}
	// Output: other failure: true
}

// A pool of source addresses: dials are spread over them, fail over when one
// is exhausted, and are counted.
func ExampleDialer_sources() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()

	d := &safedial.Dialer{
		Sources: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		OnExhausted: func(e *safedial.ExhaustedError) {
			log.Printf("source %v exhausted toward %v", e.Source, e.Dest)
		},
	}
	for range 3 {
		c, err := d.Dial("tcp", ln.Addr().String()) // IPv4: uses 127.0.0.1
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
	}
	st := d.Stats()
	fmt.Println(st.Dials, st.Succeeded, st.Exhausted, st.Failovers)
	for _, s := range st.Sources {
		fmt.Println(s.Addr, s.Succeeded)
	}
	// Output:
	// 3 3 0 0
	// 127.0.0.1 3
	// ::1 0
}

// Split one address's ephemeral range between 4 processes (or containers)
// that must never collide: each dials with its own quarter.
func ExamplePortRange() {
	const lo, hi, n = 32768, 60999, 4 // the namespace range, and the process count
	size := (hi - lo + 1) / n
	for i := range n {
		r := safedial.PortRange{Lo: uint16(lo + i*size), Hi: uint16(lo + (i+1)*size - 1)}
		fmt.Printf("process %d: safedial.Dialer{PortRange: %v}\n", i, r)
	}
	// Output:
	// process 0: safedial.Dialer{PortRange: 32768-39825}
	// process 1: safedial.Dialer{PortRange: 39826-46883}
	// process 2: safedial.Dialer{PortRange: 46884-53941}
	// process 3: safedial.Dialer{PortRange: 53942-60999}
}

// Publish a Dialer's statistics on /debug/vars with expvar, from the standard
// library: no metrics dependency needed.
func ExampleDialer_Stats() {
	d := &safedial.Dialer{}
	expvar.Publish("safedial", expvar.Func(func() any { return d.Stats() }))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	if c, err := d.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
	}
	fmt.Println(expvar.Get("safedial"))
	// Output: {"dials":1,"succeeded":1,"exhausted":0,"failovers":0}
}

// Log, once, that the system refused an optional option: dials go on
// without it, as net.Dialer's would, and Stats counts them.
func ExampleDialer_onRefused() {
	d := &safedial.Dialer{
		Base: net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}},
		OnRefused: func(e *safedial.RefusedError) {
			// For example: "IP_BIND_ADDRESS_NO_PORT was refused by this
			// system (setsockopt: protocol not available): a bound source
			// is capped at one connection per port"
			log.Print("safedial: ", e)
		},
	}
	_ = d // use d.DialContext as usual; d.Stats().Refused counts unprotected dials
}

// Connected UDP sockets toward many destinations from one source, past the
// ephemeral range: a port serves one socket per destination.
func ExampleDialer_shareUDPPorts() {
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()

	d := &safedial.Dialer{ShareUDPPorts: true}
	c, err := d.Dial("udp", echo.LocalAddr().String())
	if errors.Is(err, errors.ErrUnsupported) {
		fmt.Println("hello") // not on this system: sharing needs Linux
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("hello"))
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	fmt.Println(string(buf[:n]))
	// Output: hello
}

// How many ports a Dialer's dials have left toward a destination, published
// with the standard library: each read of /debug/vars probes, bounded by
// its own timeout, never on the dial path.
func ExampleDialer_Headroom() {
	d := &safedial.Dialer{Sources: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")}}
	expvar.Publish("headroom", expvar.Func(func() any {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		hs, err := d.Headroom(ctx, "tcp", "db.internal:5432")
		if err != nil {
			return err.Error()
		}
		return hs
	}))
}

// Ask the kernel how close one (source, destination) pair is to exhaustion.
func ExampleProbeHeadroom() {
	h, err := safedial.ProbeHeadroom(context.Background(), "tcp", netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort("127.0.0.1:5432"))
	if errors.Is(err, errors.ErrUnsupported) {
		return // not Linux
	}
	if err != nil {
		log.Fatal(err)
	}
	// The five counts split the range: they add up to its size.
	log.Printf("%v -> %v: %d more connections (%.0f%% of range %v used): %d in use, %d in TIME_WAIT, %d reserved, %d bound",
		h.Source, h.Dest, h.Free, 100*h.Used(), h.Range, h.InUse, h.TimeWait, h.Reserved, h.Bound)
}
