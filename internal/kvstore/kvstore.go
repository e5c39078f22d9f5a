package kvstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Prefix is the root of every key Membrane writes.
const Prefix = "/membrane/v1/"

// Config selects and configures the store.
type Config struct {
	// Endpoints of an external etcd cluster. Empty means: start an embedded
	// server under DataDir.
	Endpoints []string
	// DataDir holds the embedded server's data and sockets.
	DataDir string
	// DialTimeout bounds the first connection (default 10s).
	DialTimeout time.Duration
	Logger      *slog.Logger
	// OnOp, if set, is called after every unary etcd request with its
	// method (e.g. "/etcdserverpb.KV/Txn") and error, for metrics.
	OnOp func(method string, err error)
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 && c.DataDir == "" {
		return errors.New("kvstore: no external endpoints and no data directory for the embedded etcd")
	}
	for _, e := range c.Endpoints {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "unix") {
			return fmt.Errorf("kvstore: endpoint %q: want http://host:port, https://host:port or unix:///path", e)
		}
	}
	return nil
}

// Store is a connected etcd client and, in embedded mode, the server.
type Store struct {
	Client    *clientv3.Client
	embedded  *embed.Etcd
	endpoints []string
	log       *slog.Logger
}

// Open starts the embedded server if configured, then connects.
func Open(ctx context.Context, cfg Config) (_ *Store, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	s := &Store{log: log, endpoints: cfg.Endpoints}
	if len(cfg.Endpoints) == 0 {
		e, clientURL, err := StartEmbedded(ctx, cfg.DataDir, EmbeddedOptions{}, log)
		if err != nil {
			return nil, err
		}
		s.embedded = e
		s.endpoints = []string{clientURL}
		defer func() {
			if retErr != nil {
				e.Close()
			}
		}()
	}
	ccfg := clientv3.Config{
		Endpoints:   s.endpoints,
		DialTimeout: cfg.DialTimeout,
		Logger:      zap.NewNop(),
	}
	if cfg.OnOp != nil {
		onOp := cfg.OnOp
		ccfg.DialOptions = append(ccfg.DialOptions, grpc.WithChainUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				err := invoker(ctx, method, req, reply, cc, opts...)
				onOp(method, err)
				return err
			}))
	}
	c, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", s.endpoints, err)
	}
	s.Client = c
	// Prove the connection works before declaring success.
	hctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := c.Get(hctx, Prefix+"probe"); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect to etcd %v: first request: %w", s.endpoints, err)
	}
	return s, nil
}

// EmbeddedOptions tune StartEmbedded; the zero value is the agent's:
// member "membrane", etcd's own log silenced.
type EmbeddedOptions struct {
	Name      string // member name (default "membrane")
	LogLevel  string // etcd's zap level (default "fatal")
	LogOutput string // etcd's log output (default "/dev/null")
}

// StartEmbedded starts a single-member etcd whose client and peer URLs are
// the unix sockets client.sock and peer.sock in dir (data in dir/data), so
// nothing listens on a network port, and waits until it is ready. It
// returns the server and its client URL.
func StartEmbedded(ctx context.Context, dir string, opts EmbeddedOptions, log *slog.Logger) (*embed.Etcd, string, error) {
	if opts.Name == "" {
		opts.Name = "membrane"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "fatal"
	}
	if opts.LogOutput == "" {
		opts.LogOutput = "/dev/null"
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, "", fmt.Errorf("start embedded etcd: create %s: %w", dir, err)
	}
	clientSock := filepath.Join(dir, "client.sock")
	peerSock := filepath.Join(dir, "peer.sock")
	// Stale sockets from a crash would make the listeners fail.
	for _, p := range []string{clientSock, peerSock} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("start embedded etcd: remove stale socket %s: %w", p, err)
		}
	}
	cu := url.URL{Scheme: "unix", Path: clientSock}
	pu := url.URL{Scheme: "unix", Path: peerSock}
	cfg := embed.NewConfig()
	cfg.Name = opts.Name
	cfg.Dir = filepath.Join(dir, "data")
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.LogLevel = opts.LogLevel
	// One `membrane apply` is one transaction: allow manifests of up to
	// MaxApplyObjects objects (etcd's default is 128 operations).
	cfg.MaxTxnOps = 2 * MaxApplyObjects
	cfg.MaxRequestBytes = 8 << 20
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{opts.LogOutput}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("start embedded etcd in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", fmt.Errorf("start embedded etcd in %s: %w", dir, err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", fmt.Errorf("start embedded etcd in %s: not ready after 60s", dir)
	case <-ctx.Done():
		e.Close()
		return nil, "", fmt.Errorf("start embedded etcd in %s: %w", dir, ctx.Err())
	}
	log.Info("embedded etcd ready", "dir", dir, "client", cu.String())
	return e, cu.String(), nil
}

// Mode is "embedded" or "external".
func (s *Store) Mode() string {
	if s.embedded != nil {
		return "embedded"
	}
	return "external"
}

// Endpoints are the client URLs in use.
func (s *Store) Endpoints() []string { return append([]string(nil), s.endpoints...) }

// Healthy performs a quick read.
func (s *Store) Healthy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err := s.Client.Get(ctx, Prefix+"probe")
	return err
}

// Close disconnects and stops the embedded server.
func (s *Store) Close() error {
	var errs []error
	if s.Client != nil {
		errs = append(errs, s.Client.Close())
	}
	if s.embedded != nil {
		s.embedded.Close()
	}
	return errors.Join(errs...)
}
