package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/internal/api"
)

func newServiceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "service", Aliases: []string{"services", "svc"},
		Short: "Services as this node load-balances them (frontends and backends)"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List every frontend (cluster IP or NodePort) with its backends and their states",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			ss, err := g.client().Services(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), ss, func(w io.Writer) {
				fmt.Fprintln(w, "SERVICE\tKIND\tFRONTEND\tPROTO\tALGORITHM\tAFFINITY\tBACKENDS")
				for _, s := range ss {
					for _, f := range s.Frontends {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, f.Kind, f.Address, f.Protocol, f.Algorithm,
							affinity(f), backendSummary(f.Backends))
					}
				}
			})
		},
	}
	get := &cobra.Command{
		Use:     "get SERVICE",
		Short:   "Show one service (namespace/name, or name in namespace default) with every backend",
		Example: "  membrane service get default/web",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			s, err := g.client().Service(ctx, args[0])
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), s, func(w io.Writer) {
				fmt.Fprintf(w, "Service:\t%s\n", s.Name)
				for _, f := range s.Frontends {
					name := ""
					if f.PortName != "" {
						name = " (" + f.PortName + ")"
					}
					fmt.Fprintf(w, "\n%s\t%s %s%s, %s, affinity %s, service port id %d\n", f.Kind, f.Address, f.Protocol, name, f.Algorithm, affinity(f), f.RevNatID)
					if len(f.Backends) == 0 {
						fmt.Fprintln(w, "\t(no backends: connections are refused)")
						continue
					}
					fmt.Fprintln(w, "\tBACKEND\tSTATE\tNODE\tPOD\tID")
					for _, b := range f.Backends {
						pod := b.Pod
						if pod == "" {
							pod = "-"
						}
						fmt.Fprintf(w, "\t%s\t%s\t%s\t%s\t%d\n", b.Address, b.State, orDash(b.Node), pod, b.ID)
					}
				}
			})
		},
	}
	cmd.AddCommand(list, get)
	return cmd
}

func affinity(f api.ServiceFrontend) string {
	if f.AffinityTimeout == 0 {
		return "none"
	}
	return "ClientIP " + f.AffinityTimeout.String()
}

// backendSummary prints "3 (2 active, 1 not-ready)" or "none".
func backendSummary(bs []api.ServiceBackend) string {
	if len(bs) == 0 {
		return "none"
	}
	counts := map[string]int{}
	var order []string
	for _, b := range bs {
		if counts[b.State] == 0 {
			order = append(order, b.State)
		}
		counts[b.State]++
	}
	parts := make([]string, len(order))
	for i, st := range order {
		parts[i] = fmt.Sprintf("%d %s", counts[st], st)
	}
	return fmt.Sprintf("%d (%s)", len(bs), strings.Join(parts, ", "))
}

// addBPFLBCmd adds `membrane bpf lb list`.
func addBPFLBCmd(g *globals, bpf *cobra.Command) {
	lb := &cobra.Command{Use: "lb", Short: "The load-balancing maps (service ports, backends)"}
	lb.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Dump the service and backend maps: slots in order, Maglev shares, flags",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			d, err := g.client().BPFLB(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), d, func(w io.Writer) {
				fmt.Fprintln(w, "FRONTEND\tPROTO\tID\tFLAGS\tBACKEND SLOTS\tMAGLEV SHARES")
				for _, s := range d.Services {
					slots := make([]string, len(s.Backends))
					for i, id := range s.Backends {
						slots[i] = fmt.Sprint(id)
					}
					var shares []string
					for _, id := range s.Backends {
						if n, ok := s.MaglevSlots[id]; ok {
							shares = append(shares, fmt.Sprintf("%d:%d", id, n))
						}
					}
					flags := strings.Join(s.Flags, ",")
					if s.AffinityTimeout > 0 {
						flags += fmt.Sprintf("(%ds)", s.AffinityTimeout)
					}
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", s.Frontend, s.Protocol, s.RevNatID, orDash(flags),
						orDash(strings.Join(slots, ",")), orDash(strings.Join(shares, " ")))
				}
				fmt.Fprintln(w)
				fmt.Fprintln(w, "BACKEND ID\tADDRESS\tPROTO\tSTATE")
				for _, b := range d.Backends {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", b.ID, b.Address, b.Protocol, b.State)
				}
			})
		},
	})
	bpf.AddCommand(lb)
}
