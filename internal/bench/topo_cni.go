package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
)

// ---- BRIDGE ----

// bridge attaches two pod namespaces with Debian's reference CNI plugins
// (bridge + host-local), invoked through libcni with the node namespace as
// the plugins' current namespace.
type bridge struct {
	spec TopologySpec
	idx  int
}

func (b *bridge) Describe() string {
	return "reference CNI `bridge` plugin (isGateway, no masquerade) + `host-local` IPAM via libcni, Linux bridge in a node namespace"
}

func (b *bridge) Setup(ctx context.Context, env *Env) (Pair, error) {
	role := roleName(b.spec)
	c, s, n := env.NetnsName(role+"-c"), env.NetnsName(role+"-s"), env.NetnsName(role+"-n")
	for _, ns := range []string{n, c, s} {
		if err := env.CreateNetns(ctx, ns); err != nil {
			return Pair{}, err
		}
	}
	net, err := newCNINet(bridgeConf("mbb0", podPrefix(b.idx), filepath.Join(env.Dir, "ipam-"+role)),
		[]string{env.CNIDir}, filepath.Join(env.Dir, "cni-cache-"+role), n)
	if err != nil {
		return Pair{}, err
	}
	var pair Pair
	for i, ns := range []string{c, s} {
		id := "mbb-" + env.ID + "-" + role + "-" + ns[len(ns)-1:]
		addr, err := net.add(ctx, id, ns, ns)
		if err != nil {
			return Pair{}, fmt.Errorf("set up %s: %w", b.spec.Name(), err)
		}
		// Deleting the namespaces removes the veths and the bridge; the
		// DEL keeps host-local's bookkeeping honest on the way.
		env.Defer("cni del "+ns, func(ctx context.Context) error { return net.del(ctx, id, ns, ns) })
		ep := Endpoint{Netns: ns, Addr: addr}
		if i == 0 {
			pair.Client = ep
		} else {
			pair.Server = ep
		}
	}
	return pair, nil
}

// ---- MEMBRANE, MEMBRANE-POLICY-N, MEMBRANE-MONITOR-<LEVEL> ----

// ErrNotSupported: the topology cannot take this parameter yet.
var ErrNotSupported = errors.New("not supported")

// membrane is a Membrane lab (internal/lab): a node namespace running
// membrane-agent, and two pods attached by the real membrane-cni. Every
// Membrane topology gets a lab of its own, so that agent flags (monitor
// level, policy map size) and policy state never leak between them.
type membrane struct {
	spec      TopologySpec
	idx       int
	agentArgs []string // the run's extra agent flags
	lab       *lab.Lab
	info      MembraneInfo
	svc       *ServiceInstall // MEMBRANE-SVC-N
}

func (m *membrane) serviceInstall() *ServiceInstall { return m.svc }

// MembraneInfo is what setting up a Membrane topology found out.
type MembraneInfo struct {
	Lab       string   `json:"lab"`
	AgentArgs []string `json:"agentArgs,omitempty"`
	// MonitorLevel is the flow event level the agent reports.
	MonitorLevel string `json:"monitorLevel,omitempty"`
	// FlowEvents is how many flow events the agent saw while the datapath
	// rounds ran (its flowsSeen counter, end minus start).
	FlowEvents *uint64 `json:"flowEvents,omitempty"`
	// Policy is the installed policy of a MEMBRANE-POLICY-N topology.
	Policy *PolicyInstall `json:"policy,omitempty"`
	// Nodes of a multi-node (cross-node) topology.
	Nodes []LabNode `json:"nodes,omitempty"`
}

func (m *membrane) setAgentArgs(args []string) { m.agentArgs = args }
func (m *membrane) labInfo() MembraneInfo      { return m.info }

func (m *membrane) Describe() string {
	d := "Membrane lab: node namespace with membrane-agent, two pods attached by membrane-cni (libcni), BPF redirect_peer between them"
	switch {
	case m.spec.Kind == KindMembranePolicy && m.spec.PolicyEntries == 0:
		d += "; server pod selected by a NetworkPolicy whose one rule allows the client pod (ingress enforced, no other entries)"
	case m.spec.Kind == KindMembranePolicy:
		d += fmt.Sprintf("; server pod selected by NetworkPolicies with %d never-matching ingress rules "+
			"(`ipBlock` 10.99.x.y/32 + one TCP port each, the pairs of the IPTABLES-N rules: one CIDR identity and one policy map entry each) "+
			"and one rule allowing the client pod", m.spec.PolicyEntries)
	}
	if m.spec.Kind == KindMembraneSvc {
		d += fmt.Sprintf("; %d v1 Services selecting the server pod (one TCP port each, cluster IPs 10.96.0.10 onwards given explicitly, the baselines' addresses), "+
			"translated at connect() by the agent's cgroup hooks; the client runs in its pod's cgroup", m.spec.Services)
	}
	if m.spec.MonitorLevel != "" {
		d += fmt.Sprintf("; agent run with `--monitor-level=%s`", m.spec.MonitorLevel)
	}
	return d
}

