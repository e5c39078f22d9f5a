package policy

import (
	"cmp"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Identity is a security identity and the labels it stands for: cluster
// identities from the allocator and, optionally, reserved ones (which
// selectors never match; entities name them).
type Identity struct {
	ID     uint32
	Labels Labels
}

// CIDRIdentity is a node-local identity (>= 1<<24) standing for a prefix used
// in policy.
type CIDRIdentity struct {
	ID     uint32
	Prefix netip.Prefix
}

// EndpointInfo is what resolution needs to know about an endpoint. Endpoints
// with an ID get a policy in the Result; all of them serve named-port lookups
// for egress rules and address lookups in Trace.
type EndpointInfo struct {
	ID        uint16
	Namespace string
	Labels    map[string]string // pod labels
	Identity  uint32
	IPs       []netip.Addr
	Ports     []NamedPort
}

// Input is everything Resolve reads.
type Input struct {
	Objects []Object
	// Namespaces maps a namespace to its labels. It completes the identity
	// labels of endpoints selected by MembranePolicy endpointSelectors (see
	// EndpointIdentityLabels). Peer selectors read the identities' own
	// labels, which embed the namespace labels.
	Namespaces     map[string]map[string]string
	Identities     []Identity
	CIDRIdentities []CIDRIdentity
	Endpoints      []EndpointInfo
	// AllowHostIngress keeps traffic from the host (identity 1) allowed when
	// ingress is enforced, like kubelet probes need. Its entries carry
	// cookie 0.
	AllowHostIngress bool
}

// Result is the desired policy state.
type Result struct {
	Endpoints map[uint16]EndpointPolicy
	// Rules lists every effective rule; an entry's cookie c refers to
	// Rules[c-1].
	Rules []RuleRef
}

// Rule returns the rule a cookie refers to, or nil for cookie 0 or an
// unknown cookie.
func (r Result) Rule(cookie uint32) *RuleRef {
	if cookie == 0 || int(cookie) > len(r.Rules) {
		return nil
	}
	return &r.Rules[cookie-1]
}

// EndpointPolicy is the policy map state of one endpoint.
type EndpointPolicy struct {
	IngressEnforced bool
	EgressEnforced  bool
	// IngressPolicies and EgressPolicies name ("kind ns/name") the
	// policies that put the direction under enforcement: the answer to
	// "which policy isolates this endpoint" when a packet matches no rule.
	IngressPolicies []string
	EgressPolicies  []string
	Entries         map[Key]Entry
}

// Key is a policy map key. Proto 0 means every protocol and then always has
// Port 0 and PortPrefixLen 0: a rule for "any protocol, port 80" becomes
// one key per TCP, UDP and SCTP. Within one identity and direction the keys
// therefore nest like prefixes (protocol, then port bits), and the datapath
// takes the longest matching one.
type Key struct {
	Identity      uint32 // 0 = any
	Egress        bool
	Proto         uint8  // 0 any, 6 TCP, 17 UDP, 132 SCTP
	Port          uint16 // masked to PortPrefixLen bits
	PortPrefixLen uint8  // 0..16 leading port bits that must match; 0 = any port
}

// Entry is a policy map value.
type Entry struct {
	Deny   bool
	Cookie uint32 // 1-based index into Result.Rules; 0 = implicit
}

// RuleRef names one rule of one policy.
type RuleRef struct {
	Kind      string
	Namespace string
	Name      string
	Direction string // "ingress" or "egress"
	Deny      bool
	Index     int    // index in its list (ingress, ingressDeny, egress or egressDeny)
	Text      string // e.g. "ingress[0] from podSelector app=web ports 80/TCP"
}

// String is "networkpolicy default/web ingress[0]".
func (r RuleRef) String() string {
	return objectRef(r.Kind, r.Namespace, r.Name) + " " + r.section() + "[" + strconv.Itoa(r.Index) + "]"
}

func (r RuleRef) section() string {
	if r.Deny {
		return r.Direction + "Deny"
	}
	return r.Direction
}

// CIDRPrefixes returns every prefix (cidr and except) used by any policy,
// sorted and deduplicated. The agent allocates CIDR identities for them
// before calling Resolve. Unparsable prefixes are skipped (Validate reports
// them).
func CIDRPrefixes(objs []Object) []netip.Prefix {
	set := map[netip.Prefix]struct{}{}
	add := func(s string) {
		if p, err := netip.ParsePrefix(s); err == nil {
			set[p.Masked()] = struct{}{}
		}
	}
	addSet := func(cidr string, except []string) {
		add(cidr)
		for _, e := range except {
			add(e)
		}
	}
	for i := range objs {
		if np := objs[i].NetworkPolicy; np != nil {
			for _, r := range np.Ingress {
				for _, p := range r.From {
					if p.IPBlock != nil {
						addSet(p.IPBlock.CIDR, p.IPBlock.Except)
					}
				}
			}
			for _, r := range np.Egress {
				for _, p := range r.To {
					if p.IPBlock != nil {
						addSet(p.IPBlock.CIDR, p.IPBlock.Except)
					}
				}
			}
		}
		if mp := objs[i].MembranePolicy; mp != nil {
			for _, rs := range [][]IngressRule{mp.Ingress, mp.IngressDeny} {
				for _, r := range rs {
					for _, c := range r.FromCIDR {
						add(c)
					}
					for _, c := range r.FromCIDRSet {
						addSet(c.CIDR, c.Except)
					}
				}
			}
			for _, rs := range [][]EgressRule{mp.Egress, mp.EgressDeny} {
				for _, r := range rs {
					for _, c := range r.ToCIDR {
						add(c)
					}
					for _, c := range r.ToCIDRSet {
						addSet(c.CIDR, c.Except)
					}
				}
			}
		}
	}
	out := make([]netip.Prefix, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	slices.SortFunc(out, comparePrefix)
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// Resolve computes the policy map state of every endpoint with an ID. It is
// a pure function of its input; iteration is sorted so the output (and
// Result.Rules) is the same for the same input.
func Resolve(in Input) Result {
	r := newResolver(&in)
	pols := r.compilePolicies()

	byNS := map[string][]int{}
	for i := range pols {
		byNS[pols[i].namespace] = append(byNS[pols[i].namespace], i)
	}

	res := Result{Endpoints: make(map[uint16]EndpointPolicy, len(in.Endpoints)), Rules: r.rules}
	eps := sortedEndpoints(in.Endpoints)
	var selected []int
	for _, ep := range eps {
		if ep.ID == 0 {
			continue
		}
		var idLabels Labels
		selected = selected[:0]
		for _, pi := range byNS[ep.Namespace] {
			p := &pols[pi]
			var ok bool
			if p.onIdentityLabels {
				if idLabels == nil {
					idLabels = EndpointIdentityLabels(ep.Namespace, ep.Labels, in.Namespaces[ep.Namespace])
				}
				ok = p.subject.matchesLabels(idLabels)
			} else {
				ok = p.subject.matchesMap(ep.Labels)
			}
			if ok {
				selected = append(selected, pi)
			}
		}
		res.Endpoints[ep.ID] = r.endpointPolicy(ep, pols, selected)
	}
	return res
}

func sortedEndpoints(in []EndpointInfo) []*EndpointInfo {
	out := make([]*EndpointInfo, len(in))
	for i := range in {
		out[i] = &in[i]
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// dirState says how the selected policies set one direction up.
type dirState struct {
	active      bool // some selected policy has rules (or a section) here
	defaultDeny bool // some selected policy asks for default deny here
}

func (r *resolver) endpointPolicy(ep *EndpointInfo, pols []compiledPolicy, selected []int) EndpointPolicy {
	var dirs [2]dirState // [0] ingress, [1] egress
	var isolating [2][]string
	for _, pi := range selected {
		for d := range 2 {
			if pols[pi].active[d] {
				isolating[d] = append(isolating[d], pols[pi].ref)
			}
			dirs[d].active = dirs[d].active || pols[pi].active[d]
			dirs[d].defaultDeny = dirs[d].defaultDeny || pols[pi].defaultDeny[d]
		}
	}
	ms := newMapState()
	for _, deny := range []bool{true, false} {
		for _, pi := range selected {
			for i := range pols[pi].rules {
				cr := &pols[pi].rules[i]
				if cr.deny == deny {
					r.apply(ms, ep, cr)
				}
			}
		}
	}
	for d := range 2 {
		if dirs[d].active && !dirs[d].defaultDeny {
			ms.add(Key{Egress: d == 1}, Entry{})
		}
	}
	if dirs[0].active && r.in.AllowHostIngress {
		ms.add(Key{Identity: IdentityHost}, Entry{})
	}
	return EndpointPolicy{IngressEnforced: dirs[0].active, EgressEnforced: dirs[1].active, Entries: ms.entries,
		IngressPolicies: isolating[0], EgressPolicies: isolating[1]}
}

// apply adds the entries of one rule to an endpoint's map state.
func (r *resolver) apply(ms *mapState, ep *EndpointInfo, cr *compiledRule) {
	e := Entry{Deny: cr.deny, Cookie: cr.cookie}
	for _, id := range cr.peers {
		for pi := range cr.ports {
			cp := &cr.ports[pi]
			if cp.name == "" {
				for _, pp := range cp.prefixes {
					ms.add(Key{Identity: id, Egress: cr.egress, Proto: cp.proto, Port: pp.Port, PortPrefixLen: pp.Len}, e)
				}
				continue
			}
			// Named port: ingress resolves it on the endpoint itself,
			// egress on the endpoints that carry the peer identity.
			named := ep.Ports
			if cr.egress {
				named = r.portsOf(id)
			}
			for _, np := range named {
				proto, ok := ParseProto(np.Protocol)
				if !ok || np.Name != cp.name || np.Port == 0 {
					continue
				}
				if proto == ProtoAny {
					proto = ProtoTCP // container ports default to TCP
				}
				if cp.proto != ProtoAny && cp.proto != proto {
					continue
				}
				ms.add(Key{Identity: id, Egress: cr.egress, Proto: proto, Port: np.Port, PortPrefixLen: 16}, e)
			}
		}
	}
}

// mapState builds one endpoint's entries with deny precedence: a deny
// covers every allow of the same identity and direction whose protocol and
// port block lie inside its own. Covered allows are never stored, so the
// datapath's longest-prefix lookup within an identity can never pick an
// allow over a deny that matches the same packet.
type mapState struct {
	entries map[Key]Entry
	denies  map[idDir][]Key
	allows  int
}

type idDir struct {
	id     uint32
	egress bool
}

func newMapState() *mapState {
	return &mapState{entries: map[Key]Entry{}, denies: map[idDir][]Key{}}
}

func covers(d, a Key) bool {
	if d.Proto != ProtoAny && d.Proto != a.Proto {
		return false
	}
	return d.PortPrefixLen <= a.PortPrefixLen && a.Port&portMask(d.PortPrefixLen) == d.Port
}

// add inserts an entry. The first entry for a key keeps its cookie (rules are
// applied in cookie order), except that a deny replaces an allow.
func (m *mapState) add(k Key, e Entry) {
	old, exists := m.entries[k]
	if e.Deny {
		if exists && old.Deny {
			return
		}
		m.entries[k] = e
		m.denies[idDir{k.Identity, k.Egress}] = append(m.denies[idDir{k.Identity, k.Egress}], k)
		if exists {
			m.allows--
		}
		if m.allows > 0 { // only when allows were added before denies
			for ak, ae := range m.entries {
				if !ae.Deny && ak.Identity == k.Identity && ak.Egress == k.Egress && covers(k, ak) {
					delete(m.entries, ak)
					m.allows--
				}
			}
		}
		return
	}
	if exists {
		return
	}
	for _, d := range m.denies[idDir{k.Identity, k.Egress}] {
		if covers(d, k) {
			return
		}
	}
	m.entries[k] = e
	m.allows++
}

// resolver holds the indexes and caches of one Resolve call.
type resolver struct {
	in *Input

	clusterIDs []uint32 // sorted cluster identities
	idLabels   []Labels // labels of clusterIDs[i]
	byLabel    map[Label][]int32
	cidrIDs    []CIDRIdentity // sorted by ID
	selCache   map[string][]uint32
	cidrCache  map[string][]uint32

	portsByID map[uint32][]NamedPort
	allPorts  []NamedPort

	rules []RuleRef
}

func newResolver(in *Input) *resolver {
	r := &resolver{
		in:        in,
		byLabel:   map[Label][]int32{},
		selCache:  map[string][]uint32{},
		cidrCache: map[string][]uint32{},
		portsByID: map[uint32][]NamedPort{},
	}
	ids := make([]Identity, 0, len(in.Identities))
	for _, id := range in.Identities {
		if IsClusterIdentity(id.ID) {
			ids = append(ids, id)
		}
	}
	slices.SortStableFunc(ids, func(a, b Identity) int { return cmp.Compare(a.ID, b.ID) })
	ids = slices.CompactFunc(ids, func(a, b Identity) bool { return a.ID == b.ID })
	for i, id := range ids {
		labels := r.completeNamespaceLabels(id.Labels)
		r.clusterIDs = append(r.clusterIDs, id.ID)
		r.idLabels = append(r.idLabels, labels)
		for _, l := range labels {
			r.byLabel[l] = append(r.byLabel[l], int32(i))
		}
	}
	r.cidrIDs = append([]CIDRIdentity(nil), in.CIDRIdentities...)
	slices.SortFunc(r.cidrIDs, func(a, b CIDRIdentity) int { return cmp.Compare(a.ID, b.ID) })

	seenAll := map[NamedPort]bool{}
	seenByID := map[uint32]map[NamedPort]bool{}
	for _, ep := range sortedEndpoints(in.Endpoints) {
		for _, np := range ep.Ports {
			if !seenAll[np] {
				seenAll[np] = true
				r.allPorts = append(r.allPorts, np)
			}
			if seenByID[ep.Identity] == nil {
				seenByID[ep.Identity] = map[NamedPort]bool{}
			}
			if !seenByID[ep.Identity][np] {
				seenByID[ep.Identity][np] = true
				r.portsByID[ep.Identity] = append(r.portsByID[ep.Identity], np)
			}
		}
	}
	return r
}

// completeNamespaceLabels adds the namespace labels from Input.Namespaces to
// identity labels that carry a namespace but none of its labels (identities
// allocated without them); otherwise the labels are returned unchanged.
func (r *resolver) completeNamespaceLabels(l Labels) Labels {
	ns, ok := l.Get(LabelNamespace)
	if !ok {
		return l
	}
	if _, has := l.Get(LabelNamespaceLabelsPrefix + LabelMetadataName); has {
		return l
	}
	m := l.Map()
	for k, v := range r.in.Namespaces[ns] {
		m[LabelNamespaceLabelsPrefix+k] = v
	}
	m[LabelNamespaceLabelsPrefix+LabelMetadataName] = ns
	return NewLabels(m)
}

func (r *resolver) portsOf(id uint32) []NamedPort {
	if id == IdentityAny {
		return r.allPorts
	}
	return r.portsByID[id]
}

// selectIdentities returns the sorted cluster identities whose labels match.
func (r *resolver) selectIdentities(s selector) []uint32 {
	key := s.String()
	if got, ok := r.selCache[key]; ok {
		return got
	}
	// Narrow the candidates with the shortest posting list of an equality.
	var cand []int32
	useCand := false
	for _, req := range s.reqs {
		if req.op != OpIn || len(req.values) != 1 {
			continue
		}
		pl := r.byLabel[Label{req.key, req.values[0]}]
		if !useCand || len(pl) < len(cand) {
			cand, useCand = pl, true
		}
	}
	out := []uint32{}
	if useCand {
		for _, i := range cand {
			if s.matchesLabels(r.idLabels[i]) {
				out = append(out, r.clusterIDs[i])
			}
		}
	} else {
		for i, l := range r.idLabels {
			if s.matchesLabels(l) {
				out = append(out, r.clusterIDs[i])
			}
		}
	}
	r.selCache[key] = out
	return out
}

// selectCIDR returns the CIDR identities inside cidr and outside every
// except, plus world when cidr is a /0.
func (r *resolver) selectCIDR(cidr string, except []string) []uint32 {
	key := cidr + "!" + strings.Join(except, ",")
	if got, ok := r.cidrCache[key]; ok {
		return got
	}
	out := []uint32{}
	outer, err := netip.ParsePrefix(cidr)
	if err == nil {
		outer = outer.Masked()
		var ex []netip.Prefix
		for _, e := range except {
			if p, err := netip.ParsePrefix(e); err == nil {
				ex = append(ex, p.Masked())
			}
		}
		if outer.Bits() == 0 {
			out = append(out, IdentityWorld)
		}
	next:
		for _, c := range r.cidrIDs {
			if !prefixWithin(c.Prefix, outer) {
				continue
			}
			for _, e := range ex {
				if prefixWithin(c.Prefix, e) {
					continue next
				}
			}
			out = append(out, c.ID)
		}
	}
	r.cidrCache[key] = out
	return out
}

func (r *resolver) entity(name string) []uint32 {
	switch name {
	case EntityAll:
		return []uint32{IdentityAny}
	case EntityWorld:
		out := []uint32{IdentityWorld}
		for _, c := range r.cidrIDs {
			out = append(out, c.ID)
		}
		return out
	case EntityHost:
		return []uint32{IdentityHost}
	case EntityRemoteNode:
		return []uint32{IdentityRemoteNode}
	case EntityHealth:
		return []uint32{IdentityHealth}
	case EntityInit:
		return []uint32{IdentityInit}
	case EntityUnmanaged:
		return []uint32{IdentityUnmanaged}
	case EntityCluster:
		out := []uint32{IdentityHost, IdentityUnmanaged, IdentityHealth, IdentityInit, IdentityRemoteNode}
		return append(out, r.clusterIDs...)
	}
	return nil
}

func unionIDs(sets ...[]uint32) []uint32 {
	var out []uint32
	for _, s := range sets {
		out = append(out, s...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
