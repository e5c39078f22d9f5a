package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/membrane-net/membrane/internal/api"
)

func (g *globals) client() *api.Client { return api.NewClient(g.socket) }

func (g *globals) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// explain turns an unreachable agent into a message that says what to do.
func (g *globals) explain(err error) error {
	if errors.Is(err, api.ErrAgentUnreachable) {
		return fmt.Errorf("cannot reach membrane-agent at %s: is it running? (start it, or point --socket / $MEMBRANE_SOCKET at it; for the lab: membrane lab status)", g.socket)
	}
	return err
}

// render writes v as json or yaml, or calls table for people.
func (g *globals) render(w io.Writer, v any, table func(io.Writer)) error {
	switch g.output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case "table", "":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		table(tw)
		return tw.Flush()
	default:
		return fmt.Errorf("--output %q: want table, json or yaml", g.output)
	}
}

func newStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the agent's health: kvstore, datapath, IPAM, endpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			st, err := g.client().Status(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), st, func(w io.Writer) {
				kv := "ok"
				if !st.Kvstore.Healthy {
					kv = "UNHEALTHY: " + st.Kvstore.Message
				}
				fmt.Fprintf(w, "Node:\t%s\n", st.NodeName)
				fmt.Fprintf(w, "Version:\t%s\n", st.Version)
				fmt.Fprintf(w, "Uptime:\t%s\n", time.Since(st.StartedAt).Truncate(time.Second))
				fmt.Fprintf(w, "Kvstore:\t%s (%s, %s)\n", kv, st.Kvstore.Mode, strings.Join(st.Kvstore.Endpoints, ","))
				fmt.Fprintf(w, "Pod CIDR:\t%s (router %s on %s)\n", st.PodCIDR, st.RouterIP, st.Datapath.HostDevice)
				fmt.Fprintf(w, "IPAM:\t%d/%d allocated\n", st.IPAM.Allocated, st.IPAM.Capacity)
				fmt.Fprintf(w, "Endpoints:\t%d\n", st.Endpoints)
				perr := ""
				if st.Policy.LastError != "" {
					perr = " — LAST COMPUTATION FAILED: " + st.Policy.LastError
				}
				fmt.Fprintf(w, "Policy:\t%d policies, %d namespaces, revision %d (store %d), computed in %s%s\n",
					st.Policy.Policies, st.Policy.Namespaces, st.Policy.Revision, st.Policy.RealizedRevision, st.Policy.LastDuration.Round(time.Microsecond), perr)
				serr := ""
				if st.Services.LastError != "" {
					serr = " — NOT FULLY APPLIED: " + st.Services.LastError
				}
				fmt.Fprintf(w, "Services:\t%d frontends, %d backends, synced in %s%s\n", st.Services.Frontends, st.Services.Backends,
					st.Services.LastDuration.Round(time.Microsecond), serr)
				for _, warn := range st.Services.Warnings {
					fmt.Fprintf(w, "\t%s\n", warn)
				}
				pct := 0.0
				if st.Datapath.EndpointMapSize > 0 {
					pct = 100 * float64(st.Datapath.EndpointEntries) / float64(st.Datapath.EndpointMapSize)
				}
				fmt.Fprintf(w, "BPF endpoint map:\t%d/%d (%.1f%%)\n", st.Datapath.EndpointEntries, st.Datapath.EndpointMapSize, pct)
				fmt.Fprintf(w, "BPF pins:\t%s\n", st.Datapath.PinDir)
				fmt.Fprintf(w, "Flow events:\tlevel %s, %d seen, %d lost (ring buffer full)\n", st.Datapath.MonitorLevel, st.Datapath.FlowsSeen, st.Datapath.EventsLost)
				for _, warn := range mapWarnings(st.Datapath.Maps) {
					fmt.Fprintf(w, "%s\n", warn)
				}
				fmt.Fprintf(w, "State dir:\t%s\n", st.StateDir)
			})
		},
	}
}

func newEndpointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "endpoint",
		Aliases: []string{"endpoints", "ep"},
		Short:   "List, inspect and relabel endpoints (workload attachments)",
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List endpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			eps, err := g.client().Endpoints(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), eps, func(w io.Writer) {
				fmt.Fprintln(w, "ID\tNAMESPACE\tNAME\tIPV4\tINTERFACE\tSTATE\tLABELS")
				for _, ep := range eps {
					fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", ep.ID, ep.Namespace, ep.Name, ep.IPv4, ep.HostIfName, ep.State, formatLabels(ep.Labels))
				}
			})
		},
	}
	get := &cobra.Command{
		Use:   "get ENDPOINT",
		Short: "Show one endpoint (by id, container id, namespace/name, name or IP)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			ep, err := g.client().Endpoint(ctx, args[0])
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), ep, func(w io.Writer) { printEndpoint(w, ep) })
		},
	}
	label := &cobra.Command{
		Use:   "label ENDPOINT KEY=VALUE... [KEY-...]",
		Short: "Set or remove labels of an endpoint (KEY- removes KEY)",
		Example: `  membrane endpoint label default/web app=web tier=frontend
  membrane endpoint label 3 tier-`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return patchEndpoint(g, cmd, args[0], func(ep api.Endpoint) (api.EndpointPatch, error) {
				labels, err := applyLabelArgs(ep.Labels, args[1:])
				return api.EndpointPatch{Labels: &labels}, err
			})
		},
	}
	ports := &cobra.Command{
		Use:     "ports ENDPOINT [NAME:PORT[/PROTO]...]",
		Short:   "Replace the named container ports of an endpoint (none given: clear them)",
		Example: "  membrane endpoint ports default/web http:80/tcp dns:53/udp",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ps, err := parsePorts(args[1:])
			if err != nil {
				return err
			}
			return patchEndpoint(g, cmd, args[0], func(api.Endpoint) (api.EndpointPatch, error) {
				return api.EndpointPatch{Ports: &ps}, nil
			})
		},
	}
	readiness := &cobra.Command{
		Use:     "readiness ENDPOINT ready|not-ready|terminating",
		Short:   "Set whether an endpoint takes new service connections (not-ready and terminating keep the ones they have)",
		Example: "  membrane endpoint readiness default/web-1 not-ready",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return patchEndpoint(g, cmd, args[0], func(api.Endpoint) (api.EndpointPatch, error) {
				return api.EndpointPatch{Readiness: &args[1]}, nil
			})
		},
	}
	cmd.AddCommand(list, get, label, ports, readiness)
	return cmd
}

