package policy

import (
	"math/rand"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const (
	TCP  = ProtoTCP
	UDP  = ProtoUDP
	SCTP = ProtoSCTP
)

// Endpoints of newWorld: 1 default/web, 2 default/db, 3 prod/web,
// 4 dev/client, 5 default/client. Namespace prod has team=a, dev team=b.

func TestNamespaceAndPodSelectorPeers(t *testing.T) {
	w := newWorld()
	t.Run("AND in one peer", func(t *testing.T) {
		in := w.input(t, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {app: web}}
    ports: [{port: 80}]
`)
		res := Resolve(in)
		checkFlows(t, in, res, []flow{
			{"prod web in team a", ep(3), ep(1), TCP, 80, true, "networkpolicy default/and ingress[0]"},
			{"prod web other port", ep(3), ep(1), TCP, 81, false, ""},
			{"prod web UDP", ep(3), ep(1), UDP, 80, false, ""},
			{"dev client team b", ep(4), ep(1), TCP, 80, false, ""},
			{"default client", ep(5), ep(1), TCP, 80, false, ""},
			{"policy ns only selects its own pods", ep(5), ep(3), TCP, 80, true, ""},
		})
	})
	t.Run("OR in two peers", func(t *testing.T) {
		in := w.input(t, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: a}}
    - podSelector: {matchLabels: {app: client}}
`)
		res := Resolve(in)
		checkFlows(t, in, res, []flow{
			{"any pod of team a", ep(3), ep(1), TCP, 80, true, "networkpolicy default/or ingress[0]"},
			{"client of policy namespace", ep(5), ep(1), UDP, 53, true, "networkpolicy default/or ingress[0]"},
			{"client of other namespace", ep(4), ep(1), TCP, 80, false, ""},
			{"db of policy namespace", ep(2), ep(1), TCP, 80, false, ""},
			{"world", ipPeer("8.8.8.8"), ep(1), TCP, 80, false, ""},
		})
	})
	t.Run("all namespaces and matchExpressions", func(t *testing.T) {
		in := w.input(t, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: expr}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - namespaceSelector: {}
      podSelector:
        matchExpressions:
        - {key: app, operator: In, values: [client, db]}
        - {key: tier, operator: DoesNotExist}
`)
		res := Resolve(in)
		checkFlows(t, in, res, []flow{
			{"dev client", ep(4), ep(1), TCP, 80, true, "networkpolicy default/expr ingress[0]"},
			{"default db", ep(2), ep(1), TCP, 80, true, ""},
			{"default client has tier", ep(5), ep(1), TCP, 80, false, ""},
			{"prod web", ep(3), ep(1), TCP, 80, false, ""},
			{"host still allowed", Peer{Identity: IdentityHost}, ep(1), TCP, 80, true, ""},
			{"remote node is not a pod", Peer{Identity: IdentityRemoteNode}, ep(1), TCP, 80, false, ""},
		})
	})
}

func TestIPBlockExcept(t *testing.T) {
	w := newWorld()
	in := w.input(t, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}
`)
	res := Resolve(in)
	checkFlows(t, in, res, []flow{
		{"pod address inside cidr", ep(5), ep(1), TCP, 80, true, "networkpolicy default/cidr egress[0]"},
		{"pod address inside except", ep(5), ep(3), TCP, 80, false, ""},
		{"external address", ep(5), ipPeer("8.8.8.8"), UDP, 53, true, "networkpolicy default/cidr egress[0]"},
		{"world identity via /0", ep(5), Peer{Identity: IdentityWorld}, TCP, 443, true, ""},
		{"address in /0's except", ep(5), ipPeer("10.5.0.1"), TCP, 80, false, ""},
		{"address in except of the /16", ep(5), ipPeer("10.0.1.77"), TCP, 80, false, ""},
		{"not selected: ingress not enforced", ep(4), ep(5), TCP, 80, true, ""},
	})
	// The CIDR identities of the excepts get no entry at all.
	pol := res.Endpoints[5]
	for _, c := range in.CIDRIdentities {
		_, has := pol.Entries[Key{Identity: c.ID, Egress: true}]
		inExcept := c.Prefix == netip.MustParsePrefix("10.0.1.0/24") || c.Prefix == netip.MustParsePrefix("10.0.0.0/8")
		if has == inExcept {
			t.Errorf("entry for %s (id %d): present=%v", c.Prefix, c.ID, has)
		}
	}
	if _, ok := pol.Entries[Key{Identity: IdentityWorld, Egress: true}]; !ok {
		t.Error("0.0.0.0/0 should select world")
	}
}

func TestNamedPorts(t *testing.T) {
	w := newWorld()
	in := w.input(t, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-http}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}, {port: metrics, protocol: UDP}]
