package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Validate checks an object and reports every problem with its field path,
// as an *ObjectError. It expects defaults applied (Parse does that).
func Validate(obj *Object) error {
	var fe fieldErrors
	switch obj.Kind {
	case KindNamespace:
		if obj.APIVersion != APIVersionV1 {
			fe.add("apiVersion", "Namespace needs apiVersion %s, got %q", APIVersionV1, obj.APIVersion)
		}
		if obj.Namespace != "" {
			fe.add("metadata.namespace", "Namespace is cluster-scoped and takes no namespace")
		}
		if r := dns1123Label(obj.Name); r != "" {
			fe.add("metadata.name", "%q %s", obj.Name, r)
		}
	case KindNetworkPolicy, KindMembranePolicy:
		want := APIVersionNetworking
		if obj.Kind == KindMembranePolicy {
			want = APIVersionMembrane
		}
		if obj.APIVersion != want {
			fe.add("apiVersion", "%s needs apiVersion %s, got %q", obj.Kind, want, obj.APIVersion)
		}
		if r := dns1123Label(obj.Namespace); r != "" {
			fe.add("metadata.namespace", "%q %s", obj.Namespace, r)
		}
		if r := dns1123Subdomain(obj.Name); r != "" {
			fe.add("metadata.name", "%q %s", obj.Name, r)
		}
		if obj.Kind == KindNetworkPolicy {
			if obj.NetworkPolicy == nil || obj.MembranePolicy != nil {
				fe.add("spec", "NetworkPolicy needs a NetworkPolicy spec")
			} else {
				validateNetworkPolicy(obj.NetworkPolicy, &fe)
			}
		} else {
			if obj.MembranePolicy == nil || obj.NetworkPolicy != nil {
				fe.add("spec", "MembranePolicy needs a MembranePolicy spec")
			} else {
				validateMembranePolicy(obj.MembranePolicy, &fe)
			}
		}
	case KindService:
		validateService(obj, &fe)
	case KindEndpointSlice:
		validateEndpointSlice(obj, &fe)
	case "":
		fe.add("kind", "required")
	default:
		fe.add("kind", "unknown kind %q (want Namespace, NetworkPolicy, MembranePolicy, Service or EndpointSlice)", obj.Kind)
	}
	validateLabelMap("metadata.labels", obj.Labels, &fe)
	if len(fe) == 0 {
		return nil
	}
	return &ObjectError{Object: obj.Ref(), Errors: fe}
}

func validateNetworkPolicy(s *NetworkPolicySpec, fe *fieldErrors) {
	if s.PodSelector == nil {
		fe.add("spec.podSelector", "required (use {} to select every pod of the namespace)")
	} else {
		validateSelector("spec.podSelector", s.PodSelector, fe)
	}
	seen := map[string]bool{}
	for i, pt := range s.PolicyTypes {
		p := fmt.Sprintf("spec.policyTypes[%d]", i)
		switch pt {
		case PolicyTypeIngress, PolicyTypeEgress:
			if seen[pt] {
				fe.add(p, "duplicate policy type %q", pt)
			}
			seen[pt] = true
		default:
			fe.add(p, "unknown policy type %q (want Ingress or Egress)", pt)
		}
	}
	for i, r := range s.Ingress {
		p := fmt.Sprintf("spec.ingress[%d]", i)
		for j := range r.From {
			validatePeer(fmt.Sprintf("%s.from[%d]", p, j), &r.From[j], fe)
		}
		for j := range r.Ports {
			validateNPPort(fmt.Sprintf("%s.ports[%d]", p, j), &r.Ports[j], fe)
		}
	}
	for i, r := range s.Egress {
		p := fmt.Sprintf("spec.egress[%d]", i)
		for j := range r.To {
			validatePeer(fmt.Sprintf("%s.to[%d]", p, j), &r.To[j], fe)
		}
		for j := range r.Ports {
			validateNPPort(fmt.Sprintf("%s.ports[%d]", p, j), &r.Ports[j], fe)
		}
	}
}

