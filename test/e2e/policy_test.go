package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
)

// mpod is the test's model of a lab pod.
type mpod struct {
	ns, name string
	labels   map[string]string
	ports    []api.NamedPort
	ip       string
}

func (p mpod) key() string { return p.ns + "/" + p.name }

// nsLabels are the labels the test gives its namespaces.
var nsLabels = map[string]map[string]string{
	"alpha": {"team": "a", "env": "prod"},
	"beta":  {"team": "b", "env": "prod"},
	"gamma": {"team": "c", "env": "dev"},
}

// verdictFn is the hand-written truth of one step: may src reach dst on
// proto/port? Self traffic never leaves the pod and is not asked.
type verdictFn func(src, dst mpod, proto string, port uint16) bool

// TestPolicyMatrices applies a sequence of policies to three namespaces of
// three pods each and, after every step, compares the full pod×pod matrix
// for TCP and UDP on two ports with the expected one.
func TestPolicyMatrices(t *testing.T) {
	l := newLab(t, nil)
	runPolicyMatrices(t, l, func(int) string { return "" })
}

// runPolicyMatrices runs the policy sequence on lab l; nodeOf places the
// i-th pod ("" = the lab's default node).
func runPolicyMatrices(t *testing.T, l *lab.Lab, nodeOf func(i int) string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c := api.NewClient(l.Nodes()[0].Socket)

	// Namespaces first, so identities carry their labels from the start.
	var nsDocs []string
	for ns, labels := range nsLabels {
		var ls []string
		for k, v := range labels {
			ls = append(ls, fmt.Sprintf("    %s: %s", k, v))
		}
		nsDocs = append(nsDocs, fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels:\n%s\n", ns, strings.Join(ls, "\n")))
	}
	if _, err := c.Apply(ctx, api.ApplyRequest{Manifest: strings.Join(nsDocs, "---\n"), Wait: true}); err != nil {
		t.Fatalf("apply namespaces: %v", err)
	}

	var pods []mpod
	for _, ns := range []string{"alpha", "beta", "gamma"} {
		for _, p := range []mpod{
			{name: "web", labels: map[string]string{"app": "web", "role": "frontend"}, ports: []api.NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}}},
			{name: "api", labels: map[string]string{"app": "api", "role": "backend"}, ports: []api.NamedPort{{Name: "metrics", Port: 9090, Protocol: "TCP"}}},
			{name: "db", labels: map[string]string{"app": "db", "role": "backend"}},
		} {
			p.ns = ns
			got, err := l.AddPod(ctx, lab.PodSpec{Namespace: ns, Name: p.name, Labels: p.labels, Ports: p.ports, Node: nodeOf(len(pods))})
			if err != nil {
				t.Fatalf("add pod %s: %v", p.key(), err)
			}
			p.ip = got.IP.String()
			pods = append(pods, p)
		}
	}
	find := func(key string) mpod {
		for _, p := range pods {
			if p.key() == key {
				return p
			}
		}
		t.Fatalf("no pod %s", key)
		return mpod{}
	}
	alphaWeb := find("alpha/web")

	// Before the steps: every pod reaches every pod (in native mode the
	// router learns the nodes' pod CIDRs by BGP a few seconds after they
	// come up; the steps test policy, not how fast routes converge).
	eventually(t, 60*time.Second, "pods reach each other before any policy", func() bool {
		m, err := l.Probe(ctx, lab.ProbeSpec{Proto: "tcp", Port: 8080, Timeout: time.Second})
		return err == nil && m.Full()
	})

	type step struct {
		name   string
		apply  string // manifest to apply
		delete string // manifest to delete
		want   verdictFn
	}
	all := func(mpod, mpod, string, uint16) bool { return true }
	denyAllAlpha := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
`
	fromNS := func(team string) string {
		return fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team, namespace: alpha}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: %s}}
`, team)
	}
	andPeer := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-prod-frontends, namespace: beta}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {env: prod}}
      podSelector: {matchLabels: {role: frontend}}
    ports: [{protocol: TCP, port: 9090}]
`
	ipBlock := fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-block, namespace: gamma}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - ipBlock: {cidr: 10.200.0.0/16, except: [%s/32]}
`, alphaWeb.ip)
	egress := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-egress, namespace: gamma}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{protocol: UDP, port: 8080}]
