package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

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

// ---- MEMBRANE ----

// ErrNotSupported: the topology cannot take this parameter yet.
var ErrNotSupported = errors.New("not supported")

// membrane is a Membrane lab (internal/lab): a node namespace running
// membrane-agent, and two pods attached by the real membrane-cni.
type membrane struct {
	spec TopologySpec
	lab  *lab.Lab
}

func (m *membrane) Describe() string {
	return "Membrane lab: node namespace with membrane-agent, two pods attached by membrane-cni (libcni), BPF redirect_peer between them"
}

// labNamePrefix starts the names of the labs a run creates; `membrane-bench
// clean` reclaims labs with these prefixes.
var labNamePrefixes = []string{"bench-", "bmem-"}

func (m *membrane) Setup(ctx context.Context, env *Env) (Pair, error) {
	if m.spec.PolicyEntries > 0 {
		// The hook for the policy-scaling comparison: once Membrane's
		// policy datapath lands, install PolicyEntries never-matching
		// entries for the server pod here (as the iptables and nftables
		// baselines do) and return the same pair.
		return Pair{}, fmt.Errorf("topology %s: policy entries: %w until the policy datapath lands", m.spec.Name(), ErrNotSupported)
	}
	l, err := upLab(ctx, env, "bench-"+env.ID, benchLabCIDR)
	if err != nil {
		return Pair{}, err
	}
	m.lab = l
	var pair Pair
	for i, name := range []string{"client", "server"} {
		p, err := l.AddPod(ctx, lab.PodSpec{Namespace: "bench", Name: name, Labels: map[string]string{"app": "bench-" + name}})
		if err != nil {
			return Pair{}, fmt.Errorf("set up %s: %w", m.spec.Name(), err)
		}
		ep := Endpoint{Netns: p.Netns, Addr: p.IP}
		if i == 0 {
			pair.Client = ep
		} else {
			pair.Server = ep
		}
	}
	return pair, nil
}

// Pod CIDRs of the labs. They lie inside the agent's default
// --cluster-cidr (lab.DefaultClusterCIDR, 10.200.0.0/16), which the agent
// requires; each lab's node namespace is its own, so they cannot clash with
// other labs. The memory lab's /21 holds up to 2046 endpoints.
var (
	benchLabCIDR  = netip.MustParsePrefix("10.200.213.0/24")
	memoryLabCIDR = netip.MustParsePrefix("10.200.216.0/21")
)

// labServePort is the only port of the lab's own traffic servers; the
// benchmark servers use other ports.
var labServePorts = []lab.Port{{Port: 19999, Proto: "tcp"}}

// upLab starts a lab and registers its removal.
func upLab(ctx context.Context, env *Env, name string, cidr netip.Prefix) (*lab.Lab, error) {
	cfg := lab.Config{
		Name:       name,
		Dir:        filepath.Join(lab.DefaultBaseDir, name),
		BinDir:     env.BinDir,
		PodCIDR:    cidr,
		ServePorts: labServePorts,
		Logger:     env.Log.With("lab", name),
	}
	// Reclaim removes the lab whether or not Up got far enough to return it.
	env.Defer("remove lab "+name, func(ctx context.Context) error { return lab.Reclaim(ctx, cfg) })
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("lab up %s: %w", name, err)
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
		if !e.IsDir() || !slices.ContainsFunc(labNamePrefixes, func(p string) bool { return strings.HasPrefix(e.Name(), p) }) {
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
