package bench

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"
)

// Topology kinds.
const (
	KindDirect   = "direct"   // two namespaces joined by one veth pair
	KindRouted   = "routed"   // two pods routed by a node namespace's kernel
	KindIPTables = "iptables" // routed + N non-matching iptables FORWARD rules
	KindNFTSet   = "nftset"   // routed + one nftables rule over an N-element set
	KindBridge   = "bridge"   // reference CNI bridge + host-local in a node namespace
	KindMembrane = "membrane" // a Membrane lab: agent + two pods via membrane-cni
	// KindMembranePolicy is a Membrane lab whose server pod is selected by
	// NetworkPolicies holding PolicyEntries never-matching entries plus the
	// rule that allows the client (ingress enforced even at 0 entries).
	KindMembranePolicy = "membrane-policy"

	// Service kinds: N ClusterIP services with one backend each, the
	// server pod; the client connects to the last one (services.go).
	KindMembraneSvc       = "membrane-svc"        // a Membrane lab, socket-level load balancing
	KindKubeProxyIPTables = "kube-proxy-iptables" // routed + kube-proxy's iptables-mode nat rules
	KindNFTVMap           = "nft-vmap"            // routed + kube-proxy's nftables-mode verdict map

	// Cross-node kinds: client pod on node A, server pod on node B, two
	// node namespaces joined by a fabric bridge.
	KindKernelVXLAN         = "kernel-vxlan"          // flannel's model: kernel vxlan device, static FDB/neighbour entries
	KindRouted2Node         = "routed-2node"          // kernel routing, static route to the other node's pod CIDR
	KindMembraneVXLAN2Node  = "membrane-vxlan-2node"  // two Membrane agents, --routing-mode vxlan
	KindMembraneNative2Node = "membrane-native-2node" // two Membrane agents, --routing-mode native, static routes
)

// crossNodePairs are the cross-node comparisons: each Membrane topology
// and its kernel baseline, with the target ratio.
var crossNodePairs = []struct{ membrane, baseline string }{
	{"MEMBRANE-VXLAN-2NODE", "KERNEL-VXLAN"},
	{"MEMBRANE-NATIVE-2NODE", "ROUTED-2NODE"},
}

// Monitor levels of the agent's --monitor-level flag.
var monitorLevels = []string{"off", "drops", "default", "all"}

// Workload names.
const (
	WorkloadTCPRR     = "tcp-rr"
	WorkloadTCPStream = "tcp-stream"
	WorkloadTCPCRR    = "tcp-crr"
	WorkloadUDPRR     = "udp-rr"
	// WorkloadSvcCRR is connect/request/close through a service address
	// (the service topologies' workload).
	WorkloadSvcCRR = "svc-crr"
)

// TopologySpec selects a topology and its parameters.
type TopologySpec struct {
	Kind string `json:"kind"`
	// PolicyEntries is the number of policy entries the datapath holds:
	// iptables rules (KindIPTables), set elements (KindNFTSet) or entries
	// of the server pod's Membrane policy map (KindMembranePolicy; the
	// entries the client needs come on top). None of them match the
	// benchmark traffic. iptables and nftables look every forwarded packet
	// up; Membrane looks up the first packet of each connection (later ones
	// pass on conntrack), as Cilium does.
	PolicyEntries int `json:"policyEntries,omitempty"`
	// Workloads, when set, restricts the workloads run on this topology
	// (a subset of Config.Workloads); empty means all of them.
	Workloads []string `json:"workloads,omitempty"`
	// MonitorLevel is the agent's --monitor-level for the Membrane kinds;
	// empty leaves the agent's default ("default").
	MonitorLevel string `json:"monitorLevel,omitempty"`
	// Services is N for the service kinds: services installed, each with
	// one backend (the server pod).
	Services int `json:"services,omitempty"`
	// Rounds, when set, limits the topology to the first Rounds rounds of
	// the run (fewer rounds for parts whose ratios are stable, to keep a
	// profile within its time budget); 0 means every round.
	Rounds int `json:"rounds,omitempty"`
}