func validatePeer(p string, peer *NetworkPolicyPeer, fe *fieldErrors) {
	if peer.PodSelector == nil && peer.NamespaceSelector == nil && peer.IPBlock == nil {
		fe.add(p, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
		return
	}
	if peer.IPBlock != nil && (peer.PodSelector != nil || peer.NamespaceSelector != nil) {
		fe.add(p, "ipBlock may not be combined with podSelector or namespaceSelector")
	}
	if peer.PodSelector != nil {
		validateSelector(p+".podSelector", peer.PodSelector, fe)
	}
	if peer.NamespaceSelector != nil {
		validateSelector(p+".namespaceSelector", peer.NamespaceSelector, fe)
	}
	if peer.IPBlock != nil {
		validateCIDRExcept(p+".ipBlock", peer.IPBlock.CIDR, peer.IPBlock.Except, fe)
	}
}

func validateCIDRExcept(p, cidr string, except []string, fe *fieldErrors) {
	outer, ok := validateCIDR(p+".cidr", cidr, fe)
	for k, e := range except {
		ep := fmt.Sprintf("%s.except[%d]", p, k)
		inner, iok := validateCIDR(ep, e, fe)
		if !ok || !iok {
			continue
		}
		if !prefixWithin(inner, outer) || inner == outer {
			fe.add(ep, "%s is not inside cidr %s", inner, outer)
		}
	}
}

func validateCIDR(p, s string, fe *fieldErrors) (netip.Prefix, bool) {
	if s == "" {
		fe.add(p, "required")
		return netip.Prefix{}, false
	}
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		fe.add(p, "%q is not a valid CIDR", s)
		return netip.Prefix{}, false
	}
	if pf.Masked() != pf {
		fe.add(p, "%s has host bits set (did you mean %s?)", s, pf.Masked())
		return netip.Prefix{}, false
	}
	return pf, true
}

