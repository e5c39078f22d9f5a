package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/membrane-net/membrane/internal/lab"
)

// labFlags are the flags every `membrane lab` command shares.
type labFlags struct {
	name string
	dir  string
}

func (f *labFlags) labDir() string {
	if f.dir != "" {
		return f.dir
	}
	return filepath.Join(lab.DefaultBaseDir, f.name)
}

func (f *labFlags) open() (*lab.Lab, error) {
	if err := lab.ValidateName(f.name); err != nil {
		return nil, err
	}
	l, err := lab.OpenDir(f.labDir())
	if errors.Is(err, lab.ErrNotFound) {
		return nil, fmt.Errorf("lab %q does not exist (create it with `membrane lab up --name %s`)", f.name, f.name)
	}
	if err != nil {
		return nil, err
	}
	l.SetLogger(labLogger())
	return l, nil
}

// labLogger prints progress to stderr, without timestamps.
func labLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
}

// labContext is cancelled by Ctrl-C or SIGTERM; lab operations then roll
// back what they had done.
func labContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	parent := cmd.Context()
	if parent == nil {
		parent = context.Background()
	}
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// outputFormat reads the root's -o/--output flag, if there is one.
func outputFormat(cmd *cobra.Command) string {
	if f := cmd.Flag("output"); f != nil {
		return f.Value.String()
	}
	return "table"
}

// renderOut writes v as json or yaml, or calls table.
func renderOut(cmd *cobra.Command, v any, table func(io.Writer) error) error {
	w := cmd.OutOrStdout()
	switch o := outputFormat(cmd); o {
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
		return table(w)
	default:
		return fmt.Errorf("--output %q: want table, json or yaml", o)
	}
}

func newLabCmd() *cobra.Command {
	f := &labFlags{}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a virtual Membrane cluster in network namespaces on this machine",
		Long: `The lab builds a throw-away cluster inside network namespaces on this
machine: a node namespace running membrane-agent, and pods as namespaces
attached through the real membrane-cni plugin (invoked with libcni, as a
container runtime would). Every pod runs a small traffic server, so that
reachability between pods can be measured with 'membrane lab probe'.

Every node and pod also gets its own cgroup v2 directory (below
membrane-lab-<name>/ in /sys/fs/cgroup if that is cgroup v2, else in a
cgroup2 mount of the lab's at /run/membrane-lab/<name>/cgroup2); each agent
gets its node's as --cgroup-root, pod servers and 'lab exec' commands run
in their pod's, so cgroup programs act per node as on separate machines.

The lab never touches the machine's own interfaces or routes, and
'membrane lab down' removes every namespace, process, BPF pin, cgroup,
mount and file it made. Several labs can run side by side under different --name values.
Needs root.

With 'lab up --nodes N --mode vxlan|native' the lab is a multi-node cluster
on a fabric bridge, with a shared etcd and, in native mode, a bird2 router
(see 'membrane lab up --help', 'lab node', 'lab router', 'lab etcd').

The binaries membrane-agent, membrane-cni and membrane are looked up next
to this executable, else in $PATH; 'lab up --bin-dir' overrides.`,
		Example: `  go build -o bin/ ./cmd/...
  sudo bin/membrane lab up
  sudo bin/membrane lab pod add web --labels app=web
  sudo bin/membrane lab pod add client --namespace other --labels app=client
  sudo bin/membrane lab probe --proto tcp --port 8080
  sudo bin/membrane lab exec web -- ip addr
  sudo bin/membrane lab down`,
	}
	def := os.Getenv("MEMBRANE_LAB")
	if def == "" {
		def = lab.DefaultName
	}
	cmd.PersistentFlags().StringVar(&f.name, "name", def, "lab name ($MEMBRANE_LAB)")
	cmd.PersistentFlags().StringVar(&f.dir, "dir", "", "lab directory (default "+lab.DefaultBaseDir+"/<name>)")
	cmd.AddCommand(
		newLabUpCmd(f), newLabDownCmd(f), newLabStatusCmd(f), newLabPodCmd(f),
		newLabExecCmd(f), newLabDialCmd(), newLabProbeCmd(f), newLabAgentCmd(f), newLabServeCmd(),
		newLabNodeCmd(f), newLabRouterCmd(f), newLabEtcdCmd(f), newLabEtcdServeCmd(),
	)
	return cmd
}