`
	namedPort := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-metrics, namespace: beta}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: metrics}]
`
	denyGamma := `apiVersion: membrane.io/v1
kind: MembranePolicy
metadata: {name: no-gamma, namespace: beta}
spec:
  endpointSelector: {matchLabels: {app: web}}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEndpoints:
    - matchLabels: {io.kubernetes.pod.namespace: gamma}
`

	// Layers of the expected truth, composed step by step.
	alphaIngress := func(src mpod, team string) bool { // deny-all + from-team
		return team != "" && nsLabels[src.ns]["team"] == team
	}
	var (
		team          string // "" = deny-all only
		alphaEnforced bool
		andPeerOn     bool
		ipBlockOn     bool
		egressOn      bool
		namedPortOn   bool
		denyGammaOn   bool
	)
	model := func(src, dst mpod, proto string, port uint16) bool {
		// Egress of the source.
		if egressOn && src.key() == "gamma/api" {
			if !(dst.key() == "gamma/db" && proto == "udp" && port == 8080) {
				return false
			}
		}
		// Ingress of the destination.
		switch {
		case alphaEnforced && dst.ns == "alpha":
			return alphaIngress(src, team)
		case andPeerOn && dst.key() == "beta/db":
			return nsLabels[src.ns]["env"] == "prod" && src.labels["role"] == "frontend" && proto == "tcp" && port == 9090
		case ipBlockOn && dst.key() == "gamma/web":
			return src.ip != alphaWeb.ip
		case namedPortOn && dst.key() == "beta/api":
			return proto == "tcp" && port == 9090
		case denyGammaOn && dst.key() == "beta/web":
			return src.ns != "gamma"
		}
		return true
	}

	steps := []struct {
		step
		set func()
	}{
		{step{name: "no policy", want: all}, func() {}},
		{step{name: "deny all ingress in alpha", apply: denyAllAlpha}, func() { alphaEnforced = true }},
		{step{name: "alpha allows namespace team=b", apply: fromNS("b")}, func() { team = "b" }},
		{step{name: "namespace AND pod selector in one peer", apply: andPeer}, func() { andPeerOn = true }},
		{step{name: "ipBlock with except", apply: ipBlock}, func() { ipBlockOn = true }},
		{step{name: "egress restriction", apply: egress}, func() { egressOn = true }},
		{step{name: "named port", apply: namedPort}, func() { namedPortOn = true }},
		{step{name: "update: alpha allows team=c instead", apply: fromNS("c")}, func() { team = "c" }},
		{step{name: "MembranePolicy ingressDeny", apply: denyGamma}, func() { denyGammaOn = true }},
		{step{name: "delete everything restores connectivity",
			delete: strings.Join([]string{denyAllAlpha, fromNS("c"), andPeer, ipBlock, egress, namedPort, denyGamma}, "---\n")},
			func() {
				alphaEnforced, andPeerOn, ipBlockOn, egressOn, namedPortOn, denyGammaOn = false, false, false, false, false, false
			}},
	}
	for _, s := range steps {
		var rev int64
		switch {
		case s.apply != "":
			out, err := c.Apply(ctx, api.ApplyRequest{Manifest: s.apply, Wait: true})
			if err != nil {
				t.Fatalf("step %q: apply: %v", s.name, err)
			}
			rev = out.Revision
		case s.delete != "":
			out, err := c.DeleteResources(ctx, api.ApplyRequest{Manifest: s.delete, Wait: true})
			if err != nil {
				t.Fatalf("step %q: delete: %v", s.name, err)
			}
			rev = out.Revision
		}
		s.set()
		for _, n := range l.Nodes() {
			nc := api.NewClient(n.Socket)
			// Every node enforces the step (the others learn it through
			// their etcd watch)...
			waitRealized(t, ctx, nc, rev)
			// ...and policy governs new connections: flows tracked by an
			// earlier step (a reused UDP source port) would legitimately
			// bypass it.
			if _, err := nc.BPFCTFlush(ctx); err != nil {
				t.Fatal(err)
			}
		}
		checkMatrices(t, ctx, l, s.name, pods, model)
	}
}

func waitRealized(t *testing.T, ctx context.Context, c *api.Client, rev int64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Policy.RealizedRevision >= rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s does not enforce revision %d (realized %d, err %v)", st.NodeName, rev, st.Policy.RealizedRevision, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func checkMatrices(t *testing.T, ctx context.Context, l *lab.Lab, step string, pods []mpod, want verdictFn) {
	t.Helper()
	byKey := map[string]mpod{}
	for _, p := range pods {
		byKey[p.key()] = p
	}
	for _, spec := range []lab.ProbeSpec{{Proto: "tcp", Port: 8080}, {Proto: "tcp", Port: 9090}, {Proto: "udp", Port: 8080}, {Proto: "udp", Port: 9090}} {
		spec.Timeout = time.Second
		m, err := l.Probe(ctx, spec)
		if err != nil {
			t.Fatalf("step %q: probe %s/%d: %v", step, spec.Proto, spec.Port, err)
		}
		var diffs []string
		for i, from := range m.Pods {
			for j, to := range m.Pods {
				if i == j {
					continue
				}
				exp := want(byKey[from], byKey[to], spec.Proto, spec.Port)
				if m.OK[i][j] != exp {
					diffs = append(diffs, fmt.Sprintf("  %s → %s: got %v, want %v (%s)", from, to, m.OK[i][j], exp, m.Err[i][j]))
				}
			}
		}
		if len(diffs) > 0 {
			var b strings.Builder
			_ = m.Render(&b)
			t.Errorf("step %q: %s/%d matrix differs in %d cells:\n%s\n%s", step, spec.Proto, spec.Port, len(diffs), strings.Join(diffs, "\n"), b.String())
		}
	}
}
