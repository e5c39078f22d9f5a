package policy

import (
	"net/netip"
	"testing"
)

// world is a small cluster used by resolution tests: three namespaces and
// five local endpoints, each with its own identity.
type world struct {
	ns  map[string]map[string]string
	eps []EndpointInfo
}

func newWorld() world {
	return world{
		ns: map[string]map[string]string{
			"default": {"kubernetes.io/metadata.name": "default"},
			"prod":    {"kubernetes.io/metadata.name": "prod", "team": "a", "env": "prod"},
			"dev":     {"kubernetes.io/metadata.name": "dev", "team": "b", "env": "dev"},
		},
		eps: []EndpointInfo{
			{ID: 1, Namespace: "default", Labels: map[string]string{"app": "web"}, Identity: 256,
				IPs:   []netip.Addr{netip.MustParseAddr("10.0.0.1")},
				Ports: []NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}, {Name: "metrics", Port: 9090, Protocol: "TCP"}}},
			{ID: 2, Namespace: "default", Labels: map[string]string{"app": "db"}, Identity: 257,
				IPs:   []netip.Addr{netip.MustParseAddr("10.0.0.2")},
				Ports: []NamedPort{{Name: "pg", Port: 5432, Protocol: "TCP"}, {Name: "dns", Port: 53, Protocol: "UDP"}}},
			{ID: 3, Namespace: "prod", Labels: map[string]string{"app": "web"}, Identity: 258,
				IPs:   []netip.Addr{netip.MustParseAddr("10.0.1.1")},
				Ports: []NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}}},
			{ID: 4, Namespace: "dev", Labels: map[string]string{"app": "client"}, Identity: 259,
				IPs: []netip.Addr{netip.MustParseAddr("10.0.2.1")}},
			{ID: 5, Namespace: "default", Labels: map[string]string{"app": "client", "tier": "frontend"}, Identity: 260,
				IPs: []netip.Addr{netip.MustParseAddr("10.0.0.3")}},
		},
	}
}

// input parses the manifests and builds a full Input: identities from the
// endpoints, CIDR identities (1<<24 + i) for every prefix the policies use.
func (w world) input(t testing.TB, manifests string) Input {
	t.Helper()
	objs, err := Parse([]byte(manifests))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	in := Input{Objects: objs, Namespaces: w.ns, Endpoints: w.eps, AllowHostIngress: true}
	for _, ep := range w.eps {
		in.Identities = append(in.Identities, Identity{ID: ep.Identity, Labels: EndpointIdentityLabels(ep.Namespace, ep.Labels, w.ns[ep.Namespace])})
	}
	for i, p := range CIDRPrefixes(objs) {
		in.CIDRIdentities = append(in.CIDRIdentities, CIDRIdentity{ID: CIDRIdentityFlag + uint32(i), Prefix: p})
	}
	return in
}

func ep(id uint16) Peer { return Peer{Endpoint: &id} }

func ipPeer(s string) Peer { return Peer{IP: netip.MustParseAddr(s)} }

// flow is one row of a truth table.
type flow struct {
	name     string
	from, to Peer
	proto    uint8
	port     uint16
	allowed  bool
	rule     string // deciding rule of the enforced side that decided, "" for none
}

func checkFlows(t *testing.T, in Input, res Result, flows []flow) {
	t.Helper()
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			v := Trace(in, res, f.from, f.to, f.proto, f.port)
			if v.Allowed != f.allowed {
				t.Errorf("allowed = %v, want %v (egress %s, ingress %s)", v.Allowed, f.allowed, v.Egress, v.Ingress)
			}
			if f.rule != "" {
				got := ""
				switch {
				case !v.Egress.passes() || (v.Egress.Rule != nil && v.Ingress.Rule == nil):
					if v.Egress.Rule != nil {
						got = v.Egress.Rule.String()
					}
				default:
					if v.Ingress.Rule != nil {
						got = v.Ingress.Rule.String()
					}
				}
				if got != f.rule {
					t.Errorf("deciding rule = %q, want %q (egress %s, ingress %s)", got, f.rule, v.Egress, v.Ingress)
				}
			}
		})
	}
}