func newLabUpCmd(f *labFlags) *cobra.Command {
	var podCIDR, ports, binDir, bpfRoot, mode, etcd, nodeCIDR, clusterCIDR string
	var agentArgs []string
	var nodes int
	var leaseTTL time.Duration
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Create a lab: node namespace and agent",
		Long: `Create the lab's node namespace (mbr-<name>-node1) and start membrane-agent
in it, then wait until the agent's API answers. If anything fails, what was
made is removed again.

With --nodes N (N > 1) or --mode, the lab is a multi-node cluster: a fabric
namespace (mbr-<name>-fabric) holding a bridge on --node-cidr, node i at
.10+i on it, a shared etcd (--etcd embedded: one server on a unix socket;
external: three etcd members at .2, .3, .4), and agents that allocate their
pod CIDRs from --cluster-cidr. --mode vxlan tunnels pod traffic between
node IPs; --mode native adds a router namespace (.1) running bird2 that
peers with every agent over eBGP (router AS 64512, node i AS 64600+i) and
routes the pod CIDRs it learns. --pod-cidr is then not used. An external
host (mbr-<name>-ext, .250 on the fabric, the last address in a /25) has
no route to the pods: 'lab exec ext -- ...' tests NodePorts from outside.

Each node's agent gets --cgroup-root with the node's own cgroup v2
directory (see 'membrane lab --help').`,
		Example: `  membrane lab up
  membrane lab up --name blue --pod-cidr 10.201.1.0/24 --bin-dir ./bin
  membrane lab up --name multi --nodes 3 --mode vxlan
  membrane lab up --name bgp --nodes 3 --mode native --etcd external
  MEMBRANE_LAB=blue membrane lab status`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := lab.Config{Name: f.name, Dir: f.dir, BPFRoot: bpfRoot, Logger: labLogger(), AgentArgs: agentArgs,
				Nodes: nodes, Mode: mode, Etcd: etcd, NodeLeaseTTL: leaseTTL}
			for _, p := range []struct {
				flag, val string
				dst       *netip.Prefix
			}{{"--node-cidr", nodeCIDR, &cfg.NodeCIDR}, {"--cluster-cidr", clusterCIDR, &cfg.ClusterCIDR}} {
				if p.val == "" {
					continue
				}
				pfx, err := netip.ParsePrefix(p.val)
				if err != nil {
					return fmt.Errorf("%s: %w", p.flag, err)
				}
				*p.dst = pfx
			}
			if binDir != "" {
				abs, err := filepath.Abs(binDir)
				if err != nil {
					return err
				}
				cfg.BinDir = abs
			}
			if podCIDR != "" {
				p, err := netip.ParsePrefix(podCIDR)
				if err != nil {
					return fmt.Errorf("--pod-cidr: %w", err)
				}
				cfg.PodCIDR = p
			}
			if ports != "" {
				ps, err := lab.ParsePorts(ports)
				if err != nil {
					return fmt.Errorf("--ports: %w", err)
				}
				cfg.ServePorts = ps
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			l, err := lab.Up(ctx, cfg)
			if err != nil {
				return err
			}
			nodes := l.Nodes()
			if len(nodes) == 1 && !nodes[0].IP.IsValid() {
				n := nodes[0]
				fmt.Fprintf(cmd.OutOrStdout(), "lab %s is up: node %s (netns %s), agent socket %s\nnext: membrane lab pod add NAME --name %s\n", l.Name(), n.Name, n.Netns, n.Socket, l.Name())
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is up: %d nodes, etcd %s\n", l.Name(), len(nodes), strings.Join(l.EtcdEndpoints(), ","))
			for _, n := range nodes {
				fmt.Fprintf(cmd.OutOrStdout(), "  %s  ip %s  pod CIDR %s  (netns %s)\n", n.Name, n.IP, n.PodCIDR, n.Netns)
			}
			if e, ok := l.Ext(); ok {
				fmt.Fprintf(cmd.OutOrStdout(), "  ext    ip %s  no route to pods  (netns %s; membrane lab exec ext -- ...)\n", e.IP, e.Netns)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "next: membrane lab pod add NAME --node %s --name %s\n", nodes[0].Name, l.Name())
			return nil
		},
	}
	cmd.Flags().IntVar(&nodes, "nodes", 1, "number of nodes (more than 1 makes a multi-node lab; default mode vxlan)")
	cmd.Flags().StringVar(&mode, "mode", "", "routing mode of a multi-node lab: vxlan or native (BGP through a bird2 router)")
	cmd.Flags().StringVar(&etcd, "etcd", "", "etcd of a multi-node lab: embedded (default) or external (three etcd members)")
	cmd.Flags().StringVar(&nodeCIDR, "node-cidr", lab.DefaultNodeCIDR.String(), "fabric prefix of a multi-node lab (router .1, etcd .2-.4, node i .10+i)")
	cmd.Flags().StringVar(&clusterCIDR, "cluster-cidr", lab.DefaultClusterCIDR.String(), "cluster CIDR the agents of a multi-node lab allocate pod CIDRs from")
	cmd.Flags().DurationVar(&leaseTTL, "node-lease-ttl", 0, "agent --node-lease-ttl in a multi-node lab (0: agent default)")
	cmd.Flags().StringVar(&podCIDR, "pod-cidr", lab.DefaultPodCIDR.String(), "node1's pod CIDR")
	cmd.Flags().StringVar(&ports, "ports", "8080/tcp,9090/tcp,8080/udp,9090/udp", "ports every pod's traffic server listens on (PORT/tcp|udp,...)")
	cmd.Flags().StringVar(&binDir, "bin-dir", "", "directory with membrane-agent, membrane-cni and membrane")
	cmd.Flags().StringVar(&bpfRoot, "bpf-root", lab.DefaultBPFRoot, "agent --bpf-root; pins go to <bpf-root>/<name>-node1")
	cmd.Flags().StringArrayVar(&agentArgs, "agent-arg", nil, "extra membrane-agent flag, repeatable (e.g. --agent-arg=--monitor-level=all)")
	return cmd
}