// prefixWithin reports whether inner lies inside outer (same family).
func prefixWithin(inner, outer netip.Prefix) bool {
	return inner.Addr().Is4() == outer.Addr().Is4() &&
		inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

func validateNPPort(p string, port *NetworkPolicyPort, fe *fieldErrors) {
	if port.Protocol != nil {
		switch *port.Protocol {
		case "TCP", "UDP", "SCTP":
		default:
			fe.add(p+".protocol", "unsupported protocol %q (want TCP, UDP or SCTP)", *port.Protocol)
		}
	}
	if port.Port != nil {
		if port.Port.IsString {
			if r := portName(port.Port.StrVal); r != "" {
				fe.add(p+".port", "%q %s", port.Port.StrVal, r)
			}
		} else if port.Port.IntVal < 1 || port.Port.IntVal > 65535 {
			fe.add(p+".port", "%d is not a port number (1-65535)", port.Port.IntVal)
		}
	}
	if port.EndPort != nil {
		switch {
		case port.Port == nil:
			fe.add(p+".endPort", "requires port")
		case port.Port.IsString:
			fe.add(p+".endPort", "requires a numeric port, not the named port %q", port.Port.StrVal)
		case *port.EndPort < port.Port.IntVal:
			fe.add(p+".endPort", "%d is less than port %d", *port.EndPort, port.Port.IntVal)
		case *port.EndPort > 65535:
			fe.add(p+".endPort", "%d is not a port number (1-65535)", *port.EndPort)
		}
	}
}

func validateMembranePolicy(s *MembranePolicySpec, fe *fieldErrors) {
	if s.EndpointSelector == nil {
		fe.add("spec.endpointSelector", "required (use {} to select every endpoint of the namespace)")
	} else {
		validateSelector("spec.endpointSelector", s.EndpointSelector, fe)
	}
	for _, sec := range []struct {
		name  string
		rules []IngressRule
	}{{"ingress", s.Ingress}, {"ingressDeny", s.IngressDeny}} {
		for i, r := range sec.rules {
			p := fmt.Sprintf("spec.%s[%d]", sec.name, i)
			validateMembraneRule(p, "from", r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities, r.ToPorts, fe)
		}
	}
	for _, sec := range []struct {
		name  string
		rules []EgressRule
	}{{"egress", s.Egress}, {"egressDeny", s.EgressDeny}} {
		for i, r := range sec.rules {
			p := fmt.Sprintf("spec.%s[%d]", sec.name, i)
			validateMembraneRule(p, "to", r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities, r.ToPorts, fe)
		}
	}
}

func validateMembraneRule(p, dir string, eps []LabelSelector, cidrs []string, sets []CIDRRule, ents []string, ports []PortRule, fe *fieldErrors) {
	for i := range eps {
		validateSelector(fmt.Sprintf("%s.%sEndpoints[%d]", p, dir, i), &eps[i], fe)
	}
	for i, c := range cidrs {
		validateCIDR(fmt.Sprintf("%s.%sCIDR[%d]", p, dir, i), c, fe)
	}
	for i, s := range sets {
		validateCIDRExcept(fmt.Sprintf("%s.%sCIDRSet[%d]", p, dir, i), s.CIDR, s.Except, fe)
	}
	for i, e := range ents {
		if _, ok := entityNames[e]; !ok {
			fe.add(fmt.Sprintf("%s.%sEntities[%d]", p, dir, i), "unknown entity %q (want one of %s)", e, entityList)
		}
	}
	for i, pr := range ports {
		pp := fmt.Sprintf("%s.toPorts[%d].ports", p, i)
		if len(pr.Ports) == 0 {
			fe.add(pp, "must list at least one port")
		}
		for j := range pr.Ports {
			validateMPPort(fmt.Sprintf("%s[%d]", pp, j), &pr.Ports[j], fe)
		}
	}
}

var entityNames = map[string]struct{}{
	EntityWorld: {}, EntityHost: {}, EntityCluster: {}, EntityRemoteNode: {},
	EntityHealth: {}, EntityInit: {}, EntityUnmanaged: {}, EntityAll: {},
}

const entityList = "world, host, cluster, remote-node, health, init, unmanaged, all"

func validateMPPort(p string, port *PortProtocol, fe *fieldErrors) {
	if _, ok := ParseProto(port.Protocol); !ok {
		fe.add(p+".protocol", "unsupported protocol %q (want TCP, UDP, SCTP or ANY)", port.Protocol)
	}
	num, isNum, numOK := parsePortString(port.Port)
	switch {
	case isNum && !numOK:
		fe.add(p+".port", "%s is not a port number (0-65535, 0 = all ports)", port.Port)
	case !isNum && port.Port != "":
		if r := portName(port.Port); r != "" {
			fe.add(p+".port", "%q %s", port.Port, r)
		}
	}
	if port.EndPort != 0 {
		switch {
		case !isNum || !numOK || num == 0:
			fe.add(p+".endPort", "requires a numeric port (1-65535)")
		case port.EndPort < int32(num):
			fe.add(p+".endPort", "%d is less than port %d", port.EndPort, num)
		case port.EndPort > 65535:
			fe.add(p+".endPort", "%d is not a port number (1-65535)", port.EndPort)
		}
	}
	if port.EndPort < 0 {
		fe.add(p+".endPort", "%d is not a port number (1-65535)", port.EndPort)
	}
}

// parsePortString classifies a MembranePolicy port: isNum when it is all
// digits, ok when that number is 0..65535.
func parsePortString(s string) (n uint16, isNum, ok bool) {
	if s == "" {
		return 0, false, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, true, false
	}
	return uint16(v), true, true
}

func validateSelector(p string, ls *LabelSelector, fe *fieldErrors) {
	validateLabelMap(p+".matchLabels", ls.MatchLabels, fe)
	for i, e := range ls.MatchExpressions {
		ep := fmt.Sprintf("%s.matchExpressions[%d]", p, i)
		if r := labelKey(e.Key); r != "" {
			fe.add(ep+".key", "%q %s", e.Key, r)
		}
		switch e.Operator {
		case OpIn, OpNotIn:
			if len(e.Values) == 0 {
				fe.add(ep+".values", "must be non-empty for operator %s", e.Operator)
			}
		case OpExists, OpDoesNotExist:
			if len(e.Values) > 0 {
				fe.add(ep+".values", "must be empty for operator %s", e.Operator)
			}
		case "":
			fe.add(ep+".operator", "required")
		default:
			fe.add(ep+".operator", "unknown operator %q (want In, NotIn, Exists or DoesNotExist)", e.Operator)
		}
		for j, v := range e.Values {
			if r := labelValue(v); r != "" {
				fe.add(fmt.Sprintf("%s.values[%d]", ep, j), "%q %s", v, r)
			}
		}
	}
}

func validateLabelMap(p string, m map[string]string, fe *fieldErrors) {
	for _, k := range sortedStringKeys(m) {
		if r := labelKey(k); r != "" {
			fe.add(p, "key %q %s", k, r)
		}
		if r := labelValue(m[k]); r != "" {
			fe.add(p+"."+k, "value %q %s", m[k], r)
		}
	}
}

// labelKey checks a label key: [prefix/]name with a DNS-1123 subdomain
// prefix and a qualified name. Keys under io.membrane.namespace.labels. are
// checked on what follows the prefix, so any namespace label can be selected.
func labelKey(k string) string {
	if rest, ok := strings.CutPrefix(k, LabelNamespaceLabelsPrefix); ok && rest != "" {
		k = rest
	}
	prefix, name, hasPrefix := strings.Cut(k, "/")
	if !hasPrefix {
		name, prefix = prefix, ""
	} else if r := dns1123Subdomain(prefix); r != "" {
		return "has an invalid prefix: " + r
	}
	if name == "" {
		return "must have a name"
	}
	if len(name) > 63 {
		return "has a name longer than 63 characters"
	}
	if !qualifiedChars(name) {
		return "must consist of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
	}
	return ""
}

func labelValue(v string) string {
	if v == "" {
		return ""
	}
	if len(v) > 63 {
		return "is longer than 63 characters"
	}
	if !qualifiedChars(v) {
		return "must consist of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
	}
	return ""
}

func qualifiedChars(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case isAlnum(c):
		case c == '-' || c == '_' || c == '.':
			if i == 0 || i == len(s)-1 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func dns1123Label(s string) string {
	if s == "" {
		return "is empty; a DNS-1123 label is required"
	}
	if len(s) > 63 {
		return "is longer than 63 characters"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' && i > 0 && i < len(s)-1
		if !ok {
			return "is not a DNS-1123 label (lowercase alphanumerics and '-', starting and ending with an alphanumeric)"
		}
	}
	return ""
}

func dns1123Subdomain(s string) string {
	if s == "" {
		return "is empty; a DNS-1123 subdomain is required"
	}
	if len(s) > 253 {
		return "is longer than 253 characters"
	}
	for _, part := range strings.Split(s, ".") {
		if part == "" || dns1123Label(part) != "" {
			return "is not a DNS-1123 subdomain (lowercase alphanumerics, '-' and '.', starting and ending with an alphanumeric)"
		}
	}
	return ""
}

// portName checks an IANA service name, as Kubernetes does for named ports.
func portName(s string) string {
	if len(s) > 15 {
		return "is not a valid port name (at most 15 characters)"
	}
	hasLetter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z':
			hasLetter = true
		case '0' <= c && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 || s[i-1] == '-' {
				return "is not a valid port name (no leading, trailing or double '-')"
			}
		default:
			return "is not a valid port name (lowercase alphanumerics and '-')"
		}
	}
	if !hasLetter {
		return "is not a valid port name (needs at least one letter)"
	}
	return ""
}

func sortedStringKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	return keys
}
