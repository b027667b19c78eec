// Package clients plugs a safedial.Dialer into pgx, go-redis, x/net/proxy and
// gRPC. It is a module of its own so that these clients never become
// dependencies of safedial; its tests compile the README's snippets that name
// them, and check what the README says these clients do with dial errors.
package clients

import (
	"context"
	"net"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"github.com/safedial/safedial"
	"golang.org/x/net/proxy"
	"google.golang.org/grpc"
)

// PgxPool returns the configuration of a pgx pool that dials with d. The
// connection string should say sslmode=disable or sslmode=require: with the
// default, prefer, pgx dials twice per connection to a server without TLS.
func PgxPool(connString string, d *safedial.Dialer) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.DialFunc = d.DialContext
	return cfg, nil
}

// Redis returns go-redis options that dial with d and make at most two
// failing dials per command (one per attempt, one retry).
func Redis(addr string, d *safedial.Dialer) *redis.Options {
	return &redis.Options{Addr: addr, Dialer: d.DialContext, DialerRetries: 1, MaxRetries: 1}
}

// Proxy is d as an x/net/proxy dialer.
func Proxy(d *safedial.Dialer) proxy.ContextDialer { return d }

// GRPC returns the gRPC option that dials with d (gRPC passes no network).
func GRPC(d *safedial.Dialer) grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	})
}