---
apiVersion: membrane.io/v1
kind: MembranePolicy
metadata: {name: web-http, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts: [{ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: pg}, {port: dns, protocol: UDP}, {port: http}]
`)
	res := Resolve(in)
	checkFlows(t, in, res, []flow{
		{"ingress http resolves on default/web to 80", ep(2), ep(1), TCP, 80, true, "networkpolicy default/web-http ingress[0]"},
		{"ingress 8080 is not default/web's http", ep(2), ep(1), TCP, 8080, false, ""},
		{"ingress http resolves on prod/web to 8080", ep(4), ep(3), TCP, 8080, true, "membranepolicy prod/web-http ingress[0]"},
		{"ingress 80 is not prod/web's http", ep(4), ep(3), TCP, 80, false, ""},
		{"named port with other protocol contributes nothing", ep(2), ep(1), UDP, 9090, false, ""},
		{"named port with other protocol, TCP", ep(2), ep(1), TCP, 9090, false, ""},
		{"egress pg resolves on the db identity", ep(5), ep(2), TCP, 5432, true, "networkpolicy default/client-out egress[0]"},
		{"egress dns/UDP", ep(5), ep(2), UDP, 53, true, ""},
		{"egress dns on TCP", ep(5), ep(2), TCP, 53, false, ""},
		{"egress http: db has no such port", ep(5), ep(2), TCP, 80, false, ""},
		{"egress to web not selected", ep(5), ep(1), TCP, 5432, false, ""},
	})
}

func TestDenyPrecedence(t *testing.T) {
	w := newWorld()
	in := w.input(t, `
apiVersion: membrane.io/v1
kind: MembranePolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "22", protocol: TCP}]}]
  - fromEntities: [all]
    toPorts: [{ports: [{port: "443", protocol: ANY}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8000", endPort: 8999, protocol: TCP}]}]
  - toPorts: [{ports: [{port: "22"}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-allow-client}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
`)
	res := Resolve(in)
	checkFlows(t, in, res, []flow{
		{"deny range beats allow on one port inside", ep(5), ep(1), TCP, 8080, false, "membranepolicy default/web ingressDeny[0]"},
		{"deny range beats NetworkPolicy allow-all", ep(5), ep(1), TCP, 8999, false, "membranepolicy default/web ingressDeny[0]"},
		{"client outside the deny range", ep(5), ep(1), TCP, 9000, true, "networkpolicy default/web-allow-client ingress[0]"},
		{"deny range is TCP only", ep(5), ep(1), UDP, 8080, true, ""},
		{"db on 8080 allowed", ep(2), ep(1), TCP, 8080, true, "membranepolicy default/web ingress[0]"},
		{"wildcard deny on 22 beats identity allow", ep(2), ep(1), TCP, 22, false, "membranepolicy default/web ingressDeny[1]"},
		{"wildcard deny on 22 covers UDP (ANY)", ep(2), ep(1), UDP, 22, false, ""},
		{"any protocol 443 expands to TCP, UDP, SCTP", ep(4), ep(1), SCTP, 443, true, "membranepolicy default/web ingress[1]"},
		{"db on 80 no rule", ep(2), ep(1), TCP, 80, false, ""},
	})
	// The covered allow was dropped from the map, not just outranked.
	pol := res.Endpoints[1]
	if e, ok := pol.Entries[Key{Identity: 260, Proto: TCP, Port: 8080, PortPrefixLen: 16}]; ok {
		t.Errorf("allow for client on 8080 kept: %+v", e)
	}
	if e := pol.Entries[Key{Identity: 257, Proto: TCP, Port: 8080, PortPrefixLen: 16}]; e.Deny || e.Cookie != 1 {
		t.Errorf("db 8080 entry = %+v, want allow by rule 1", e)
	}
}

func TestMapStateOrderIndependent(t *testing.T) {
	// A deny added after the allows it covers removes them.
	ms := newMapState()
	ms.add(Key{Identity: 9, Proto: TCP, Port: 80, PortPrefixLen: 16}, Entry{Cookie: 1})
	ms.add(Key{Identity: 9, Proto: UDP, Port: 80, PortPrefixLen: 16}, Entry{Cookie: 1})
	ms.add(Key{Identity: 9, Proto: TCP, Port: 64, PortPrefixLen: 10}, Entry{Deny: true, Cookie: 2})
	want := map[Key]Entry{
		{Identity: 9, Proto: UDP, Port: 80, PortPrefixLen: 16}: {Cookie: 1},
		{Identity: 9, Proto: TCP, Port: 64, PortPrefixLen: 10}: {Deny: true, Cookie: 2},
	}
	if diff := cmp.Diff(want, ms.entries); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
	// An any-protocol allow is not covered by a TCP deny.
	ms.add(Key{Identity: 9}, Entry{Cookie: 3})
	if _, ok := ms.entries[Key{Identity: 9}]; !ok {
		t.Error("any-protocol allow dropped by a TCP deny")
	}
}

func TestDefaultDenySwitching(t *testing.T) {
	w := newWorld()
	policy := `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-web}
spec:
  podSelector: {matchLabels: {app: web}}
`
	empty := w.input(t, "")
	with := w.input(t, policy)
	steps := []struct {
		name      string
		in        Input
		enforced  bool
		allowed   bool
		entries   int
		prodWebOn bool
	}{
		{"no policy", empty, false, true, 0, false},
		{"policy selects web", with, true, false, 1 /* host allow */, false},
		{"policy deleted", empty, false, true, 0, false},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			res := Resolve(s.in)
			pol := res.Endpoints[1]
			if pol.IngressEnforced != s.enforced || pol.EgressEnforced {
				t.Errorf("enforced = %v/%v, want %v/false", pol.IngressEnforced, pol.EgressEnforced, s.enforced)
			}
			if len(pol.Entries) != s.entries {
				t.Errorf("%d entries, want %d: %v", len(pol.Entries), s.entries, pol.Entries)
			}
			if got := res.Endpoints[3].IngressEnforced; got != s.prodWebOn {
				t.Errorf("prod/web enforced = %v: a policy selects only in its namespace", got)
			}
			v := Trace(s.in, res, ep(5), ep(1), TCP, 80)
			if v.Allowed != s.allowed {
				t.Errorf("allowed = %v, want %v", v.Allowed, s.allowed)
			}
			want := DecisionNotEnforced
			if s.enforced {
				want = DecisionNoRule
			}
			if v.Ingress.Decision != want {
				t.Errorf("decision = %s, want %s", v.Ingress.Decision, want)
			}
		})
	}
}

func TestPolicyTypesAndEmptyRules(t *testing.T) {
	w := newWorld()
	hdr := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {matchLabels: {app: client}}\n"
	tests := []struct {
		name       string
		spec       string
		in, eg     bool // enforced
		inOK, egOK bool // ep(5) ← ep(4) ingress and ep(5) → ep(1) egress, TCP 80
		rules      int
	}{
		{"absent types, ingress rules: ingress only", "  ingress: [{from: [{podSelector: {}}]}]\n", true, false, false, true, 1},
		{"absent types, egress present: both", "  egress: []\n", true, true, false, false, 0},
		{"absent types, nothing: ingress deny all", "", true, false, false, true, 0},
		{"types Egress ignores ingress rules", "  policyTypes: [Egress]\n  ingress: [{}]\n  egress: [{}]\n", false, true, true, true, 1},
		{"types both, no rules: deny all", "  policyTypes: [Ingress, Egress]\n", true, true, false, false, 0},
		{"ingress [] denies all", "  ingress: []\n", true, false, false, true, 0},
		{"ingress [{}] allows all", "  ingress: [{}]\n", true, false, true, true, 1},
		{"from [] and ports [] allow all", "  ingress: [{from: [], ports: []}]\n", true, false, true, true, 1},
		{"port without number: all ports of protocol", "  ingress: [{ports: [{protocol: TCP}]}]\n", true, false, true, true, 1},
		{"endPort range", "  ingress: [{ports: [{port: 79, endPort: 81}]}]\n", true, false, true, true, 1},
		{"endPort range excludes", "  ingress: [{ports: [{port: 81, endPort: 90}]}]\n", true, false, false, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := w.input(t, hdr+tt.spec)
			res := Resolve(in)
			pol := res.Endpoints[5]
			if pol.IngressEnforced != tt.in || pol.EgressEnforced != tt.eg {
				t.Errorf("enforced ingress=%v egress=%v, want %v %v", pol.IngressEnforced, pol.EgressEnforced, tt.in, tt.eg)
			}
			if len(res.Rules) != tt.rules {
				t.Errorf("%d rules, want %d: %+v", len(res.Rules), tt.rules, res.Rules)
			}
			if v := Trace(in, res, ep(4), ep(5), TCP, 80); v.Allowed != tt.inOK {
				t.Errorf("ingress allowed = %v, want %v (%s)", v.Allowed, tt.inOK, v.Ingress)
			}
			if v := Trace(in, res, ep(5), ep(1), TCP, 80); v.Allowed != tt.egOK {
				t.Errorf("egress allowed = %v, want %v (%s)", v.Allowed, tt.egOK, v.Egress)
			}
		})
	}
}

func TestMembranePolicySemantics(t *testing.T) {
	w := newWorld()
	hdr := "apiVersion: membrane.io/v1\nkind: MembranePolicy\nmetadata: {name: m}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n"
	type probe struct {
		from Peer
		want bool
	}
	host, world, remote := Peer{Identity: IdentityHost}, ipPeer("8.8.8.8"), Peer{Identity: IdentityRemoteNode}
	health := Peer{Identity: IdentityHealth}
	tests := []struct {
		name   string
		spec   string
		probes []probe // to ep(2) TCP 5432, host ingress not implicitly allowed
	}{
		{"empty rule allows nothing", "  ingress: [{}]\n",
			[]probe{{ep(5), false}, {host, false}, {world, false}}},
		{"empty section still enforces", "  ingress: []\n",
			[]probe{{ep(5), false}}},
		{"egress-only policy leaves ingress open", "  egress: [{}]\n",
			[]probe{{ep(5), true}, {world, true}}},
		{"toPorts only: any peer", "  ingress: [{toPorts: [{ports: [{port: \"5432\", protocol: TCP}]}]}]\n",
			[]probe{{ep(5), true}, {world, true}, {host, true}}},
		{"fromEndpoints [{}]: own namespace", "  ingress: [{fromEndpoints: [{}]}]\n",
			[]probe{{ep(5), true}, {ep(1), true}, {ep(3), false}, {ep(4), false}, {host, false}}},
		{"selector on the namespace key lifts the restriction",
			"  ingress: [{fromEndpoints: [{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: Exists}]}]}]\n",
			[]probe{{ep(3), true}, {ep(4), true}, {world, false}}},
		{"namespace labels", "  ingress: [{fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: prod, io.membrane.namespace.labels.team: a}}]}]\n",
			[]probe{{ep(3), true}, {ep(4), false}}},
		{"entity host", "  ingress: [{fromEntities: [host]}]\n",
			[]probe{{host, true}, {ep(5), false}, {remote, false}}},
		{"entity world", "  ingress: [{fromEntities: [world]}]\n",
			[]probe{{world, true}, {Peer{Identity: IdentityWorld}, true}, {ep(5), false}, {host, false}}},
		{"entity cluster", "  ingress: [{fromEntities: [cluster]}]\n",
			[]probe{{ep(4), true}, {host, true}, {remote, true}, {health, true}, {world, false}}},
		{"entity remote-node", "  ingress: [{fromEntities: [remote-node]}]\n",
			[]probe{{remote, true}, {host, false}, {ep(5), false}}},
		{"entity all", "  ingress: [{fromEntities: [all]}]\n",
			[]probe{{remote, true}, {world, true}, {ep(4), true}}},
		{"fromCIDR matches pod addresses too", "  ingress: [{fromCIDR: [10.0.2.0/24]}]\n",
			[]probe{{ep(4), true}, {ep(5), false}, {ipPeer("10.0.2.200"), true}}},
		{"deny-only with default deny off", "  enableDefaultDeny: {ingress: false}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]\n",
			[]probe{{ep(5), false}, {ep(1), true}, {world, true}}},
		{"deny-only keeps default deny by default", "  ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]\n",
			[]probe{{ep(5), false}, {ep(1), false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := w.input(t, hdr+tt.spec)
			in.AllowHostIngress = false
			res := Resolve(in)
			for i, p := range tt.probes {
				v := Trace(in, res, p.from, ep(2), TCP, 5432)
				if v.Allowed != p.want {
					t.Errorf("probe %d (%+v): allowed = %v, want %v (ingress %s)", i, p.from, v.Allowed, p.want, v.Ingress)
				}
			}
		})
	}
}

func TestHostIngress(t *testing.T) {
	w := newWorld()
	in := w.input(t, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {podSelector: {}}\n")
	res := Resolve(in)
	v := Trace(in, res, Peer{Identity: IdentityHost}, ep(1), TCP, 8080)
	if !v.Allowed || v.Ingress.Decision != DecisionAllowed || v.Ingress.Rule != nil || v.Ingress.Key == nil {
		t.Errorf("host with AllowHostIngress: %+v", v.Ingress)
	}
	if got := v.Ingress.String(); got != "allowed (implicit)" {
		t.Errorf("String = %q", got)
	}
	in.AllowHostIngress = false
	res = Resolve(in)
	if v := Trace(in, res, Peer{Identity: IdentityHost}, ep(1), TCP, 8080); v.Allowed || v.Ingress.Decision != DecisionNoRule {
		t.Errorf("host without AllowHostIngress: %+v", v.Ingress)
	}
}

func TestTraceVerdict(t *testing.T) {
	w := newWorld()
	in := w.input(t, `
apiVersion: membrane.io/v1
kind: MembranePolicy
metadata: {name: client}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "25", protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {tier: frontend}}}]
    ports: [{port: 80}]
`)
	res := Resolve(in)
	v := Trace(in, res, ep(5), ep(1), TCP, 80)
	want := Verdict{
		Allowed: true,
		Egress: DirVerdict{Enforced: true, Decision: DecisionAllowed, Rule: &res.Rules[0],
			Key: &Key{Identity: 256, Egress: true}},
		Ingress: DirVerdict{Enforced: true, Decision: DecisionAllowed, Rule: &res.Rules[2],
			Key: &Key{Identity: 260, Proto: TCP, Port: 80, PortPrefixLen: 16}},
	}
	if diff := cmp.Diff(want, v); diff != "" {
		t.Errorf("verdict (-want +got):\n%s", diff)
	}
	if got := res.Rules[0].Text; got != `egress[0] to endpoints app=web,io.kubernetes.pod.namespace=default ports all` {
		t.Errorf("rule text = %q", got)
	}
	if got := res.Rules[2].Text; got != `ingress[0] from podSelector tier=frontend ports 80/TCP` {
		t.Errorf("rule text = %q", got)
	}
	v = Trace(in, res, ep(5), ep(1), TCP, 25)
	if v.Allowed || v.Egress.Decision != DecisionDenied || v.Egress.String() != "denied by membranepolicy default/client egressDeny[0]" {
		t.Errorf("port 25: %+v / %s", v, v.Egress)
	}
	if v.Ingress.Decision != DecisionNoRule {
		t.Errorf("port 25 ingress = %s, want no-rule", v.Ingress.Decision)
	}
	// Unknown IP is world; the source side is not local.
	v = Trace(in, res, ipPeer("1.2.3.4"), ep(1), TCP, 80)
	if v.Allowed || v.Egress.Decision != DecisionNotEnforced || v.Ingress.Decision != DecisionNoRule {
		t.Errorf("from world: %+v", v)
	}
}

func TestResolveDeterministic(t *testing.T) {
	w := newWorld()
	in := w.input(t, goldenPolicies)
	want := Resolve(in)
	rng := rand.New(rand.NewSource(1))
	for i := range 20 {
		shuffled := in
		shuffled.Objects = append([]Object(nil), in.Objects...)
		shuffled.Identities = append([]Identity(nil), in.Identities...)
		shuffled.Endpoints = append([]EndpointInfo(nil), in.Endpoints...)
		shuffled.CIDRIdentities = append([]CIDRIdentity(nil), in.CIDRIdentities...)
		rng.Shuffle(len(shuffled.Objects), func(a, b int) { shuffled.Objects[a], shuffled.Objects[b] = shuffled.Objects[b], shuffled.Objects[a] })
		rng.Shuffle(len(shuffled.Identities), func(a, b int) {
			shuffled.Identities[a], shuffled.Identities[b] = shuffled.Identities[b], shuffled.Identities[a]
		})
		rng.Shuffle(len(shuffled.Endpoints), func(a, b int) {
			shuffled.Endpoints[a], shuffled.Endpoints[b] = shuffled.Endpoints[b], shuffled.Endpoints[a]
		})
		rng.Shuffle(len(shuffled.CIDRIdentities), func(a, b int) {
			shuffled.CIDRIdentities[a], shuffled.CIDRIdentities[b] = shuffled.CIDRIdentities[b], shuffled.CIDRIdentities[a]
		})
		if diff := cmp.Diff(want, Resolve(shuffled)); diff != "" {
			t.Fatalf("shuffle %d changed the result:\n%s", i, diff)
		}
	}
}

func TestCIDRPrefixes(t *testing.T) {
	objs, err := Parse([]byte(goldenPolicies))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range CIDRPrefixes(objs) {
		got = append(got, p.String())
	}
	want := []string{"0.0.0.0/0", "10.0.0.0/8", "10.0.2.0/24", "192.168.0.0/16", "192.168.7.0/24"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CIDRPrefixes (-want +got):\n%s", diff)
	}
}
