package netnstest

import (
	"io"
	"net"
	"testing"
)

// EOFServer listens on addr (TCP) until the test ends and closes each
// connection once the client has closed it (EOF), so that the client's side
// ends in TIME_WAIT. Each such close is reported on the returned channel
// (buffered for 65,536; a test that closes more must read it).
func EOFServer(t testing.TB, addr string) (string, <-chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	closed := make(chan struct{}, 1<<16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c)
				c.Close()
				closed <- struct{}{}
			}()
		}
	}()
	return ln.Addr().String(), closed
}