func newLabDownCmd(f *labFlags) *cobra.Command {
	var bpfRoot string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove a lab and everything it made",
		Long: `Stop the traffic servers, detach every pod with CNI DEL, stop the agent,
delete the pod and node namespaces, remove the node's BPF pin directory,
the lab's cgroups (killing anything still in them), its cgroup2 mount and
the lab directory. Best effort and idempotent: it carries on past errors,
reports them at the end, and can be run again. Also cleans up after a
crashed run whose state file is missing.`,
		Example: `  membrane lab down
  membrane lab down --name blue`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := labContext(cmd)
			defer cancel()
			if err := lab.Reclaim(ctx, lab.Config{Name: f.name, Dir: f.dir, BPFRoot: bpfRoot, Logger: labLogger()}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %s is down\n", f.name)
			return nil
		},
	}
	cmd.Flags().StringVar(&bpfRoot, "bpf-root", lab.DefaultBPFRoot, "bpf root used when the lab's state is gone")
	return cmd
}

func newLabStatusCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the lab's nodes, agents and pods",
		Example: `  membrane lab status
  membrane lab status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			st, err := l.Status(ctx)
			if err != nil {
				return err
			}
			return renderOut(cmd, st, func(w io.Writer) error { return renderLabStatus(w, st) })
		},
	}
}

func renderLabStatus(w io.Writer, st lab.Status) error {
	if st.Mode != "" {
		return renderClusterStatus(w, st)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Lab:\t%s (%s, up since %s)\n", st.Name, st.Dir, st.CreatedAt.Local().Format(time.DateTime))
	if st.CgroupRoot != "" {
		fmt.Fprintf(tw, "Cgroups:\t%s\n", st.CgroupRoot)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tNETNS\tAGENT\tAPI\tENDPOINTS\tSOCKET")
	for _, n := range st.Nodes {
		agent := fmt.Sprintf("pid %d", n.Agent.PID)
		if !n.AgentAlive {
			agent = "NOT RUNNING"
		}
		apiState, eps := "ok", "-"
		if n.API == nil {
			apiState = "DOWN: " + n.APIError
		} else {
			eps = fmt.Sprint(n.API.Endpoints)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.Netns, agent, apiState, eps, n.Socket)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return renderStatusPods(w, st)
}

// renderClusterStatus prints a multi-node lab: mode, etcd, router, nodes
// with their fabric IPs and pod CIDRs, then the pods.
func renderClusterStatus(w io.Writer, st lab.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Lab:\t%s (%s, up since %s)\n", st.Name, st.Dir, st.CreatedAt.Local().Format(time.DateTime))
	fmt.Fprintf(tw, "Mode:\t%s (fabric %s, cluster CIDR %s)\n", st.Mode, st.NodeCIDR, st.ClusterCIDR)
	for _, e := range st.Etcd {
		fmt.Fprintf(tw, "Etcd (%s):\t%s %s %s\n", st.EtcdMode, e.Name, e.Address, procState(e))
	}
	if r := st.Router; r != nil {
		fmt.Fprintf(tw, "Router:\t%s %s (netns %s) %s\n", r.Name, r.Address, r.Netns, procState(*r))
	}
	if e := st.Ext; e != nil {
		state := ""
		if !e.NetnsPresent {
			state = " NETNS MISSING"
		}
		fmt.Fprintf(tw, "External host:\text %s (netns %s, cgroup %s)%s\n", e.IP, e.Netns, orDash(e.Cgroup), state)
	}
	if st.CgroupRoot != "" {
		fmt.Fprintf(tw, "Cgroups:\t%s (a subtree per node)\n", st.CgroupRoot)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tIP\tPOD CIDR\tAGENT\tAPI\tKVSTORE\tENDPOINTS\tNETNS")
	for _, n := range st.Nodes {
		agent := fmt.Sprintf("pid %d", n.Agent.PID)
		if !n.AgentAlive {
			agent = "NOT RUNNING"
		}
		apiState, kv, eps := "ok", "-", "-"
		if n.API == nil {
			apiState = "DOWN"
		} else {
			eps = fmt.Sprint(n.API.Endpoints)
			kv = "ok"
			if !n.API.Kvstore.Healthy {
				kv = "UNHEALTHY"
			}
		}
		cidr := "-"
		if n.PodCIDR.IsValid() {
			cidr = n.PodCIDR.String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.IP, cidr, agent, apiState, kv, eps, n.Netns)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return renderStatusPods(w, st)
}

func procState(p lab.ProcessStatus) string {
	switch {
	case !p.Alive:
		return "NOT RUNNING"
	case p.Healthy != nil && !*p.Healthy:
		return fmt.Sprintf("pid %d UNHEALTHY: %s", p.PID, p.Message)
	case p.Healthy != nil:
		return fmt.Sprintf("pid %d healthy", p.PID)
	}
	return fmt.Sprintf("pid %d running", p.PID)
}

func renderStatusPods(w io.Writer, st lab.Status) error {
	pods := make([]lab.Pod, len(st.Pods))
	extra := map[string][2]string{}
	for i, p := range st.Pods {
		pods[i] = p.Pod
		server := "running"
		if !p.ServerAlive {
			server = "NOT RUNNING"
		}
		extra[p.Key()] = [2]string{server, p.EndpointState}
	}
	return renderPods(w, pods, extra)
}

// renderPods prints pods; extra adds server and endpoint state columns.
func renderPods(w io.Writer, pods []lab.Pod, extra map[string][2]string) error {
	if len(pods) == 0 {
		fmt.Fprintln(w, "no pods (add one with `membrane lab pod add NAME`)")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hdr := "NAMESPACE\tNAME\tIP\tNODE\tSTATE\tLABELS\tNETNS"
	if extra != nil {
		hdr += "\tSERVER\tENDPOINT"
	}
	fmt.Fprintln(tw, hdr)
	for _, p := range pods {
		ip := "-"
		if p.IP.IsValid() {
			ip = p.IP.String()
		}
		labels := make([]string, 0, len(p.Labels))
		for k, v := range p.Labels {
			labels = append(labels, k+"="+v)
		}
		slices.Sort(labels)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s", p.Namespace, p.Name, ip, p.Node, p.State, orDash(strings.Join(labels, ",")), p.Netns)
		if extra != nil {
			e := extra[p.Key()]
			fmt.Fprintf(tw, "\t%s\t%s", e[0], orDash(e[1]))
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newLabPodCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pod",
		Short: "Add, remove and list lab pods",
	}
	var namespace, labels, ports, node string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Add a pod: namespace, CNI ADD, traffic server",
		Long: `Create a pod network namespace, attach it with CNI ADD through the
