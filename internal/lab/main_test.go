package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
)

// serveEnv makes the test binary act as `membrane lab serve`, so the
// privileged tests can start real detached servers without building the
// CLI. Its value is a JSON ServeConfig.
const serveEnv = "MEMBRANE_LAB_TEST_SERVE"

// etcdServeEnv makes the test binary act as `membrane lab etcd-serve
// --dir DIR` (the lab runs "<bin> lab etcd-serve --dir DIR").
const etcdServeEnv = "MEMBRANE_LAB_TEST_ETCD_SERVE"

func TestMain(m *testing.M) {
	if v := os.Getenv(serveEnv); v != "" {
		var cfg ServeConfig
		if err := json.Unmarshal([]byte(v), &cfg); err != nil {
			fmt.Fprintln(os.Stderr, "serve config:", err)
			os.Exit(2)
		}
		ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer cancel()
		if err := Serve(ctx, cfg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(etcdServeEnv) != "" {
		dir := ""
		for i, a := range os.Args {
			if a == "--dir" && i+1 < len(os.Args) {
				dir = os.Args[i+1]
			}
		}
		ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer cancel()
		if err := ServeEtcd(ctx, dir, nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
