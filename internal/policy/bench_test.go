package policy

import (
	"fmt"
	"net/netip"
	"testing"
)

// benchInput builds 1,000 NetworkPolicies of 10 rules each (10,000 rules)
// over 10 namespaces, 100 local endpoints and 1,000 cluster identities. A
// quarter of the policies select every pod of their namespace; peers mix
// same-namespace pod selectors, namespace AND pod selectors, ipBlocks with
// excepts, numeric ports, ranges and named ports.
func benchInput(tb testing.TB) Input {
	const (
		namespaces = 10
		apps       = 10
		policies   = 1000
		rules      = 10
		identities = 1000
		endpoints  = 100
	)
	ns := map[string]map[string]string{}
	for n := range namespaces {
		name := fmt.Sprintf("ns-%d", n)
		ns[name] = map[string]string{LabelMetadataName: name, "team": fmt.Sprintf("t%d", n%3)}
	}
	var in Input
	in.Namespaces = ns
	in.AllowHostIngress = true
	for i := range identities {
		n := fmt.Sprintf("ns-%d", i%namespaces)
		pod := map[string]string{"app": fmt.Sprintf("app-%d", (i/namespaces)%apps), "pod": fmt.Sprint(i)}
		in.Identities = append(in.Identities, Identity{ID: MinClusterIdentity + uint32(i), Labels: EndpointIdentityLabels(n, pod, ns[n])})
		if i < endpoints {
			in.Endpoints = append(in.Endpoints, EndpointInfo{
				ID: uint16(i + 1), Namespace: n, Labels: pod, Identity: MinClusterIdentity + uint32(i),
				IPs:   []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i%250 + 1)})},
				Ports: []NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}, {Name: "dns", Port: 53, Protocol: "UDP"}},
			})
		}
	}
	for p := range policies {
		spec := &NetworkPolicySpec{PodSelector: &LabelSelector{}, PolicyTypes: []string{PolicyTypeIngress, PolicyTypeEgress}}
		if p%4 != 0 {
			spec.PodSelector.MatchLabels = map[string]string{"app": fmt.Sprintf("app-%d", p%apps)}
		}
		tcp, udp := "TCP", "UDP"
		for r := range rules {
			peer := NetworkPolicyPeer{PodSelector: &LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", (p+r)%apps)}}}
			switch r % 5 {
			case 1:
				peer.NamespaceSelector = &LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", r%3)}}
				peer.PodSelector.MatchExpressions = []LabelSelectorRequirement{{Key: "pod", Operator: OpIn, Values: []string{fmt.Sprint(p % identities), fmt.Sprint(r)}}}
			case 2:
				peer = NetworkPolicyPeer{IPBlock: &IPBlock{
					CIDR:   fmt.Sprintf("172.%d.0.0/16", p%32),
					Except: []string{fmt.Sprintf("172.%d.%d.0/24", p%32, r)},
				}}
			}
			port := IntOrString{IntVal: int32(1000 + p%100)}
			pp := NetworkPolicyPort{Protocol: &tcp, Port: &port}
			switch r % 3 {
			case 1:
				end := int32(1000 + p%100 + 20)
				pp.EndPort = &end
			case 2:
				pp = NetworkPolicyPort{Protocol: &udp, Port: &IntOrString{IsString: true, StrVal: "dns"}}
			}
			if r%2 == 0 {
				spec.Ingress = append(spec.Ingress, NetworkPolicyIngressRule{From: []NetworkPolicyPeer{peer}, Ports: []NetworkPolicyPort{pp}})
			} else {
				spec.Egress = append(spec.Egress, NetworkPolicyEgressRule{To: []NetworkPolicyPeer{peer}, Ports: []NetworkPolicyPort{pp}})
			}
		}
		obj := Object{APIVersion: APIVersionNetworking, Kind: KindNetworkPolicy, Namespace: fmt.Sprintf("ns-%d", p%namespaces),
			Name: fmt.Sprintf("p-%d", p), NetworkPolicy: spec}
		if err := Validate(&obj); err != nil {
			tb.Fatal(err)
		}
		in.Objects = append(in.Objects, obj)
	}
	for i, pf := range CIDRPrefixes(in.Objects) {
		in.CIDRIdentities = append(in.CIDRIdentities, CIDRIdentity{ID: CIDRIdentityFlag + uint32(i), Prefix: pf})
	}
	return in
}

func BenchmarkResolve10K(b *testing.B) {
	in := benchInput(b)
	var res Result
	b.ReportAllocs()
	for b.Loop() {
		res = Resolve(in)
	}
	entries := 0
	for _, p := range res.Endpoints {
		entries += len(p.Entries)
	}
	b.ReportMetric(float64(len(res.Rules)), "rules")
	b.ReportMetric(float64(entries)/float64(len(res.Endpoints)), "entries/endpoint")
}
