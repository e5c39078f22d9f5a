package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/membrane-net/membrane/internal/api"
)

// readManifests reads -f arguments ("-" is stdin) into one manifest.
func readManifests(cmd *cobra.Command, files []string) (string, error) {
	if len(files) == 0 {
		return "", fmt.Errorf("no manifest: give -f FILE (or -f - for stdin)")
	}
	var parts []string
	for _, f := range files {
		var b []byte
		var err error
		if f == "-" {
			b, err = io.ReadAll(cmd.InOrStdin())
		} else {
			b, err = os.ReadFile(f)
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", f, err)
		}
		parts = append(parts, string(b))
	}
	return strings.Join(parts, "\n---\n"), nil
}

func printChanges(w io.Writer, out api.ApplyResponse) {
	for _, c := range out.Changes {
		ref := strings.ToLower(c.Ref.Kind) + "/" + c.Ref.Name
		if c.Ref.Namespace != "" {
			ref = strings.ToLower(c.Ref.Kind) + "/" + c.Ref.Namespace + "/" + c.Ref.Name
		}
		fmt.Fprintf(w, "%s %s\n", ref, c.Action)
	}
	if out.RealizedIn > 0 {
		fmt.Fprintf(w, "enforced by this node's datapath %s after storing (revision %d)\n", out.RealizedIn.Round(time.Microsecond), out.Revision)
	}
}

func newApplyCmd(g *globals) *cobra.Command {
	var files []string
	var wait bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Store NetworkPolicy, MembranePolicy and Namespace manifests",
		Long: `apply validates every document first; if any is invalid nothing is
stored and every problem is listed with its field path. Valid manifests are
stored in etcd in one transaction. With --wait (the default) the command
returns once this node's datapath enforces them.`,
		Example: "  membrane apply -f policy.yaml\n  cat np.yaml | membrane apply -f -",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := readManifests(cmd, files)
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx()
			defer cancel()
			out, err := g.client().Apply(ctx, api.ApplyRequest{Manifest: m, Wait: wait})
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), out, func(w io.Writer) { printChanges(w, out) })
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "manifest file(s); - for stdin")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until this node enforces the result")
	return cmd
}

func newDeleteCmd(g *globals) *cobra.Command {
	var files []string
	var ns string
	cmd := &cobra.Command{
		Use:   "delete (-f FILE | KIND NAME)",
		Short: "Delete stored resources",
		Example: `  membrane delete -f policy.yaml
  membrane delete networkpolicy deny-all -n shop
  membrane delete namespace shop`,
		Args: cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var m string
			switch {
			case len(files) > 0 && len(args) == 0:
				var err error
				if m, err = readManifests(cmd, files); err != nil {
					return err
				}
			case len(files) == 0 && len(args) == 2:
				kind, apiVersion, err := canonicalKind(args[0])
				if err != nil {
					return err
				}
				if kind == "Namespace" {
					m = fmt.Sprintf("apiVersion: %s\nkind: %s\nmetadata:\n  name: %s\n", apiVersion, kind, args[1])
				} else {
					// A minimal valid object of the kind: only its name matters.
					sel := "podSelector: {}"
					if kind == "MembranePolicy" {
						sel = "endpointSelector: {}"
					}
					m = fmt.Sprintf("apiVersion: %s\nkind: %s\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  %s\n", apiVersion, kind, args[1], ns, sel)
				}
			default:
				return fmt.Errorf("give either -f FILE or KIND NAME")
			}
			ctx, cancel := g.ctx()
			defer cancel()
			out, err := g.client().DeleteResources(ctx, api.ApplyRequest{Manifest: m, Wait: true})
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), out, func(w io.Writer) { printChanges(w, out) })
		},
	}
	cmd.Flags().StringSliceVarP(&files, "filename", "f", nil, "manifest file(s) naming what to delete; - for stdin")
	cmd.Flags().StringVarP(&ns, "namespace", "n", "default", "namespace of KIND NAME")
	return cmd
}

