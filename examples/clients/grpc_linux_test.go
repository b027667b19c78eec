package clients

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/safedial/safedial"
	"github.com/safedial/safedial/internal/netns"
	"github.com/safedial/safedial/internal/netnstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestGRPCExhaustion: gRPC keeps only the text of a dial error. In a
// namespace with a 10-port range, with every port from 127.0.0.1 toward a
// real gRPC server held, a call through safedial fails with code
// Unavailable and the dial error's text, errors.Is(err,
// ErrEphemeralExhausted) is false, and OnExhausted has seen the exhaustion:
// what docs/clients.md says.
func TestGRPCExhaustion(t *testing.T) {
	netnstest.Run(t, netns.Config{PortLo: 40000, PortHi: 40009}, func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.2:50051") // a port outside the range
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, health.NewServer())
		go srv.Serve(ln)
		t.Cleanup(srv.Stop)

		var exhausted atomic.Uint64
		d := &safedial.Dialer{
			Base:        net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}},
			OnExhausted: func(*safedial.ExhaustedError) { exhausted.Add(1) },
		}
		ctx := context.Background()
		var held []net.Conn
		t.Cleanup(func() {
			for _, c := range held {
				c.Close()
			}
		})
		for range 10 {
			c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
			if err != nil {
				t.Fatalf("after %d connections: %v", len(held), err)
			}
			held = append(held, c)
		}
		if n := exhausted.Load(); n != 0 {
			t.Fatalf("OnExhausted called %d times while filling the range", n)
		}

		conn, err := grpc.NewClient("passthrough:///"+ln.Addr().String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", addr)
			}),
		)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("Check: %v, want code Unavailable", err)
		}
		if errors.Is(err, safedial.ErrEphemeralExhausted) {
			t.Errorf("errors.Is(%v, ErrEphemeralExhausted) is true: docs/clients.md says gRPC keeps only the text", err)
		}
		if !strings.Contains(err.Error(), safedial.ErrEphemeralExhausted.Error()) {
			t.Errorf("Check: %v, want the dial error's text", err)
		}
		if exhausted.Load() == 0 || d.Stats().Exhausted == 0 {
			t.Errorf("OnExhausted called %d times, Stats().Exhausted %d: want both at least 1", exhausted.Load(), d.Stats().Exhausted)
		}
		t.Logf("%v; OnExhausted %d", err, exhausted.Load())
	})
}