// enforcement renders the endpoint map's flag bits.
func enforcement(flags uint16) string {
	var parts []string
	if flags&0x1 != 0 {
		parts = append(parts, "ingress-enforced")
	}
	if flags&0x2 != 0 {
		parts = append(parts, "egress-enforced")
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func printEndpoint(w io.Writer, ep api.Endpoint) {
	fmt.Fprintf(w, "ID:\t%d\n", ep.ID)
	fmt.Fprintf(w, "Pod:\t%s/%s\n", ep.Namespace, ep.Name)
	fmt.Fprintf(w, "Container:\t%s\n", ep.ContainerID)
	fmt.Fprintf(w, "State:\t%s\n", ep.State)
	if ep.Readiness != "" {
		fmt.Fprintf(w, "Readiness:\t%s (no new service connections)\n", ep.Readiness)
	}
	fmt.Fprintf(w, "IPv4:\t%s\n", ep.IPv4)
	fmt.Fprintf(w, "Pod interface:\t%s (%s) in %s\n", ep.IfName, ep.MAC, ep.Netns)
	fmt.Fprintf(w, "Node interface:\t%s (ifindex %d, %s)\n", ep.HostIfName, ep.HostIfIndex, ep.HostMAC)
	fmt.Fprintf(w, "Labels:\t%s\n", formatLabels(ep.Labels))
	fmt.Fprintf(w, "Identity:\t%d\n", ep.Identity)
	fmt.Fprintf(w, "Policy:\tingress enforced: %v, egress enforced: %v\n", ep.IngressEnforced, ep.EgressEnforced)
	var ps []string
	for _, p := range ep.Ports {
		ps = append(ps, fmt.Sprintf("%s:%d/%s", p.Name, p.Port, p.Protocol))
	}
	fmt.Fprintf(w, "Ports:\t%s\n", strings.Join(ps, " "))
	fmt.Fprintf(w, "Created:\t%s\n", ep.CreatedAt.Format(time.RFC3339))
}

func formatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}

// applyLabelArgs applies kubectl-style KEY=VALUE and KEY- arguments.
func applyLabelArgs(cur map[string]string, args []string) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range cur {
		out[k] = v
	}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			if k == "" {
				return nil, fmt.Errorf("label %q: empty key", a)
			}
			out[k] = v
			continue
		}
		if k, ok := strings.CutSuffix(a, "-"); ok && k != "" {
			delete(out, k)
			continue
		}
		return nil, fmt.Errorf("label %q: want KEY=VALUE or KEY-", a)
	}
	return out, nil
}

// parsePorts parses NAME:PORT[/PROTO] arguments.
func parsePorts(args []string) ([]api.NamedPort, error) {
	out := []api.NamedPort{}
	for _, a := range args {
		name, rest, ok := strings.Cut(a, ":")
		if !ok || name == "" {
			return nil, fmt.Errorf("port %q: want NAME:PORT[/PROTO]", a)
		}
		num, proto, _ := strings.Cut(rest, "/")
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q: %q is not a port number 1-65535", a, num)
		}
		if proto == "" {
			proto = "TCP"
		}
		out = append(out, api.NamedPort{Name: name, Port: uint16(n), Protocol: strings.ToUpper(proto)})
	}
	return out, nil
}

func newBPFCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "Inspect the node's BPF maps"}
	ep := &cobra.Command{Use: "endpoint", Aliases: []string{"endpoints"}, Short: "The endpoint map (IP → interface, MACs)"}
	ep.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Dump the endpoint map as the datapath sees it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			entries, err := g.client().BPFEndpoints(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), entries, func(w io.Writer) {
				fmt.Fprintln(w, "IP\tIFINDEX\tPOD MAC\tNODE MAC\tENDPOINT\tIDENTITY\tFLAGS")
				for _, e := range entries {
					fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%d\t%s\n", e.IP, e.IfIndex, e.PodMAC, e.HostMAC, e.EndpointID, e.Identity, enforcement(e.Flags))
				}
			})
		},
	})
	cmd.AddCommand(ep)
	addBPFPolicyCmds(g, cmd)
	addBPFTunnelCmd(g, cmd)
	addBPFLBCmd(g, cmd)
	return cmd
}

// patchEndpoint reads endpoint ref, builds a patch from it, applies it and
// prints the result.
func patchEndpoint(g *globals, cmd *cobra.Command, ref string, build func(api.Endpoint) (api.EndpointPatch, error)) error {
	ctx, cancel := g.ctx()
	defer cancel()
	c := g.client()
	ep, err := c.Endpoint(ctx, ref)
	if err != nil {
		return g.explain(err)
	}
	p, err := build(ep)
	if err != nil {
		return err
	}
	ep, err = c.PatchEndpoint(ctx, ep.ID, p)
	if err != nil {
		return g.explain(err)
	}
	return g.render(cmd.OutOrStdout(), ep, func(w io.Writer) { printEndpoint(w, ep) })
}