// inRound reports whether the topology runs in round (1-based).
func (s TopologySpec) inRound(round int) bool { return s.Rounds == 0 || round <= s.Rounds }

// service reports whether the topology is a service kind.
func (s TopologySpec) service() bool {
	return s.Kind == KindMembraneSvc || s.Kind == KindKubeProxyIPTables || s.Kind == KindNFTVMap
}

// runs reports whether workload w runs on this topology. svc-crr runs
// only where it is listed (it measures a service path, which only the
// service topologies have).
func (s TopologySpec) runs(w string) bool {
	if len(s.Workloads) == 0 {
		return w != WorkloadSvcCRR
	}
	return slices.Contains(s.Workloads, w)
}

// isMembrane reports whether the topology is a Membrane lab.
func (s TopologySpec) isMembrane() bool {
	return s.Kind == KindMembrane || s.Kind == KindMembranePolicy || s.Kind == KindMembraneSvc ||
		s.Kind == KindMembraneVXLAN2Node || s.Kind == KindMembraneNative2Node
}

// crossNode reports whether the topology spans two nodes.
func (s TopologySpec) crossNode() bool {
	switch s.Kind {
	case KindKernelVXLAN, KindRouted2Node, KindMembraneVXLAN2Node, KindMembraneNative2Node:
		return true
	}
	return false
}

// plainMembrane is the MEMBRANE topology with the agent's defaults.
func (s TopologySpec) plainMembrane() bool {
	return s.Kind == KindMembrane && s.PolicyEntries == 0 && s.MonitorLevel == ""
}

