// Command membrane is Membrane's CLI: it talks to the agent's API and drives
// the lab.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/internal/api"
)

// globals are the flags every command shares.
type globals struct {
	socket string
	output string
}

func main() {
	g := &globals{}
	root := &cobra.Command{
		Use:   "membrane",
		Short: "Membrane: eBPF container networking — CLI for the node agent and the lab",
		Long: `membrane talks to the membrane-agent of this node over its unix socket
(--socket, or $MEMBRANE_SOCKET; default ` + api.DefaultSocketPath + `)
and drives the lab, a virtual cluster in network namespaces.

Output is a table for people; -o json (or yaml) for scripts.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := os.Getenv("MEMBRANE_SOCKET")
	if def == "" {
		def = api.DefaultSocketPath
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", def, "agent API socket ($MEMBRANE_SOCKET)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	root.AddCommand(newStatusCmd(g), newEndpointCmd(g), newBPFCmd(g), newApplyCmd(g), newDeleteCmd(g), newGetCmd(g),
		newPolicyCmd(g), newIdentityCmd(g), newObserveCmd(g), newMonitorCmd(g), newNodeCmd(g), newBGPCmd(g), newServiceCmd(g), newLabCmd())
	if err := root.Execute(); err != nil {
		// A command run with `lab exec` passes its own exit status through.
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) && ec.ExitCode() > 0 {
			os.Exit(ec.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