membrane-cni plugin (labels and container ports passed as CNI capability
arguments, as a runtime does), and start the pod's traffic server on its
address and 127.0.0.1. On failure the pod is rolled back.`,
		Example: `  membrane lab pod add web --labels app=web,tier=front --port http:80/tcp
  membrane lab pod add db --namespace prod --labels app=db --port pg:5432`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec := lab.PodSpec{Namespace: namespace, Name: args[0], Node: node}
			var err error
			if spec.Labels, err = lab.ParseLabels(labels); err != nil {
				return fmt.Errorf("--labels: %w", err)
			}
			if spec.Ports, err = lab.ParseNamedPorts(ports); err != nil {
				return fmt.Errorf("--port: %w", err)
			}
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			p, err := l.AddPod(ctx, spec)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pod %s added: %s (netns %s)\n", p.Key(), p.IP, p.Netns)
			return nil
		},
	}
	add.Flags().StringVarP(&namespace, "namespace", "n", lab.DefaultPodNamespace, "pod namespace")
	add.Flags().StringVarP(&labels, "labels", "l", "", "pod labels, KEY=VALUE,...")
	add.Flags().StringVar(&ports, "port", "", "container ports, [NAME:]PORT[/tcp|/udp|/sctp],... (tcp/udp ones are also served)")
	add.Flags().StringVar(&node, "node", lab.DefaultNode, "node to run the pod on")

	var delNamespace string
	del := &cobra.Command{
		Use:     "del NAME",
		Aliases: []string{"delete", "rm"},
		Short:   "Remove a pod: server, CNI DEL, namespace",
		Example: `  membrane lab pod del web
  membrane lab pod del db --namespace prod`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			if err := l.DelPod(ctx, delNamespace, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pod %s removed\n", lab.PodKey(delNamespace, args[0]))
			return nil
		},
	}
	del.Flags().StringVarP(&delNamespace, "namespace", "n", lab.DefaultPodNamespace, "pod namespace")

	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the lab's pods",
		Example: `  membrane lab pod list
  membrane lab pod list -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			pods := l.Pods()
			return renderOut(cmd, pods, func(w io.Writer) error { return renderPods(w, pods, nil) })
		},
	}
	cmd.AddCommand(add, del, list)
	return cmd
}

func newLabExecCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "exec TARGET -- COMMAND [ARG...]",
		Short: "Run a command in a pod's, node's or the external host's namespace and cgroup",
		Long: `Run a command inside a target's network namespace (ip netns exec) and its
cgroup v2 directory: the process is created in the cgroup, so the cgroup
programs of the target's node (socket-level service translation) apply to
it from its first socket on.

TARGET is one of:
  ext                 the external host of a multi-node lab (a namespace on
                      the fabric that reaches the node IPs only)
  NODE                a node, e.g. node1 (the node's namespace, the agent's
                      cgroup root)
  NAMESPACE/NAME      a pod; NAME alone if it is unique across namespaces
The prefixes pod:, node: and ext: force the kind (pod:node1 is a pod named
node1).

The exit status is non-zero when the command fails.`,
		Example: `  membrane lab exec web -- ip addr
  membrane lab exec prod/db -- ping -c1 10.200.1.2
  membrane lab exec web -- cat /proc/self/cgroup
  membrane lab exec node2 -- ip route
  membrane lab exec ext -- membrane lab dial --count 10 172.30.0.11:30080
  membrane lab exec web -- sh -c 'echo hi | nc -q1 10.200.1.3 8080'`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			err = l.ExecStdio(ctx, args[0], args[1:], lab.Stdio{Stdin: cmd.InOrStdin(), Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()})
			var ee interface{ ExitCode() int }
			if errors.As(err, &ee) {
				return fmt.Errorf("command exited with status %d: %w", ee.ExitCode(), err)
			}
			return err
		},
	}
}