// labNames matches the labs a run creates (bench-<run>, bmem-<run>,
// bprop-<run>, bt<index>-<run>); `membrane-bench clean` reclaims them.
var labNameRE = regexp.MustCompile(`^(bench|bmem|bprop|bt[0-9]+)-[0-9a-f]{6}$`)

// labName and labCIDR: the plain MEMBRANE topology keeps the lab name
// and CIDR it always had; every other Membrane topology gets bt<index>
// and 10.200.(160+index).0/24.
func (m *membrane) labName(env *Env) string {
	if m.spec.plainMembrane() {
		return "bench-" + env.ID
	}
	return fmt.Sprintf("bt%d-%s", m.idx, env.ID)
}

func (m *membrane) labCIDR() netip.Prefix {
	if m.spec.plainMembrane() {
		return benchLabCIDR
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(160 + m.idx), 0}), 24)
}

// topoAgentArgs are the agent flags the topology needs on top of the run's.
func (m *membrane) topoAgentArgs() []string {
	args := slices.Clone(m.agentArgs)
	if m.spec.MonitorLevel != "" {
		args = append(args, "--monitor-level="+m.spec.MonitorLevel)
	}
	if m.spec.Kind == KindMembranePolicy {
		if size := policyMapSize(m.spec.PolicyEntries); size > 0 {
			args = append(args, fmt.Sprintf("--policy-map-size=%d", size))
		}
	}
	return args
}

func (m *membrane) Setup(ctx context.Context, env *Env) (Pair, error) {
	name := m.labName(env)
	args := m.topoAgentArgs()
	m.info = MembraneInfo{Lab: name, AgentArgs: args}
	l, err := upLab(ctx, env, labSpec{name: name, cidr: m.labCIDR(), agentArgs: args})
	if err != nil {
		return Pair{}, err
	}
	m.lab = l
	var pair Pair
	for i, name := range []string{"client", "server"} {
		p, err := l.AddPod(ctx, lab.PodSpec{Namespace: benchPodNamespace, Name: name, Labels: map[string]string{"app": "bench-" + name}})
		if err != nil {
			return Pair{}, fmt.Errorf("set up %s: %w", m.spec.Name(), err)
		}
		ep := Endpoint{Netns: p.Netns, Addr: p.IP}
		if m.spec.Kind == KindMembraneSvc {
			// Service translation happens in the cgroup hooks: the
			// workload's processes must be born in the pod's cgroup.
			if p.Cgroup == "" {
				return Pair{}, fmt.Errorf("set up %s: pod %s has no cgroup (the lab runs without cgroup v2?)", m.spec.Name(), name)
			}
			ep.Cgroup = p.Cgroup
		}
		if i == 0 {
			pair.Client = ep
		} else {
			pair.Server = ep
		}
	}
	c := m.client()
	if m.spec.Kind == KindMembranePolicy {
		pi, err := installPolicy(ctx, c, m.spec.PolicyEntries)
		if err != nil {
			return Pair{}, fmt.Errorf("set up %s: %w", m.spec.Name(), err)
		}
		m.info.Policy = pi
		env.Log.Info("policy installed", "topology", m.spec.Name(), "entries", pi.Entries, "took", fmt.Sprintf("%.1fs", pi.InstallSeconds))
	}
	if m.spec.Kind == KindMembraneSvc {
		si, err := installServices(ctx, c, m.spec.Services, pair.Server.Addr)
		if err != nil {
			return Pair{}, fmt.Errorf("set up %s: %w", m.spec.Name(), err)
		}
		m.svc = si
		pair.Service = si.Measured
		env.Log.Info("services installed", "topology", m.spec.Name(), "services", si.Services, "took", fmt.Sprintf("%.1fs", si.InstallSeconds))
	}
	st, err := c.Status(ctx)
	if err != nil {
		return Pair{}, fmt.Errorf("set up %s: agent status: %w", m.spec.Name(), err)
	}
	m.info.MonitorLevel = st.Datapath.MonitorLevel
	if m.spec.MonitorLevel != "" && st.Datapath.MonitorLevel != m.spec.MonitorLevel {
		return Pair{}, fmt.Errorf("set up %s: agent reports monitor level %q, want %q", m.spec.Name(), st.Datapath.MonitorLevel, m.spec.MonitorLevel)
	}
	return pair, nil
}