// canonicalKind accepts kubectl-style spellings.
func canonicalKind(s string) (kind, apiVersion string, err error) {
	switch strings.ToLower(s) {
	case "networkpolicy", "networkpolicies", "netpol":
		return "NetworkPolicy", "networking.k8s.io/v1", nil
	case "membranepolicy", "membranepolicies", "mp":
		return "MembranePolicy", "membrane.io/v1", nil
	case "namespace", "namespaces", "ns":
		return "Namespace", "v1", nil
	}
	return "", "", fmt.Errorf("kind %q: want networkpolicy, membranepolicy or namespace", s)
}

func newGetCmd(g *globals) *cobra.Command {
	var ns string
	var all bool
	cmd := &cobra.Command{
		Use:     "get KIND [NAME]",
		Short:   "List stored resources of a kind, or show one as YAML",
		Example: "  membrane get networkpolicy -A\n  membrane get membranepolicy allow-web -n shop -o yaml",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, _, err := canonicalKind(args[0])
			if err != nil {
				return err
			}
			ctx, cancel := g.ctx()
			defer cancel()
			rs, err := g.client().Resources(ctx)
			if err != nil {
				return g.explain(err)
			}
			var sel []api.Resource
			for _, r := range rs {
				if r.Ref.Kind != kind {
					continue
				}
				if kind != "Namespace" && !all && r.Ref.Namespace != ns {
					continue
				}
				if len(args) == 2 && r.Ref.Name != args[1] {
					continue
				}
				sel = append(sel, r)
			}
			if len(args) == 2 {
				if len(sel) == 0 {
					return fmt.Errorf("%s %q not found in namespace %q", strings.ToLower(kind), args[1], ns)
				}
				return printManifest(cmd.OutOrStdout(), g.output, sel[0])
			}
			return g.render(cmd.OutOrStdout(), sel, func(w io.Writer) { resourceTable(w, sel) })
		},
	}
	cmd.Flags().StringVarP(&ns, "namespace", "n", "default", "namespace")
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "all namespaces")
	return cmd
}

func printManifest(w io.Writer, format string, r api.Resource) error {
	if format == "json" {
		var buf bytes.Buffer
		if err := json.Indent(&buf, r.Manifest, "", "  "); err != nil {
			return err
		}
		buf.WriteByte('\n')
		_, err := w.Write(buf.Bytes())
		return err
	}
	y, err := yaml.JSONToYAML(r.Manifest)
	if err != nil {
		return err
	}
	_, err = w.Write(y)
	return err
}

func resourceTable(w io.Writer, rs []api.Resource) {
	fmt.Fprintln(w, "KIND\tNAMESPACE\tNAME\tSELECTS (local endpoints)")
	for _, r := range rs {
		sel := "-"
		if len(r.Selects) > 0 {
			sel = strings.Join(r.Selects, ",")
		}
		if r.Ref.Kind == "Namespace" {
			sel = ""
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.Ref.Kind, r.Ref.Namespace, r.Ref.Name, sel)
	}
}