func newLabDialCmd() *cobra.Command {
	spec := lab.DialSpec{}
	cmd := &cobra.Command{
		Use:   "dial IP:PORT",
		Short: "Connect to an address N times and report which pod answered each time",
		Long: `Connect to IP:PORT --count times, one attempt after another, each within
--timeout, from this process's network namespace and cgroup: run it through
'membrane lab exec POD|NODE|ext -- membrane lab dial ...' to test services
from a pod, a node or the external host. Needs no lab and no root.

tcp: every attempt opens a new connection, sends "dial SEQ" and expects
the lab's traffic server to answer "NAMESPACE/NAME dial SEQ".
udp: every attempt opens a new connected socket and sends "whoami TOKEN"
(resent every 300 ms within the timeout); the lab's server answers
"NAMESPACE/NAME whoami TOKEN". With --reuse-udp one unconnected socket
sends every datagram, and each line shows the address the reply came from
(from=), which must be the address dialled when a service translates it.
--peer shows getpeername() of each connected socket (peer=).

Output: one line per attempt, then a summary:
  seq=1 result=ok answer=default/web-1 peer=10.96.0.10:80 time=412µs
  seq=2 result=fail error="connect 10.96.0.10:80: operation not permitted" time=31µs
  summary proto=tcp target=10.96.0.10:80 attempts=2 ok=1 failed=1 answers=default/web-1=1
(-o json prints the same as JSON.) The exit status is non-zero if any
attempt failed.`,
		Example: `  membrane lab exec client -- membrane lab dial --count 20 10.96.0.10:8080
  membrane lab exec client -- membrane lab dial --proto udp --reuse-udp --count 5 10.96.0.10:9090
  membrane lab exec ext -- membrane lab dial --peer 172.30.0.11:30080`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := netip.ParseAddrPort(args[0])
			if err != nil {
				return fmt.Errorf("target %q: want IP:PORT: %w", args[0], err)
			}
			spec.Target = t
			ctx, cancel := labContext(cmd)
			defer cancel()
			rep, err := lab.Dial(ctx, spec)
			if err != nil {
				return err
			}
			if err := renderOut(cmd, rep, rep.Render); err != nil {
				return err
			}
			if rep.Failed > 0 {
				return fmt.Errorf("dial %s: %d of %d attempts failed (first: %s)", rep.Target, rep.Failed, len(rep.Attempts), rep.FirstError())
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&spec.Proto, "proto", "tcp", "tcp or udp")
	cmd.Flags().IntVar(&spec.Count, "count", 1, fmt.Sprintf("attempts (1-%d)", lab.MaxDialCount))
	cmd.Flags().DurationVar(&spec.Timeout, "timeout", lab.DefaultDialTimeout, "timeout per attempt")
	cmd.Flags().BoolVar(&spec.ReuseUDP, "reuse-udp", false, "udp: send every datagram from one unconnected socket and show each reply's source address")
	cmd.Flags().Uint16Var(&spec.SourcePort, "source-port", 0, "bind attempt i to local port N+i-1 (0: any), to repeat the same flows in another run")
	cmd.Flags().BoolVar(&spec.Peer, "peer", false, "show getpeername() of each connected socket")
	return cmd
}

func newLabProbeCmd(f *labFlags) *cobra.Command {
	var port uint16
	var proto string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "Measure reachability between every pair of pods",
		Long: `Connect from every pod to every pod's address (itself included) and print
the matrix: rows are sources, columns destinations. tcp sends a line and
expects the destination pod's server to answer with its name; udp expects
a random token echoed; icmp sends one echo request.

The exit status is 0 whatever the matrix shows; it is non-zero only when
the probe itself could not run. Use -o json for scripts.`,
		Example: `  membrane lab probe
  membrane lab probe --proto udp --port 9090
  membrane lab probe --proto icmp -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			m, err := l.Probe(ctx, lab.ProbeSpec{Port: port, Proto: proto, Timeout: timeout})
			if err != nil {
				return err
			}
			return renderOut(cmd, m, m.Render)
		},
	}
	cmd.Flags().Uint16Var(&port, "port", lab.DefaultProbePort, "destination port (tcp, udp)")
	cmd.Flags().StringVar(&proto, "proto", "tcp", "tcp, udp or icmp")
	cmd.Flags().DurationVar(&timeout, "timeout", lab.DefaultProbeTimeout, "timeout per pair")
	return cmd
}

func newLabAgentCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Manage the lab's agents",
	}
	var node string
	restart := &cobra.Command{
		Use:   "restart",
		Short: "Restart a node's agent (SIGTERM, start, wait until ready)",
		Long: `Stop a node's agent with SIGTERM (SIGKILL after 15 s), start it again and
wait until its API answers. BPF pins stay in place, so pod traffic should
keep flowing; check with 'membrane lab probe' during and after.`,
		Example: `  membrane lab agent restart
  membrane lab agent restart --node node1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			if err := l.RestartAgent(ctx, node); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "agent on %s restarted\n", node)
			return nil
		},
	}
	restart.Flags().StringVar(&node, "node", lab.DefaultNode, "node whose agent to restart")
	stop := &cobra.Command{
		Use:   "stop",
		Short: "Stop a node's agent (SIGTERM; SIGKILL after 15 s)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			if err := l.StopAgent(ctx, node); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "agent on %s stopped\n", node)
			return nil
		},
	}
	stop.Flags().StringVar(&node, "node", lab.DefaultNode, "node whose agent to stop")
	start := &cobra.Command{
		Use:   "start",
		Short: "Start a node's stopped agent and wait until ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			if err := l.StartAgent(ctx, node); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "agent on %s running\n", node)
			return nil
		},
	}
	start.Flags().StringVar(&node, "node", lab.DefaultNode, "node whose agent to start")
	cmd.AddCommand(restart, stop, start)
	return cmd
}

func newLabNodeCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Add, remove and list the nodes of a multi-node lab",
	}
	add := &cobra.Command{
		Use:     "add",
		Short:   "Join a new node (next index) to a multi-node lab",
		Example: `  membrane lab node add --name multi`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			n, err := l.AddNode(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s added: ip %s, pod CIDR %s (netns %s)\n", n.Name, n.IP, n.PodCIDR, n.Netns)
			return nil
		},
	}
	remove := &cobra.Command{
		Use:     "remove NODE",
		Aliases: []string{"rm", "del"},
		Short:   "Remove a node: its pods, agent, namespace and pins",
		Long: `Remove a node: delete its pods, stop its agent, delete its namespace and BPF
pins. The rest of the cluster forgets the node when its lease in etcd
expires (--node-lease-ttl).`,
		Example: `  membrane lab node remove node2`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			if err := l.RemoveNode(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s removed\n", args[0])
			return nil
		},
	}
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the lab's nodes",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			nodes := l.Nodes()
			return renderOut(cmd, nodes, func(w io.Writer) error {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tIP\tPOD CIDR\tAS\tAGENT\tNETNS")
				for _, n := range nodes {
					ip, as, agent := "-", "-", "NOT RUNNING"
					if n.IP.IsValid() {
						ip = n.IP.String()
					}
					if n.ASN != 0 {
						as = fmt.Sprint(n.ASN)
					}
					if n.Agent.Alive() {
						agent = fmt.Sprintf("pid %d", n.Agent.PID)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, ip, n.PodCIDR, as, agent, n.Netns)
				}
				return tw.Flush()
			})
		},
	}
	cmd.AddCommand(add, remove, list)
	return cmd
}