// client talks to the lab agent's API.
func (m *membrane) client() *api.Client {
	nodes := m.lab.Nodes()
	if len(nodes) == 0 {
		return api.NewClient(filepath.Join(m.lab.Dir(), lab.DefaultNode, "agent.sock"))
	}
	return api.NewClient(nodes[0].Socket)
}

// flowsSeen reads the agent's flow event counter.
func (m *membrane) flowsSeen(ctx context.Context) (uint64, error) {
	st, err := m.client().Status(ctx)
	if err != nil {
		return 0, err
	}
	return st.Datapath.FlowsSeen, nil
}

// benchPodNamespace is the Kubernetes namespace of every bench pod.
const benchPodNamespace = "bench"

// Pod CIDRs of the labs. They lie inside the agent's default
// --cluster-cidr (lab.DefaultClusterCIDR, 10.200.0.0/16), which the agent
// requires; each lab's node namespace is its own, so they could not clash
// anyway, but distinct blocks keep captures and logs readable. The other
// Membrane topologies use 10.200.160.0/24 to 10.200.199.0/24, the
// propagation lab's /22 holds up to 1018 endpoints, the memory lab's /21
// up to 2046.
var (
	benchLabCIDR       = netip.MustParsePrefix("10.200.213.0/24")
	propagationLabCIDR = netip.MustParsePrefix("10.200.208.0/22")
	memoryLabCIDR      = netip.MustParsePrefix("10.200.216.0/21")
)

// labServePort is the only port of the lab's own traffic servers; the
// benchmark servers use other ports.
var labServePorts = []lab.Port{{Port: 19999, Proto: "tcp"}}

// labSpec is a lab to start.
type labSpec struct {
	name       string
	cidr       netip.Prefix // pod CIDR of a single-node lab
	servePorts []lab.Port   // default labServePorts
	agentArgs  []string
	// Multi-node labs: node count, lab routing mode (lab.ModeVXLAN or
	// lab.ModeNative) and fabric prefix; zero for a single node.
	nodes    int
	mode     string
	nodeCIDR netip.Prefix
}

// upLab starts a lab and registers its removal.
func upLab(ctx context.Context, env *Env, spec labSpec) (*lab.Lab, error) {
	ports := spec.servePorts
	if len(ports) == 0 {
		ports = labServePorts
	}
	cfg := lab.Config{
		Name:       spec.name,
		Dir:        filepath.Join(lab.DefaultBaseDir, spec.name),
		BinDir:     env.BinDir,
		PodCIDR:    spec.cidr,
		ServePorts: ports,
		AgentArgs:  spec.agentArgs,
		Logger:     env.Log.With("lab", spec.name),
		Nodes:      spec.nodes,
		Mode:       spec.mode,
		NodeCIDR:   spec.nodeCIDR,
	}
	// Reclaim removes the lab whether or not Up got far enough to return it.
	env.Defer("remove lab "+spec.name, func(ctx context.Context) error { return lab.Reclaim(ctx, cfg) })
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("lab up %s: %w", spec.name, err)
	}
	return l, nil
}

// agentPID is the pid of the lab node's membrane-agent.
func agentPID(l *lab.Lab) (int, error) {
	nodes := l.Nodes()
	if len(nodes) == 0 || nodes[0].Agent.PID <= 0 {
		return 0, errors.New("lab has no agent pid")
	}
	pid := nodes[0].Agent.PID
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err != nil {
		return 0, fmt.Errorf("agent pid %d: %w", pid, err)
	} else if string(comm) != "membrane-agent\n" {
		return 0, fmt.Errorf("agent pid %d is %q, not membrane-agent", pid, comm)
	}
	return pid, nil
}

// reclaimLabs removes every bench lab under the lab base directory.
func reclaimLabs(ctx context.Context, lg *slog.Logger) error {
	ents, _ := os.ReadDir(lab.DefaultBaseDir)
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || !labNameRE.MatchString(e.Name()) {
			continue
		}
		lg.Info("removing lab", "lab", e.Name())
		cfg := lab.Config{Name: e.Name(), Dir: filepath.Join(lab.DefaultBaseDir, e.Name()), Logger: lg}
		if err := lab.Reclaim(ctx, cfg); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