func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "List policies and explain verdicts"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List NetworkPolicies and MembranePolicies of all namespaces",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			rs, err := g.client().Resources(ctx)
			if err != nil {
				return g.explain(err)
			}
			var pols []api.Resource
			for _, r := range rs {
				if r.Ref.Kind != "Namespace" {
					pols = append(pols, r)
				}
			}
			return g.render(cmd.OutOrStdout(), pols, func(w io.Writer) { resourceTable(w, pols) })
		},
	}
	get := &cobra.Command{
		Use:   "get NAMESPACE/NAME",
		Short: "Show a policy (of either kind) as YAML",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, ok := strings.Cut(args[0], "/")
			if !ok {
				ns, name = "default", args[0]
			}
			ctx, cancel := g.ctx()
			defer cancel()
			rs, err := g.client().Resources(ctx)
			if err != nil {
				return g.explain(err)
			}
			for _, r := range rs {
				if r.Ref.Kind != "Namespace" && r.Ref.Namespace == ns && r.Ref.Name == name {
					return printManifest(cmd.OutOrStdout(), g.output, r)
				}
			}
			return fmt.Errorf("no policy %s/%s", ns, name)
		},
	}
	var from, to, port string
	trace := &cobra.Command{
		Use:   "trace --from PEER --to PEER --port PORT/PROTO",
		Short: "Explain whether a packet would pass, and which rule decides",
		Long: `trace replays a connection's first packet against the policy this agent
enforces and prints the verdict of the source's egress and the destination's
ingress, each with the deciding rule of the deciding policy.

A PEER is a local pod (namespace/name, name, endpoint id or IP), another IP
address, id:<n> for an identity, or a label set (k=v,k2=v2) that matches
exactly one known identity.`,
		Example: `  membrane policy trace --from tools/client --to shop/web-1 --port 8080/tcp
  membrane policy trace --from 192.0.2.10 --to shop/db --port 9090/udp
  membrane policy trace --from app=client --to app=db --port 9090/tcp`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, proto, _ := strings.Cut(port, "/")
			if proto == "" {
				proto = "TCP"
			}
			n, err := strconv.ParseUint(p, 10, 16)
			if err != nil && !strings.EqualFold(proto, "icmp") {
				return fmt.Errorf("--port %q: want PORT/PROTO, e.g. 80/tcp", port)
			}
			ctx, cancel := g.ctx()
			defer cancel()
			out, err := g.client().Trace(ctx, api.TraceRequest{From: from, To: to, Port: uint16(n), Protocol: strings.ToUpper(proto)})
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), out, func(w io.Writer) {
				verdict := "DENIED"
				if out.Allowed {
					verdict = "ALLOWED"
				}
				fmt.Fprintf(w, "From:\t%s\n", out.From)
				fmt.Fprintf(w, "To:\t%s\n", out.To)
				fmt.Fprintf(w, "Port:\t%s\n", port)
				fmt.Fprintf(w, "Verdict:\t%s\n", verdict)
				for _, d := range []struct {
					name string
					d    api.TraceDecision
				}{{"Egress (source)", out.Egress}, {"Ingress (destination)", out.Ingress}} {
					line := d.d.Decision
					switch {
					case strings.HasPrefix(d.d.Rule, "no rule"):
						line += " (" + d.d.Rule + ")"
					case d.d.Rule != "":
						line += " by " + d.d.Rule
					}
					fmt.Fprintf(w, "%s:\t%s\n", d.name, line)
				}
			})
		},
	}
	trace.Flags().StringVar(&from, "from", "", "source peer")
	trace.Flags().StringVar(&to, "to", "", "destination peer")
	trace.Flags().StringVar(&port, "port", "", "destination port and protocol, e.g. 80/tcp")
	_ = trace.MarkFlagRequired("from")
	_ = trace.MarkFlagRequired("to")
	_ = trace.MarkFlagRequired("port")
	cmd.AddCommand(list, get, trace)
	return cmd
}

func newIdentityCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Aliases: []string{"identities"}, Short: "Security identities (label sets ↔ numbers)"}
	fetch := func() ([]api.IdentityInfo, error) {
		ctx, cancel := g.ctx()
		defer cancel()
		ids, err := g.client().Identities(ctx)
		return ids, g.explain(err)
	}
	table := func(w io.Writer, ids []api.IdentityInfo) {
		fmt.Fprintln(w, "ID\tSCOPE\tLABELS\tLOCAL ENDPOINTS")
		for _, id := range ids {
			eps := strings.Join(id.Endpoints, ",")
			if eps == "" {
				eps = "-"
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", id.ID, id.Scope, formatLabels(id.Labels), eps)
		}
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List reserved, cluster and node-local (CIDR) identities",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ids, err := fetch()
			if err != nil {
				return err
			}
			return g.render(cmd.OutOrStdout(), ids, func(w io.Writer) { table(w, ids) })
		},
	}, &cobra.Command{
		Use:   "get ID",
		Short: "Show one identity",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.ParseUint(args[0], 10, 32)
			if err != nil {
				return fmt.Errorf("identity %q: want a number", args[0])
			}
			ids, err := fetch()
			if err != nil {
				return err
			}
			for _, id := range ids {
				if uint64(id.ID) == n {
					return g.render(cmd.OutOrStdout(), id, func(w io.Writer) { table(w, []api.IdentityInfo{id}) })
				}
			}
			return fmt.Errorf("identity %d not found", n)
		},
	})
	return cmd
}

