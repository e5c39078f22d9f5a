package lab

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/membrane-net/membrane/internal/kvstore"
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
	e, _, err := kvstore.StartEmbedded(ctx, dir, kvstore.EmbeddedOptions{Name: "membrane-lab", LogLevel: "warn", LogOutput: "stderr"}, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		return err
	}
	defer e.Close()
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
