package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// ServeEtcd runs the lab-wide embedded etcd server until ctx ends: one
// member whose client and peer URLs are the unix sockets client.sock and
// peer.sock in dir, data in dir/data. It is `membrane lab etcd-serve`,
// which the lab starts detached inside the fabric namespace so that it
// outlives the CLI; nothing listens on TCP.
func ServeEtcd(ctx context.Context, dir string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("etcd dir %q is not absolute", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create etcd dir: %w", err)
	}
	clientSock := filepath.Join(dir, "client.sock")
	peerSock := filepath.Join(dir, "peer.sock")
	// Stale sockets from a killed server would make the listeners fail.
	for _, p := range []string{clientSock, peerSock} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket %s: %w", p, err)
		}
	}
	cu := url.URL{Scheme: "unix", Path: clientSock}
	pu := url.URL{Scheme: "unix", Path: peerSock}
	cfg := embed.NewConfig()
	cfg.Name = "membrane-lab"
	cfg.Dir = filepath.Join(dir, "data")
	cfg.ListenClientUrls = []url.URL{cu}
	cfg.AdvertiseClientUrls = []url.URL{cu}
	cfg.ListenPeerUrls = []url.URL{pu}
	cfg.AdvertisePeerUrls = []url.URL{pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{"stderr"}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd in %s: %w", dir, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return fmt.Errorf("start etcd in %s: %w", dir, err)
	case <-time.After(60 * time.Second):
		return fmt.Errorf("start etcd in %s: not ready after 60s", dir)
	case <-ctx.Done():
		return nil
	}
	log.Info("lab etcd ready", "client", cu.String())
	select {
	case <-ctx.Done():
		log.Info("lab etcd stopping")
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}

// etcdHealthy asks an etcd client URL (unix:///path or http://ip:port)
// for GET /health, from inside the namespace at nsPath ("" = ours), and
// reports whether the member answers that it has a leader.
func etcdHealthy(ctx context.Context, nsPath, clientURL string) error {
	u, err := url.Parse(clientURL)
	if err != nil {
		return fmt.Errorf("parse etcd url %q: %w", clientURL, err)
	}
	var network, addr string
	switch u.Scheme {
	case "unix":
		network, addr = "unix", u.Path
	case "http":
		network, addr = "tcp4", u.Host
	default:
		return fmt.Errorf("etcd url %q: want unix:// or http://", clientURL)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var c net.Conn
			err := inNetns(nsPath, func() error {
				var err error
				d := net.Dialer{Timeout: 2 * time.Second}
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	hc := http.Client{Transport: tr, Timeout: 3 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://etcd/health", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	if resp.StatusCode != http.StatusOK || !strings.Contains(b.String(), `"health":"true"`) {
		return fmt.Errorf("etcd %s unhealthy: %s %s", clientURL, resp.Status, strings.TrimSpace(b.String()))
	}
	return nil
}