// addBPFPolicyCmds extends `membrane bpf` with policy, ipcache and ct.
func addBPFPolicyCmds(g *globals, bpf *cobra.Command) {
	pol := &cobra.Command{Use: "policy", Short: "An endpoint's policy map"}
	pol.AddCommand(&cobra.Command{
		Use:   "get ENDPOINT",
		Short: "Dump the policy map of an endpoint (id, ns/name, name or IP) with the rule behind each entry",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			p, err := g.client().BPFPolicy(ctx, args[0])
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), p, func(w io.Writer) {
				fmt.Fprintf(w, "Endpoint %d, identity %d, ingress enforced: %v, egress enforced: %v\n", p.Endpoint, p.Identity, p.IngressEnforced, p.EgressEnforced)
				fmt.Fprintln(w, "DIRECTION\tIDENTITY\tPROTO\tPORTS\tVERDICT\tRULE")
				for _, e := range p.Entries {
					id := strconv.FormatUint(uint64(e.Identity), 10)
					if e.Identity == 0 {
						id = "any"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Direction, id, e.Protocol, e.Ports, e.Verdict, e.Rule)
				}
			})
		},
	})
	ipc := &cobra.Command{Use: "ipcache", Short: "The ipcache (IP/prefix → identity)"}
	ipc.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Dump the ipcache",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			es, err := g.client().BPFIPCache(ctx)
			if err != nil {
				return g.explain(err)
			}
			return g.render(cmd.OutOrStdout(), es, func(w io.Writer) {
				fmt.Fprintln(w, "PREFIX\tIDENTITY\tCIDR IDENTITY")
				for _, e := range es {
					fmt.Fprintf(w, "%s\t%d\t%d\n", e.Prefix, e.Identity, e.CIDRIdentity)
				}
			})
		},
	})
	ct := &cobra.Command{Use: "ct", Short: "Connection tracking"}
	ct.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "Dump tracked connections",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			es, err := g.client().BPFCT(ctx)
			if err != nil {
				return g.explain(err)
			}
			sort.Slice(es, func(i, j int) bool { return es[i].Src.String() < es[j].Src.String() })
			return g.render(cmd.OutOrStdout(), es, func(w io.Writer) {
				fmt.Fprintln(w, "PROTO\tSOURCE\tDESTINATION\tEXPIRES\tFLAGS\tSRC IDENTITY\tPACKETS\tBYTES")
				for _, e := range es {
					var flags []string
					if e.SeenReply {
						flags = append(flags, "seen-reply")
					}
					if e.Closing {
						flags = append(flags, "closing")
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", e.Protocol, e.Src, e.Dst, e.ExpiresIn.Round(time.Second), strings.Join(flags, ","), e.SrcIdentity, e.Packets, e.Bytes)
				}
			})
		},
	}, &cobra.Command{
		Use:   "flush",
		Short: "Delete every tracked connection (established flows are re-checked against policy)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := g.ctx()
			defer cancel()
			n, err := g.client().BPFCTFlush(ctx)
			if err != nil {
				return g.explain(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "flushed %d entries\n", n)
			return nil
		},
	})
	bpf.AddCommand(pol, ipc, ct)
}
