// Command membrane-agent is Membrane's per-node agent.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/internal/agent"
)

func main() {
	cfg := agent.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "membrane-agent",
		Short: "Membrane's per-node agent: BPF datapath, endpoints, IPAM and the node API",
		Long: `membrane-agent owns this node's BPF datapath (pinned under --bpf-root/<node-name>),
its host devices (mbr_host/mbr_net), endpoint veths, IPAM from --pod-cidr and
the HTTP/JSON API on --socket used by membrane-cni and the membrane CLI.

By default it starts an embedded etcd under --state-dir, served on unix
sockets only; --kvstore-endpoints connects to an external cluster instead.

SIGTERM or SIGINT stop the agent cleanly. BPF programs, maps and devices are
left in place, so traffic keeps flowing until the agent starts again and
restores its endpoints.`,
		Example:       "  membrane-agent --node-name node1 --pod-cidr 10.200.1.0/24",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cfg)
		},
	}
	cfg.RegisterFlags(cmd.Flags())
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "membrane-agent:", err)
		os.Exit(1)
	}
}

func run(cfg agent.Config) error {
	var level slog.Level
	_ = level.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel)))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	a, err := agent.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := a.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("stopping agent")
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return a.Stop(sctx)
}