func newLabRouterCmd(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "router BIRDC-COMMAND...",
		Short: "Run a birdc command against the router of a native-mode lab",
		Example: `  membrane lab router show protocols
  membrane lab router show route
  membrane lab router disable node1`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open()
			if err != nil {
				return err
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			out, err := l.RouterCommand(ctx, args...)
			fmt.Fprint(cmd.OutOrStdout(), out)
			return err
		},
	}
}

func newLabEtcdCmd(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Stop and start the etcd of a multi-node lab",
	}
	var member int
	run := func(verb string, one func(*lab.Lab, context.Context, int) error, all func(*lab.Lab, context.Context) error) *cobra.Command {
		c := &cobra.Command{
			Use:   verb,
			Short: verb + " the embedded etcd server, every external member, or one with --member",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				l, err := f.open()
				if err != nil {
					return err
				}
				ctx, cancel := labContext(cmd)
				defer cancel()
				if member > 0 {
					err = one(l, ctx, member)
				} else {
					err = all(l, ctx)
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "etcd: %s done\n", verb)
				return nil
			},
		}
		c.Flags().IntVar(&member, "member", 0, "external etcd member (1-3); 0 = all")
		return c
	}
	cmd.AddCommand(
		run("stop", (*lab.Lab).StopEtcdMember, (*lab.Lab).StopEtcd),
		run("start", (*lab.Lab).StartEtcdMember, (*lab.Lab).StartEtcd),
		&cobra.Command{
			Use:   "endpoints",
			Short: "Print the etcd client URLs the agents use",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				l, err := f.open()
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), strings.Join(l.EtcdEndpoints(), ","))
				return nil
			},
		},
	)
	return cmd
}

func newLabEtcdServeCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "etcd-serve",
		Short:  "Run the lab's embedded etcd (started by the lab inside the fabric namespace)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := labContext(cmd)
			defer cancel()
			return lab.ServeEtcd(ctx, dir, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the sockets (client.sock, peer.sock) and data")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

func newLabServeCmd() *cobra.Command {
	var name, listen, tcp, udp string
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "Run a pod's traffic server (started by the lab inside each pod)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := lab.ServeConfig{Name: name, Logger: slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))}
			for a := range strings.SplitSeq(listen, ",") {
				if a = strings.TrimSpace(a); a == "" {
					continue
				}
				ip, err := netip.ParseAddr(a)
				if err != nil {
					return fmt.Errorf("--listen: %w", err)
				}
				cfg.Listen = append(cfg.Listen, ip)
			}
			var err error
			if cfg.TCP, err = lab.ParsePortList(tcp); err != nil {
				return fmt.Errorf("--tcp: %w", err)
			}
			if cfg.UDP, err = lab.ParsePortList(udp); err != nil {
				return fmt.Errorf("--udp: %w", err)
			}
			ctx, cancel := labContext(cmd)
			defer cancel()
			return lab.Serve(ctx, cfg)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "pod name put in front of TCP replies")
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1", "addresses to bind, comma-separated")
	cmd.Flags().StringVar(&tcp, "tcp", "", "TCP ports, comma-separated")
	cmd.Flags().StringVar(&udp, "udp", "", "UDP ports, comma-separated")
	return cmd
}
