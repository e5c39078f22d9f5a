package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func newNodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Aliases: []string{"nodes"}, Short: "Cluster nodes as registered in etcd"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List nodes: address, pod CIDR, routing mode (a node disappears when its lease expires)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			ns, err := g.client().Nodes(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), ns, func(w io.Writer) {
				fmt.Fprintln(w, "NAME\tIP\tPOD CIDR\tMODE\tHEALTH\tVERSION")
				for _, n := range ns {
					name := n.Name
					if n.Self {
						name += " (this node)"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", name, n.IP, n.PodCIDR, n.RoutingMode, n.Health, n.Version)
				}
			})
		},
	})
	return cmd
}

func newBGPCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bgp", Short: "The node's BGP speaker (native routing)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "peers",
		Short: "List BGP sessions and their state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			ps, err := g.client().BGPPeers(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), ps, func(w io.Writer) {
				fmt.Fprintln(w, "PEER\tASN\tSTATE\tUPTIME\tRECEIVED\tACCEPTED\tADVERTISED")
				for _, p := range ps {
					fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%d\t%d\n", p.Address, p.ASN, p.State, p.Uptime, p.Received, p.Accepted, p.Sent)
				}
			})
		},
	}, &cobra.Command{
		Use:   "routes",
		Short: "List the BGP table (local = advertised by this node)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			rs, err := g.client().BGPRoutes(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), rs, func(w io.Writer) {
				fmt.Fprintln(w, "PREFIX\tNEXT HOP\tFROM\tBEST")
				for _, r := range rs {
					from := r.Peer
					if r.Local {
						from = "local"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%v\n", r.Prefix, r.NextHop, from, r.Best)
				}
			})
		},
	})
	return cmd
}

// addBPFTunnelCmd adds `membrane bpf tunnel list`.
func addBPFTunnelCmd(g *globals, bpf *cobra.Command) {
	t := &cobra.Command{Use: "tunnel", Short: "The tunnel map (remote pod CIDR → node IP)"}
	t.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Dump the tunnel map",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			ts, err := g.client().BPFTunnels(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), ts, func(w io.Writer) {
				fmt.Fprintln(w, "POD CIDR\tNODE IP")
				for _, e := range ts {
					fmt.Fprintf(w, "%s\t%s\n", e.PodCIDR, e.NodeIP)
				}
			})
		},
	})
	bpf.AddCommand(t)
}
