package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// compiledPolicy is a policy with its selectors compiled and its rules'
// peers resolved to identities; only endpoint-dependent parts (named ports
// of ingress rules) are left for endpointPolicy.
type compiledPolicy struct {
	ref       string // "kind ns/name", lowercased kind
	namespace string
	subject   selector
	// onIdentityLabels: the subject selector reads the endpoint's identity
	// labels (MembranePolicy) rather than its pod labels (NetworkPolicy).
	onIdentityLabels bool
	active           [2]bool // [ingress, egress]: the policy governs the direction
	defaultDeny      [2]bool // the policy asks for default deny there
	rules            []compiledRule
}

type compiledRule struct {
	cookie uint32
	egress bool
	deny   bool
	peers  []uint32 // sorted; 0 = any peer
	ports  []compiledPort
}

type compiledPort struct {
	proto    uint8        // 0 = any protocol (then prefixes is {0,0})
	name     string       // named port, resolved per endpoint or peer
	prefixes []PortPrefix // numeric ports
}

var allPorts = []compiledPort{{proto: ProtoAny, prefixes: []PortPrefix{{}}}}

// compilePolicies compiles the policies of the input in a fixed order
// (kind, namespace, name) and numbers their rules: that order gives cookies.
func (r *resolver) compilePolicies() []compiledPolicy {
	objs := make([]*Object, 0, len(r.in.Objects))
	for i := range r.in.Objects {
		o := &r.in.Objects[i]
		if (o.Kind == KindNetworkPolicy && o.NetworkPolicy != nil) || (o.Kind == KindMembranePolicy && o.MembranePolicy != nil) {
			objs = append(objs, o)
		}
	}
	sort.SliceStable(objs, func(i, j int) bool {
		a, b := objs[i], objs[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	out := make([]compiledPolicy, 0, len(objs))
	for _, o := range objs {
		var cp compiledPolicy
		if o.NetworkPolicy != nil {
			cp = r.compileNetworkPolicy(o)
		} else {
			cp = r.compileMembranePolicy(o)
		}
		cp.ref = objectRef(o.Kind, o.Namespace, o.Name)
		out = append(out, cp)
	}
	return out
}

func (r *resolver) addRule(ref RuleRef) uint32 {
	r.rules = append(r.rules, ref)
	return uint32(len(r.rules))
}

func nsEquals(ns string) requirement {
	return requirement{key: LabelNamespace, op: OpIn, values: []string{ns}}
}

// NetworkPolicy.

func networkPolicyTypes(s *NetworkPolicySpec) (ingress, egress bool) {
	if s.PolicyTypes == nil {
		return true, s.Egress != nil
	}
	for _, t := range s.PolicyTypes {
		switch t {
		case PolicyTypeIngress:
			ingress = true
		case PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func (r *resolver) compileNetworkPolicy(o *Object) compiledPolicy {
	s := o.NetworkPolicy
	ing, eg := networkPolicyTypes(s)
	cp := compiledPolicy{
		namespace:   o.Namespace,
		subject:     compileSelector(s.PodSelector),
		active:      [2]bool{ing, eg},
		defaultDeny: [2]bool{ing, eg},
	}
	ref := RuleRef{Kind: o.Kind, Namespace: o.Namespace, Name: o.Name}
	if ing {
		for i, rule := range s.Ingress {
			ref.Direction, ref.Index = "ingress", i
			ref.Text = fmt.Sprintf("ingress[%d] from %s ports %s", i, r.npPeersText(rule.From), npPortsText(rule.Ports))
			cp.rules = append(cp.rules, compiledRule{
				cookie: r.addRule(ref),
				peers:  r.npPeers(o.Namespace, rule.From),
				ports:  npPorts(rule.Ports),
			})
		}
	}
	if eg {
		for i, rule := range s.Egress {
			ref.Direction, ref.Index = "egress", i
			ref.Text = fmt.Sprintf("egress[%d] to %s ports %s", i, r.npPeersText(rule.To), npPortsText(rule.Ports))
			cp.rules = append(cp.rules, compiledRule{
				cookie: r.addRule(ref),
				egress: true,
				peers:  r.npPeers(o.Namespace, rule.To),
				ports:  npPorts(rule.Ports),
			})
		}
	}
	return cp
}

// npPeerSelector turns a NetworkPolicy peer's selectors into one selector
// over identity labels: the pod selector as is, the namespace selector on
// the io.membrane.namespace.labels.* labels, and the policy's namespace when
// there is no namespace selector.
func npPeerSelector(ns string, p *NetworkPolicyPeer) selector {
	s := compileSelector(p.PodSelector)
	if p.NamespaceSelector == nil {
		return s.with(nsEquals(ns))
	}
	nss := compileSelector(p.NamespaceSelector).prefixed(LabelNamespaceLabelsPrefix)
	return s.with(append(nss.reqs, requirement{key: LabelNamespace, op: OpExists})...)
}

func (r *resolver) npPeers(ns string, peers []NetworkPolicyPeer) []uint32 {
	if len(peers) == 0 {
		return []uint32{IdentityAny}
	}
	sets := make([][]uint32, 0, len(peers))
	for i := range peers {
		p := &peers[i]
		if p.IPBlock != nil {
			sets = append(sets, r.selectCIDR(p.IPBlock.CIDR, p.IPBlock.Except))
			continue
		}
		sets = append(sets, r.selectIdentities(npPeerSelector(ns, p)))
	}
	if len(sets) == 1 {
		return sets[0]
	}
	return unionIDs(sets...)
}

func npPorts(ports []NetworkPolicyPort) []compiledPort {
	if len(ports) == 0 {
		return allPorts
	}
	out := make([]compiledPort, 0, len(ports))
	for _, p := range ports {
		proto := ProtoTCP
		if p.Protocol != nil {
			proto, _ = ParseProto(*p.Protocol)
		}
		switch {
		case p.Port == nil:
			out = append(out, compiledPort{proto: proto, prefixes: []PortPrefix{{}}})
		case p.Port.IsString:
			out = append(out, compiledPort{proto: proto, name: p.Port.StrVal})
		default:
			lo := uint16(p.Port.IntVal)
			hi := lo
			if p.EndPort != nil {
				hi = uint16(*p.EndPort)
			}
			out = append(out, compiledPort{proto: proto, prefixes: PortRangeToPrefixes(lo, hi)})
		}
	}
	return out
}

func (r *resolver) npPeersText(peers []NetworkPolicyPeer) string {
	if len(peers) == 0 {
		return "any"
	}
	parts := make([]string, len(peers))
	for i, p := range peers {
		var b []string
		if p.NamespaceSelector != nil {
			b = append(b, "namespaceSelector "+p.NamespaceSelector.String())
		}
		if p.PodSelector != nil {
			b = append(b, "podSelector "+p.PodSelector.String())
		}
		if p.IPBlock != nil {
			s := "ipBlock " + p.IPBlock.CIDR
			if len(p.IPBlock.Except) > 0 {
				s += " except " + strings.Join(p.IPBlock.Except, ",")
			}
			b = append(b, s)
		}
		parts[i] = strings.Join(b, " and ")
	}
	return strings.Join(parts, " or ")
}

func npPortsText(ports []NetworkPolicyPort) string {
	if len(ports) == 0 {
		return "all"
	}
	parts := make([]string, len(ports))
	for i, p := range ports {
		proto := "TCP"
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		switch {
		case p.Port == nil:
			parts[i] = "all/" + proto
		case p.EndPort != nil:
			parts[i] = fmt.Sprintf("%s-%d/%s", p.Port, *p.EndPort, proto)
		default:
			parts[i] = p.Port.String() + "/" + proto
		}
	}
	return strings.Join(parts, ",")
}

// MembranePolicy.

func (r *resolver) compileMembranePolicy(o *Object) compiledPolicy {
	s := o.MembranePolicy
	cp := compiledPolicy{
		namespace:        o.Namespace,
		subject:          compileSelector(s.EndpointSelector).with(nsEquals(o.Namespace)),
		onIdentityLabels: true,
	}
	hasIn := s.Ingress != nil || s.IngressDeny != nil
	hasEg := s.Egress != nil || s.EgressDeny != nil
	cp.defaultDeny = [2]bool{hasIn, hasEg}
	if d := s.EnableDefaultDeny; d != nil {
		if d.Ingress != nil {
			cp.defaultDeny[0] = *d.Ingress
		}
		if d.Egress != nil {
			cp.defaultDeny[1] = *d.Egress
		}
	}
	cp.active = [2]bool{hasIn || cp.defaultDeny[0], hasEg || cp.defaultDeny[1]}

	ref := RuleRef{Kind: o.Kind, Namespace: o.Namespace, Name: o.Name}
	addIngress := func(rules []IngressRule, deny bool) {
		for i, rule := range rules {
			ref.Direction, ref.Deny, ref.Index = "ingress", deny, i
			peers, text := r.mpPeers(o.Namespace, rule.FromEndpoints, rule.FromCIDR, rule.FromCIDRSet, rule.FromEntities, len(rule.ToPorts) > 0)
			ref.Text = fmt.Sprintf("%s[%d] from %s ports %s", ref.section(), i, text, mpPortsText(rule.ToPorts))
			cp.rules = append(cp.rules, compiledRule{cookie: r.addRule(ref), deny: deny, peers: peers, ports: mpPorts(rule.ToPorts)})
		}
	}
	addEgress := func(rules []EgressRule, deny bool) {
		for i, rule := range rules {
			ref.Direction, ref.Deny, ref.Index = "egress", deny, i
			peers, text := r.mpPeers(o.Namespace, rule.ToEndpoints, rule.ToCIDR, rule.ToCIDRSet, rule.ToEntities, len(rule.ToPorts) > 0)
			ref.Text = fmt.Sprintf("%s[%d] to %s ports %s", ref.section(), i, text, mpPortsText(rule.ToPorts))
			cp.rules = append(cp.rules, compiledRule{cookie: r.addRule(ref), egress: true, deny: deny, peers: peers, ports: mpPorts(rule.ToPorts)})
		}
	}
	addIngress(s.Ingress, false)
	addIngress(s.IngressDeny, true)
	addEgress(s.Egress, false)
	addEgress(s.EgressDeny, true)
	return cp
}

// mpEndpointSelector restricts an endpoint selector to the policy's
// namespace unless it constrains the namespace label itself.
func mpEndpointSelector(ns string, ls *LabelSelector) selector {
	s := compileSelector(ls)
	if s.constrains(LabelNamespace) {
		return s
	}
	return s.with(nsEquals(ns))
}

// mpPeers resolves a MembranePolicy rule's peers. With no peer at all, a rule
// with toPorts applies to every peer and a rule without selects nothing.
func (r *resolver) mpPeers(ns string, eps []LabelSelector, cidrs []string, sets []CIDRRule, ents []string, hasPorts bool) ([]uint32, string) {
	if len(eps)+len(cidrs)+len(sets)+len(ents) == 0 {
		if hasPorts {
			return []uint32{IdentityAny}, "any"
		}
		return nil, "nothing"
	}
	var ids [][]uint32
	var text []string
	for i := range eps {
		s := mpEndpointSelector(ns, &eps[i])
		ids = append(ids, r.selectIdentities(s))
		text = append(text, "endpoints "+s.String())
	}
	for _, c := range cidrs {
		ids = append(ids, r.selectCIDR(c, nil))
		text = append(text, "cidr "+c)
	}
	for _, c := range sets {
		ids = append(ids, r.selectCIDR(c.CIDR, c.Except))
		t := "cidr " + c.CIDR
		if len(c.Except) > 0 {
			t += " except " + strings.Join(c.Except, ",")
		}
		text = append(text, t)
	}
	for _, e := range ents {
		ids = append(ids, r.entity(e))
		text = append(text, "entity "+e)
	}
	return unionIDs(ids...), strings.Join(text, " or ")
}

func mpPorts(rules []PortRule) []compiledPort {
	if len(rules) == 0 {
		return allPorts
	}
	var out []compiledPort
	for _, pr := range rules {
		for _, p := range pr.Ports {
			proto, _ := ParseProto(p.Protocol)
			protos := []uint8{proto}
			num, isNum, _ := parsePortString(p.Port)
			if proto == ProtoAny && isNum && num != 0 {
				// No key means "any protocol, port N": expand.
				protos = []uint8{ProtoTCP, ProtoUDP, ProtoSCTP}
			}
			for _, pr := range protos {
				switch {
				case p.Port != "" && !isNum:
					out = append(out, compiledPort{proto: pr, name: p.Port})
				case num == 0:
					out = append(out, compiledPort{proto: pr, prefixes: []PortPrefix{{}}})
				default:
					hi := num
					if p.EndPort != 0 {
						hi = uint16(p.EndPort)
					}
					out = append(out, compiledPort{proto: pr, prefixes: PortRangeToPrefixes(num, hi)})
				}
			}
		}
	}
	return slices.Clip(out)
}

func mpPortsText(rules []PortRule) string {
	if len(rules) == 0 {
		return "all"
	}
	var parts []string
	for _, pr := range rules {
		for _, p := range pr.Ports {
			port := p.Port
			if port == "" || port == "0" {
				port = "all"
			} else if p.EndPort != 0 {
				port = fmt.Sprintf("%s-%d", port, p.EndPort)
			}
			proto := p.Protocol
			if proto == "" {
				proto = "ANY"
			}
			parts = append(parts, port+"/"+proto)
		}
	}
	return strings.Join(parts, ",")
}
