package clients

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/safedial/safedial"
)

// noTLSPostgres listens on loopback as a PostgreSQL server without TLS would
// answer the start of a connection: 'N' to an SSLRequest, and for a startup
// message an error (the test needs no more). It returns its address.
func noTLSPostgres(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					var hdr [8]byte
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					n := binary.BigEndian.Uint32(hdr[:4])
					if n == 8 && binary.BigEndian.Uint32(hdr[4:]) == 80877103 { // SSLRequest
						c.Write([]byte{'N'})
						continue
					}
					io.CopyN(io.Discard, c, int64(n)-8)
					msg := "SFATAL\x00C28000\x00Mstand-in server\x00\x00"
					resp := append([]byte{'E', 0, 0, 0, 0}, msg...)
					binary.BigEndian.PutUint32(resp[1:], uint32(len(msg)+4))
					c.Write(resp)
					return
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestPgxPreferDialsTwice: against a server without TLS, pgx's default
// sslmode=prefer dials twice per connection (the refused TLS probe, then the
// real one); disable dials once.
func TestPgxPreferDialsTwice(t *testing.T) {
	addr := noTLSPostgres(t)
	for _, tc := range []struct {
		sslmode string
		dials   int64
	}{{"prefer", 2}, {"", 2}, {"disable", 1}} {
		t.Run("sslmode="+tc.sslmode, func(t *testing.T) {
			cfg, err := PgxPool("postgres://app@"+addr+"/app?sslmode="+tc.sslmode, &safedial.Dialer{})
			if tc.sslmode == "" {
				cfg, err = PgxPool("postgres://app@"+addr+"/app", &safedial.Dialer{})
			}
			if err != nil {
				t.Fatal(err)
			}
			var dials atomic.Int64
			dial := cfg.ConnConfig.DialFunc
			cfg.ConnConfig.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return dial(ctx, network, addr)
			}
			conn, err := pgx.ConnectConfig(context.Background(), cfg.ConnConfig)
			if err == nil {
				conn.Close(context.Background())
				t.Fatal("connected to the stand-in server")
			}
			if got := dials.Load(); got != tc.dials {
				t.Errorf("%d dials for one connection, want %d (%v)", got, tc.dials, err)
			}
		})
	}
}

// exhausted is the error a bound dial returns when every port is in use, as
// safedial returns it.
func exhausted() error {
	return safedial.Classify(&net.OpError{
		Op: "dial", Net: "tcp",
		Source: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
		Addr:   &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 6379},
		Err:    os.NewSyscallError("bind", syscall.EADDRINUSE),
	})
}

// TestRedisDialsPerCommand: go-redis retries every dial error, exhaustion
// included: one failed command makes MaxRetries+1 attempts of DialerRetries
// dials each (20 with the defaults); Redis's options make two. (Only after
// PoolSize failed attempts in a row, 10 per CPU by default, does go-redis
// stop dialing and probe once a second.) errors.Is finds the exhaustion
// through go-redis's wrapping.
func TestRedisDialsPerCommand(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  *redis.Options
		dials int64
	}{
		{"defaults", &redis.Options{Addr: "127.0.0.2:6379"}, 20},
		{"Redis", Redis("127.0.0.2:6379", &safedial.Dialer{}), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dials atomic.Int64
			opts := *tc.opts
			opts.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return nil, exhausted()
			}
			// No waiting between attempts: the count is the point.
			opts.DialerRetryBackoff = func(int) time.Duration { return 0 }
			opts.MinRetryBackoff, opts.MaxRetryBackoff = -1, -1
			rdb := redis.NewClient(&opts)
			defer rdb.Close()
			err := rdb.Ping(context.Background()).Err()
			if !errors.Is(err, safedial.ErrEphemeralExhausted) {
				t.Errorf("err = %v, want one matching ErrEphemeralExhausted", err)
			}
			if got := dials.Load(); got != tc.dials {
				t.Errorf("%d dials for one command, want %d", got, tc.dials)
			}
		})
	}
}
