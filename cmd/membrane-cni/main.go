// Command membrane-cni is Membrane's CNI plugin. Container runtimes run it
// with CNI_* environment variables and the network config on stdin; it
// forwards the request to membrane-agent and prints a CNI result or error.
package main

import (
	"log/slog"
	"os"

	"github.com/membrane-net/membrane/internal/cni"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// stdout belongs to the CNI protocol; diagnostics go to stderr, which
	// runtimes capture. MEMBRANE_CNI_DEBUG=1 turns on debug logging.
	level := slog.LevelWarn
	if os.Getenv("MEMBRANE_CNI_DEBUG") == "1" {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	p := cni.New(os.Stdout, logger)
	os.Exit(p.Run("CNI plugin membrane-cni " + version))
}
