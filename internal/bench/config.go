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
)

// Workload names.
const (
	WorkloadTCPRR     = "tcp-rr"
	WorkloadTCPStream = "tcp-stream"
	WorkloadTCPCRR    = "tcp-crr"
	WorkloadUDPRR     = "udp-rr"
)

// TopologySpec selects a topology and its parameters.
type TopologySpec struct {
	Kind string `json:"kind"`
	// PolicyEntries is the number of policy entries the datapath holds:
	// iptables rules (KindIPTables), set elements (KindNFTSet) or, once
	// Membrane's policy datapath lands, Membrane policy map entries
	// (KindMembrane, which accepts only 0 for now). None of them match the
	// benchmark traffic, so every packet pays for the lookup.
	PolicyEntries int `json:"policyEntries,omitempty"`
}

// Name is how the topology appears in results and reports:
// "DIRECT", "IPTABLES-10000", "MEMBRANE", "MEMBRANE-POLICY-1000".
func (s TopologySpec) Name() string {
	switch s.Kind {
	case KindIPTables:
		return fmt.Sprintf("IPTABLES-%d", s.PolicyEntries)
	case KindNFTSet:
		return fmt.Sprintf("NFT-SET-%d", s.PolicyEntries)
	case KindMembrane:
		if s.PolicyEntries > 0 {
			return fmt.Sprintf("MEMBRANE-POLICY-%d", s.PolicyEntries)
		}
		return "MEMBRANE"
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
// quick (`make bench`) must finish within 10 minutes on a 2-core VM:
// 2-second measurements, 5 rounds, the 10000-entry policy baselines only,
// 100 CNI ADD samples per (plugin, concurrency), K=100 endpoints. (6
// topologies × 4 workloads × 5 rounds are 120 measurements, and sockperf
// adds about 2.3 s of its own start-up to each of its runs: at 3 s per
// measurement the datapath part alone takes about 8.5 minutes.)
// full (`make bench-full`): 10-second measurements, 9 rounds, 1000 and
// 10000 entries, 200 CNI samples, K=1000.
func Profile(name string) (Config, error) {
	all := []string{WorkloadTCPRR, WorkloadTCPStream, WorkloadTCPCRR, WorkloadUDPRR}
	base := []TopologySpec{{Kind: KindDirect}, {Kind: KindRouted}, {Kind: KindBridge}, {Kind: KindMembrane}}
	switch name {
	case ProfileQuick:
		return Config{
			Profile:  name,
			Rounds:   5,
			Duration: 2 * time.Second,
			Topologies: append(base,
				TopologySpec{Kind: KindIPTables, PolicyEntries: 10000},
				TopologySpec{Kind: KindNFTSet, PolicyEntries: 10000}),
			Workloads: all,
			CNI:       CNIConfig{Plugins: []string{"membrane", "ptp"}, Concurrency: []int{1, 20}, Batch: 20, Rounds: 5},
			Memory:    MemoryConfig{Endpoints: 100, Settle: 3 * time.Second},
		}, nil
	case ProfileFull:
		return Config{
			Profile:  name,
			Rounds:   9,
			Duration: 10 * time.Second,
			Topologies: append(base,
				TopologySpec{Kind: KindIPTables, PolicyEntries: 1000},
				TopologySpec{Kind: KindIPTables, PolicyEntries: 10000},
				TopologySpec{Kind: KindNFTSet, PolicyEntries: 1000},
				TopologySpec{Kind: KindNFTSet, PolicyEntries: 10000}),
			Workloads: all,
			CNI:       CNIConfig{Plugins: []string{"membrane", "ptp"}, Concurrency: []int{1, 20}, Batch: 20, Rounds: 10},
			Memory:    MemoryConfig{Endpoints: 1000, Settle: 5 * time.Second},
		}, nil
	}
	return Config{}, fmt.Errorf("unknown profile %q: want %s or %s", name, ProfileQuick, ProfileFull)
}

// Limits that keep every loop bounded.
const (
	maxRounds        = 50
	maxDuration      = 2 * time.Minute
	maxEndpoints     = 2000
	maxConcurrency   = 64
	maxPolicyEntries = 100000
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
	return slices.ContainsFunc(c.Topologies, func(t TopologySpec) bool { return t.Kind == KindMembrane }) ||
		slices.Contains(c.CNI.Plugins, "membrane") || c.Memory.Endpoints > 0
}