// Name is how the topology appears in results and reports:
// "DIRECT", "IPTABLES-10000", "MEMBRANE", "MEMBRANE-POLICY-1000",
// "MEMBRANE-MONITOR-OFF".
func (s TopologySpec) Name() string {
	switch s.Kind {
	case KindIPTables:
		return fmt.Sprintf("IPTABLES-%d", s.PolicyEntries)
	case KindNFTSet:
		return fmt.Sprintf("NFT-SET-%d", s.PolicyEntries)
	case KindMembraneSvc:
		return fmt.Sprintf("MEMBRANE-SVC-%d", s.Services)
	case KindKubeProxyIPTables:
		return fmt.Sprintf("KUBE-PROXY-IPTABLES-%d", s.Services)
	case KindNFTVMap:
		return fmt.Sprintf("NFT-VMAP-%d", s.Services)
	case KindMembrane, KindMembranePolicy:
		name := "MEMBRANE"
		if s.Kind == KindMembranePolicy || s.PolicyEntries > 0 {
			name += fmt.Sprintf("-POLICY-%d", s.PolicyEntries)
		}
		if s.MonitorLevel != "" {
			name += "-MONITOR-" + upper(s.MonitorLevel)
		}
		return name
	}
	return upper(s.Kind)
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// CNIConfig configures the CNI ADD latency measurement.
type CNIConfig struct {
	// Plugins compared: "membrane" (membrane-cni against a lab agent) and
	// "ptp" (the reference ptp plugin with host-local IPAM).
	Plugins []string `json:"plugins"`
	// Concurrency levels; at level c, c namespaces are created up front and
	// c ADDs are fired at once. Level 1 runs Batch ADDs one after another.
	Concurrency []int `json:"concurrency"`
	// Batch is the number of ADDs per round at concurrency 1.
	Batch int `json:"batch"`
	// Rounds per (plugin, concurrency); plugins alternate within a round.
	Rounds int `json:"rounds"`
}

// MemoryConfig configures the agent memory measurement.
type MemoryConfig struct {
	// Endpoints is K: the agent's RSS is read with 0 and with K endpoints.
	// 0 skips the measurement.
	Endpoints int `json:"endpoints"`
	// Settle is how long to wait before reading RSS.
	Settle time.Duration `json:"settle"`
}

// PropagationConfig configures the policy propagation measurement: a lab
// with Endpoints endpoints on one node (a client and a server pod with
// traffic servers, the rest attached through membrane-cni only), a UDP
// prober from client to server, and Iterations rounds of applying, then
// deleting, a policy that denies the probes.
type PropagationConfig struct {
	// Endpoints on the node, client and server included; 0 skips the
	// measurement.
	Endpoints int `json:"endpoints"`
	// Iterations of apply (deny) + delete (allow).
	Iterations int `json:"iterations"`
	// Interval between two probes.
	Interval time.Duration `json:"interval"`
	// Timeout is how long one transition may take before it counts as
	// failed.
	Timeout time.Duration `json:"timeout"`
}

// Config is one benchmark run.
type Config struct {
	Profile string `json:"profile"`
	// Rounds of the datapath matrix: every round runs every workload on
	// every topology, in the order given (A B C A B C …).
	Rounds int `json:"rounds"`
	// Duration of one measurement.
	Duration time.Duration `json:"duration"`
	// CPU is the CPU that client and server are both pinned to.
	CPU        int            `json:"cpu"`
	Topologies []TopologySpec `json:"topologies"`
	Workloads  []string       `json:"workloads"`
	CNI        CNIConfig      `json:"cni"`
	Memory     MemoryConfig   `json:"memory"`
	// Propagation of policy changes to the datapath.
	Propagation PropagationConfig `json:"propagation"`
	// AgentArgs are extra membrane-agent flags for every lab of the run
	// (before the flags a topology sets itself).
	AgentArgs []string `json:"agentArgs,omitempty"`

	// BinDir holds membrane, membrane-agent and membrane-cni. Default: the
	// directory of the running executable, else $PATH.
	BinDir string `json:"-"`
	// CNIPluginDir holds the reference CNI plugins. Default /usr/lib/cni.
	CNIPluginDir string `json:"-"`
	// WorkDir is the parent of the run's work directory. Default os.TempDir().
	WorkDir string       `json:"-"`
	Logger  *slog.Logger `json:"-"`
}

// Profiles.
const (
	ProfileQuick = "quick"
	ProfileFull  = "full"
)

// Profile returns the configuration of a named profile.
//
// quick (`make bench`) must finish within 9 minutes on a 2-core VM:
// 1-second measurements (sockperf's 2 s, its minimum), 5 rounds, the
// 10000-entry policy baselines and Membrane with 0 and 10000 policy
// entries and with flow events off (tcp-rr and tcp-crr only), 100 CNI ADD
// samples per (plugin, concurrency), K=100 endpoints, 30 propagation
// iterations at 100 endpoints, and the four cross-node topologies with
// tcp-rr and tcp-stream in the first 3 rounds only. Time: sockperf 3.7
// sleeps 2 s after its warm-up whatever the flags (--dontwarmup and
// --pre-warmup-wait do not remove it), so a sockperf run takes about
// 4.4 s, the other measurements about 1.1 s: 26 single-node measurements
// a round (13 of them sockperf), about 71 s, 5.9 minutes for 5 rounds; the
// cross-node part 3 × 22 s; set-up and the control plane about 1.7
// minutes: about 8.7 minutes in all (estimated from the per-measurement
// times of earlier runs; before, 4 rounds of 2 s took 10m00s).
// History: 5 rounds of 2 s at first, cut to 4 when the policy, events and
// propagation parts came, back to 5 of 1 s when the cross-node part pushed
// 4 rounds of 2 s to 10 minutes. The service scaling is not in quick: its
// set-up (two more labs, 10000 services) and measurements would add about
// a minute (`--topologies` on the full profile runs it alone).
// full (`make bench-full`): 10-second measurements, 9 rounds, 1000, 10000
// and 50000 entries (tcp-rr, tcp-crr and udp-rr on the policy topologies),
// the cross-node topologies with tcp-rr, tcp-stream and udp-rr, the
// service scaling (svc-crr on MEMBRANE-SVC-N, KUBE-PROXY-IPTABLES-N and
// NFT-VMAP-N for N = 1, 1000, 10000, 30000: 12 measurements a round, about
// 18 minutes), 200 CNI samples, K=1000, 100 propagation iterations.
func Profile(name string) (Config, error) {
	all := []string{WorkloadTCPRR, WorkloadTCPStream, WorkloadTCPCRR, WorkloadUDPRR}
	events := []string{WorkloadTCPRR, WorkloadTCPCRR}
	base := []TopologySpec{{Kind: KindDirect}, {Kind: KindRouted}, {Kind: KindBridge}, {Kind: KindMembrane},
		// Flow events off, measured right after MEMBRANE (default level).
		{Kind: KindMembrane, MonitorLevel: "off", Workloads: events}}
	switch name {
	case ProfileQuick:
		policy := []string{WorkloadTCPRR, WorkloadTCPCRR}
		// The policy baselines run what the policy targets compare
		// (tcp-rr, tcp-crr), as the Membrane policy topologies do.
		topos := append(base,
			TopologySpec{Kind: KindIPTables, PolicyEntries: 10000, Workloads: policy},
			TopologySpec{Kind: KindNFTSet, PolicyEntries: 10000, Workloads: policy},
			TopologySpec{Kind: KindMembranePolicy, PolicyEntries: 0, Workloads: policy},
			TopologySpec{Kind: KindMembranePolicy, PolicyEntries: 10000, Workloads: policy})
		// Cross-node: the TCP request/response and stream only
		// (udp-rr would add about 50 s), in 3 of the 5 rounds.
		cross := crossNodeTopologies([]string{WorkloadTCPRR, WorkloadTCPStream})
		for i := range cross {
			cross[i].Rounds = 3
		}
		return Config{
			Profile:     name,
			Rounds:      5,
			Duration:    time.Second,
			Topologies:  append(topos, cross...),
			Workloads:   all,
			CNI:         CNIConfig{Plugins: []string{"membrane", "ptp"}, Concurrency: []int{1, 20}, Batch: 20, Rounds: 5},
			Memory:      MemoryConfig{Endpoints: 100, Settle: 3 * time.Second},
			Propagation: PropagationConfig{Endpoints: 100, Iterations: 30, Interval: 500 * time.Microsecond, Timeout: 3 * time.Second},
		}, nil
	case ProfileFull:
		policy := []string{WorkloadTCPRR, WorkloadTCPCRR, WorkloadUDPRR}
		topos := append(base,
			TopologySpec{Kind: KindIPTables, PolicyEntries: 1000},
			TopologySpec{Kind: KindIPTables, PolicyEntries: 10000},
			TopologySpec{Kind: KindIPTables, PolicyEntries: 50000, Workloads: policy},
			TopologySpec{Kind: KindNFTSet, PolicyEntries: 1000},
			TopologySpec{Kind: KindNFTSet, PolicyEntries: 10000},
			TopologySpec{Kind: KindNFTSet, PolicyEntries: 50000, Workloads: policy})
		for _, n := range []int{0, 1000, 10000, 50000} {
			topos = append(topos, TopologySpec{Kind: KindMembranePolicy, PolicyEntries: n, Workloads: policy})
		}
		topos = append(topos, crossNodeTopologies([]string{WorkloadTCPRR, WorkloadTCPStream, WorkloadUDPRR})...)
		topos = append(topos, serviceTopologies([]int{1, 1000, 10000, 30000})...)
		return Config{
			Profile:     name,
			Rounds:      9,
			Duration:    10 * time.Second,
			Topologies:  topos,
			Workloads:   append(all, WorkloadSvcCRR),
			CNI:         CNIConfig{Plugins: []string{"membrane", "ptp"}, Concurrency: []int{1, 20}, Batch: 20, Rounds: 10},
			Memory:      MemoryConfig{Endpoints: 1000, Settle: 5 * time.Second},
			Propagation: PropagationConfig{Endpoints: 100, Iterations: 100, Interval: 500 * time.Microsecond, Timeout: 3 * time.Second},
		}, nil
	}
	return Config{}, fmt.Errorf("unknown profile %q: want %s or %s", name, ProfileQuick, ProfileFull)
}

// crossNodeTopologies are the four cross-node topologies running the
// given workloads, each Membrane topology right after its baseline so that
// every pair is measured back to back (A B A B).
func crossNodeTopologies(workloads []string) []TopologySpec {
	var out []TopologySpec
	for _, k := range []string{KindKernelVXLAN, KindMembraneVXLAN2Node, KindRouted2Node, KindMembraneNative2Node} {
		out = append(out, TopologySpec{Kind: k, Workloads: slices.Clone(workloads)})
	}
	return out
}

// serviceTopologies are the service scaling topologies for each N, the
// three datapaths of one N back to back (A B C A B C), running svc-crr.
func serviceTopologies(ns []int) []TopologySpec {
	var out []TopologySpec
	for _, n := range ns {
		for _, k := range []string{KindMembraneSvc, KindKubeProxyIPTables, KindNFTVMap} {
			out = append(out, TopologySpec{Kind: k, Services: n, Workloads: []string{WorkloadSvcCRR}})
		}
	}
	return out
}

// Limits that keep every loop bounded.
const (
	maxRounds        = 50
	maxDuration      = 2 * time.Minute
	maxEndpoints     = 2000
	maxConcurrency   = 64
	maxPolicyEntries = 65000 // distinct (source, port) pairs of denyEntry
	maxTopologies    = 40    // Membrane labs get 10.200.(160+index).0/24
	maxIterations    = 1000
	// maxPropagationEndpoints fits the propagation lab's /22.
	maxPropagationEndpoints = 1000
)

// Validate checks a config.
func (c Config) Validate() error {
	var errs []error
	if c.Profile == "" {
		errs = append(errs, errors.New("profile is empty"))
	}
	if c.Rounds < 1 || c.Rounds > maxRounds {
		errs = append(errs, fmt.Errorf("rounds %d: want 1..%d", c.Rounds, maxRounds))
	}
	if c.Duration < 500*time.Millisecond || c.Duration > maxDuration {
		errs = append(errs, fmt.Errorf("duration %s: want 500ms..%s", c.Duration, maxDuration))
	}
	if c.CPU < 0 {
		errs = append(errs, fmt.Errorf("cpu %d is negative", c.CPU))
	}
	seen := map[string]bool{}
	for _, t := range c.Topologies {
		if _, ok := topologyKinds[t.Kind]; !ok {
			errs = append(errs, fmt.Errorf("topology kind %q is unknown", t.Kind))
		}
		if t.PolicyEntries < 0 || t.PolicyEntries > maxPolicyEntries {
			errs = append(errs, fmt.Errorf("topology %s: policy entries %d out of 0..%d", t.Name(), t.PolicyEntries, maxPolicyEntries))
		}
		if (t.Kind == KindIPTables || t.Kind == KindNFTSet) && t.PolicyEntries < 1 {
			errs = append(errs, fmt.Errorf("topology %s needs policy entries", t.Kind))
		}
		if t.Kind == KindMembrane && t.PolicyEntries > 0 {
			errs = append(errs, fmt.Errorf("topology %s: policy entries need kind %s", t.Name(), KindMembranePolicy))
		}
		if t.service() {
			if t.Services < 1 || t.Services > maxServices {
				errs = append(errs, fmt.Errorf("topology %s: services %d out of 1..%d", t.Name(), t.Services, maxServices))
			}
			if t.PolicyEntries != 0 || t.MonitorLevel != "" {
				errs = append(errs, fmt.Errorf("topology %s takes no policy entries or monitor level", t.Name()))
			}
		} else if t.Services != 0 {
			errs = append(errs, fmt.Errorf("topology %s: services need kind %s, %s or %s", t.Name(), KindMembraneSvc, KindKubeProxyIPTables, KindNFTVMap))
		}
		if t.Rounds < 0 {
			errs = append(errs, fmt.Errorf("topology %s: rounds %d is negative", t.Name(), t.Rounds))
		}
		if t.crossNode() && (t.PolicyEntries != 0 || t.MonitorLevel != "") {
			errs = append(errs, fmt.Errorf("topology %s takes no policy entries or monitor level", t.Name()))
		}
		if t.MonitorLevel != "" && (!t.isMembrane() || !slices.Contains(monitorLevels, t.MonitorLevel)) {
			errs = append(errs, fmt.Errorf("topology %s: monitor level %q: want one of %v on a Membrane topology", t.Name(), t.MonitorLevel, monitorLevels))
		}
		for _, w := range t.Workloads {
			// A workload left out of Config.Workloads (--workloads) is
			// simply not run; an unknown one is a typo.
			if _, ok := workloadKinds[w]; !ok {
				errs = append(errs, fmt.Errorf("topology %s: workload %q is unknown", t.Name(), w))
			}
		}
		if seen[t.Name()] {
			errs = append(errs, fmt.Errorf("topology %s listed twice", t.Name()))
		}
		seen[t.Name()] = true
	}
	for _, w := range c.Workloads {
		if _, ok := workloadKinds[w]; !ok {
			errs = append(errs, fmt.Errorf("workload %q is unknown", w))
		}
	}
	for _, p := range c.CNI.Plugins {
		if !slices.Contains([]string{"membrane", "ptp"}, p) {
			errs = append(errs, fmt.Errorf("cni plugin %q is unknown: want membrane or ptp", p))
		}
	}
	if len(c.CNI.Plugins) > 0 {
		if c.CNI.Rounds < 1 || c.CNI.Rounds > maxRounds {
			errs = append(errs, fmt.Errorf("cni rounds %d: want 1..%d", c.CNI.Rounds, maxRounds))
		}
		if c.CNI.Batch < 1 || c.CNI.Batch > maxConcurrency {
			errs = append(errs, fmt.Errorf("cni batch %d: want 1..%d", c.CNI.Batch, maxConcurrency))
		}
		for _, n := range c.CNI.Concurrency {
			if n < 1 || n > maxConcurrency {
				errs = append(errs, fmt.Errorf("cni concurrency %d: want 1..%d", n, maxConcurrency))
			}
		}
	}
	if len(c.Topologies) > maxTopologies {
		errs = append(errs, fmt.Errorf("%d topologies: at most %d", len(c.Topologies), maxTopologies))
	}
	if p := c.Propagation; p.Endpoints != 0 {
		if p.Endpoints < 2 || p.Endpoints > maxPropagationEndpoints {
			errs = append(errs, fmt.Errorf("propagation endpoints %d: want 0 or 2..%d", p.Endpoints, maxPropagationEndpoints))
		}
		if p.Iterations < 1 || p.Iterations > maxIterations {
			errs = append(errs, fmt.Errorf("propagation iterations %d: want 1..%d", p.Iterations, maxIterations))
		}
		if p.Interval < 100*time.Microsecond || p.Interval > 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("propagation interval %s: want 100µs..100ms", p.Interval))
		}
		if p.Timeout < 100*time.Millisecond || p.Timeout > time.Minute {
			errs = append(errs, fmt.Errorf("propagation timeout %s: want 100ms..1m", p.Timeout))
		}
	}
	if c.Memory.Endpoints < 0 || c.Memory.Endpoints > maxEndpoints {
		errs = append(errs, fmt.Errorf("memory endpoints %d: want 0..%d", c.Memory.Endpoints, maxEndpoints))
	}
	if c.BinDir != "" && !filepath.IsAbs(c.BinDir) {
		errs = append(errs, fmt.Errorf("bin dir %q is not absolute", c.BinDir))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.CNIPluginDir == "" {
		c.CNIPluginDir = "/usr/lib/cni"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// needsMembrane reports whether the run needs the Membrane binaries.
func (c Config) needsMembrane() bool {
	return slices.ContainsFunc(c.Topologies, TopologySpec.isMembrane) ||
		slices.Contains(c.CNI.Plugins, "membrane") || c.Memory.Endpoints > 0 || c.Propagation.Endpoints > 0
}
