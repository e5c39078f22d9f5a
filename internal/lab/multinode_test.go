package lab

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/testutil"
)

// TestLabMultiNode runs three-node labs with the real agents: vxlan with
// the embedded etcd, native (BGP through bird) with three external etcd
// members. Pods on every node, full cross-node TCP/UDP/ICMP matrices, the
// router's learned routes (native), a node joining and leaving at run
// time, an agent restart, and a clean Down.
func TestLabMultiNode(t *testing.T) {
	testutil.Privileged(t)
	if testing.Short() {
		t.Skip("builds the binaries and runs agents")
	}
	_, errBird := findSystemBinary("bird", "bird2")
	_, errEtcd := findSystemBinary("etcd", "etcd-server")
	testutil.RequireOrFail(t, errBird == nil && errEtcd == nil, "needs bird2 and etcd-server: %v %v", errBird, errEtcd)
	bin := buildBinaries(t)
	for _, tc := range []struct{ mode, etcd string }{{ModeVXLAN, EtcdEmbedded}, {ModeNative, EtcdExternal}} {
		t.Run(tc.mode, func(t *testing.T) { testMultiNode(t, bin, tc.mode, tc.etcd) })
	}
}

func testMultiNode(t *testing.T, bin, mode, etcd string) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cfg := Config{
		Name:   "mn" + testutil.UniqueSuffix(),
		Dir:    filepath.Join(t.TempDir(), "lab"),
		BinDir: bin,
		Nodes:  3,
		Mode:   mode,
		Etcd:   etcd,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	cfgd := cfg.withDefaults()
	t.Cleanup(func() {
		if err := Reclaim(context.Background(), cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	nodes := l.Nodes()
	if len(nodes) != 3 {
		t.Fatalf("%d nodes", len(nodes))
	}
	seen := map[string]string{}
	for _, n := range nodes {
		if !n.PodCIDR.IsValid() || !cfgd.ClusterCIDR.Contains(n.PodCIDR.Addr()) {
			t.Errorf("node %s: pod CIDR %s not in cluster CIDR %s", n.Name, n.PodCIDR, cfgd.ClusterCIDR)
		}
		if o, dup := seen[n.PodCIDR.String()]; dup {
			t.Errorf("nodes %s and %s share pod CIDR %s", o, n.Name, n.PodCIDR)
		}
		seen[n.PodCIDR.String()] = n.Name
	}

	// Two pods on node1 (same-node pairs), one on each other node.
	specs := []PodSpec{
		{Namespace: "default", Name: "a1", Node: "node1", Labels: map[string]string{"app": "a"}},
		{Namespace: "default", Name: "a2", Node: "node1", Labels: map[string]string{"app": "a"}},
		{Namespace: "default", Name: "b", Node: "node2", Labels: map[string]string{"app": "b"}},
		{Namespace: "other", Name: "c", Node: "node3", Labels: map[string]string{"app": "c"}},
	}
	addPods(t, ctx, l, specs...)

	if mode == ModeNative {
		expectRoutes(t, ctx, l, l.Nodes())
	}
	expectFullMatrices(t, ctx, l, "after up")

	// A node joins at run time.
	n4, err := l.AddNode(ctx)
	if err != nil {
		t.Fatalf("add node: %v", err)
	}
	if n4.Name != "node4" || !n4.PodCIDR.IsValid() {
		t.Errorf("added node %+v", n4)
	}
	addPods(t, ctx, l, PodSpec{Namespace: "default", Name: "d", Node: n4.Name})
	if mode == ModeNative {
		expectRoutes(t, ctx, l, l.Nodes())
	}
	expectFullMatrices(t, ctx, l, "after node4 joined")

	// An agent restart keeps cross-node traffic going.
	if err := l.RestartAgent(ctx, "node2"); err != nil {
		t.Fatalf("restart agent: %v", err)
	}
	expectFullMatrices(t, ctx, l, "after node2's agent restarted")

	// The node leaves: its pods and namespace go, the router forgets it.
	if err := l.RemoveNode(ctx, n4.Name); err != nil {
		t.Fatalf("remove node: %v", err)
	}
	if netnsExists(n4.Netns) {
		t.Errorf("%s remains", n4.Netns)
	}
	for _, p := range l.Pods() {
		if p.Node == n4.Name {
			t.Errorf("pod %s of removed node remains", p.Key())
		}
	}
	if mode == ModeNative {
		out, err := l.RouterCommand(ctx, "show", "route")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, n4.PodCIDR.String()) {
			t.Errorf("router still routes removed node's %s:\n%s", n4.PodCIDR, out)
		}
	}
	expectFullMatrices(t, ctx, l, "after node4 left")

	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != mode || st.EtcdMode != etcd || len(st.Nodes) != 3 {
		t.Errorf("status: mode %q etcd %q %d nodes", st.Mode, st.EtcdMode, len(st.Nodes))
	}
	for _, n := range st.Nodes {
		if !n.AgentAlive || n.API == nil || !n.API.Kvstore.Healthy {
			t.Errorf("status of %s: alive %v api %v", n.Name, n.AgentAlive, n.APIError)
		}
	}

	var pins []string
	for _, n := range l.Nodes() {
		pins = append(pins, n.PinDir)
	}
	if err := l.Down(ctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	for _, p := range append(pins, n4.PinDir) {
		assertNoLeftovers(t, cfg.Name, cfgd.Dir, p)
	}
}

func addPods(t *testing.T, ctx context.Context, l *Lab, specs ...PodSpec) {
	t.Helper()
	for _, s := range specs {
		p, err := l.AddPod(ctx, s)
		if err != nil {
			t.Fatalf("add pod %s/%s on %s: %v", s.Namespace, s.Name, s.Node, err)
		}
		n, err := l.NodeByName(s.Node)
		if err != nil {
			t.Fatal(err)
		}
		if !n.PodCIDR.Contains(p.IP) {
			t.Errorf("pod %s on %s got %s, outside the node's %s", p.Key(), s.Node, p.IP, n.PodCIDR)
		}
	}
}

// expectFullMatrices waits (up to 30 s: routes and the ipcache propagate
// through etcd and BGP) for full TCP, UDP and ICMP matrices.
func expectFullMatrices(t *testing.T, ctx context.Context, l *Lab, when string) {
	t.Helper()
	for _, spec := range []ProbeSpec{{Proto: "tcp", Port: 8080}, {Proto: "udp", Port: 9090}, {Proto: "icmp"}} {
		var last Matrix
		deadline := time.Now().Add(30 * time.Second)
		for {
			m, err := l.Probe(ctx, spec)
			if err != nil {
				t.Fatalf("%s: probe %s: %v", when, spec.Proto, err)
			}
			last = m
			if m.Full() || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		if !last.Full() {
			var b strings.Builder
			_ = last.Render(&b)
			t.Errorf("%s: %s matrix not full after 30s:\n%s", when, spec.Proto, b.String())
		}
	}
}

// expectRoutes waits (up to 30 s) until the router has learned every
// node's pod CIDR with the node's IP as next hop.
func expectRoutes(t *testing.T, ctx context.Context, l *Lab, nodes []Node) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var out string
	for {
		var err error
		out, err = l.RouterCommand(ctx, "show", "route")
		if err != nil {
			t.Fatal(err)
		}
		missing := ""
		for _, n := range nodes {
			if !routeLearned(out, n.PodCIDR.String(), n.IP.String()) {
				missing += fmt.Sprintf(" %s(%s via %s)", n.Name, n.PodCIDR, n.IP)
			}
		}
		if missing == "" {
			return
		}
		if time.Now().After(deadline) {
			protos, _ := l.RouterCommand(ctx, "show", "protocols")
			t.Errorf("router has not learned%s after 30s:\n%s\n%s", missing, out, protos)
			return
		}
		time.Sleep(time.Second)
	}
}

// routeLearned finds "PREFIX ... via NEXTHOP" in birdc show route output,
// where the via may be on the line after the prefix.
func routeLearned(out, prefix, nextHop string) bool {
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		if !strings.HasPrefix(strings.TrimSpace(line), prefix+" ") {
			continue
		}
		block := line
		for j := i + 1; j < len(lines) && strings.HasPrefix(lines[j], "\t"); j++ {
			block += lines[j]
		}
		if strings.Contains(block, "via "+nextHop+" ") || strings.Contains(block, "via "+nextHop+"\t") || strings.HasSuffix(strings.TrimSpace(block), "via "+nextHop) {
			return true
		}
	}
	return false
}
