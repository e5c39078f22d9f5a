package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Peer is one side of a traced connection: a local endpoint, an identity,
// or an address (looked up among the endpoints, then the CIDR identities,
// then world). IP may accompany Endpoint or Identity to give the address the
// datapath would see.
type Peer struct {
	Endpoint *uint16
	Identity uint32
	IP       netip.Addr
}

// Decisions of one direction.
const (
	DecisionAllowed     = "allowed"
	DecisionDenied      = "denied"
	DecisionNoRule      = "no-rule"
	DecisionNotEnforced = "not-enforced"
)

// Verdict is the outcome of Trace: the connection passes when the egress
// side of the source and the ingress side of the destination both let it.
type Verdict struct {
	Allowed bool
	Egress  DirVerdict // of the source, when it is a local endpoint
	Ingress DirVerdict // of the destination, when it is a local endpoint
}

// DirVerdict is one endpoint's decision in one direction.
type DirVerdict struct {
	Enforced bool
	Decision string   // allowed, denied, no-rule, not-enforced
	Rule     *RuleRef // the deciding rule; nil for no-rule, not-enforced and implicit entries
	Key      *Key     // the deciding map entry, if any
}

func (d DirVerdict) passes() bool {
	return d.Decision == DecisionAllowed || d.Decision == DecisionNotEnforced
}

// String is e.g. "denied by membranepolicy default/x ingressDeny[0]".
func (d DirVerdict) String() string {
	switch {
	case d.Rule != nil:
		return d.Decision + " by " + d.Rule.String()
	case d.Key != nil:
		return d.Decision + " (implicit)"
	}
	return d.Decision
}

type tracedPeer struct {
	local    *EndpointPolicy
	identity uint32
	cidr     uint32 // CIDR identity of the address, 0 if none
}

// Trace computes the verdict for a packet from → to with the given protocol
// and destination port, as the datapath decides from the map state in res:
// for each checked endpoint it looks up the peer identity, the CIDR identity
// of the peer address and the wildcard 0, takes in each the longest matching
// key, and lets any deny win over any allow.
func Trace(in Input, res Result, from, to Peer, proto uint8, port uint16) Verdict {
	src := resolvePeer(&in, &res, from)
	dst := resolvePeer(&in, &res, to)
	v := Verdict{
		Egress:  DirVerdict{Decision: DecisionNotEnforced},
		Ingress: DirVerdict{Decision: DecisionNotEnforced},
	}
	if src.local != nil {
		v.Egress = decide(&res, src.local, true, dst, proto, port)
	}
	if dst.local != nil {
		v.Ingress = decide(&res, dst.local, false, src, proto, port)
	}
	v.Allowed = v.Egress.passes() && v.Ingress.passes()
	return v
}

func resolvePeer(in *Input, res *Result, p Peer) tracedPeer {
	var tp tracedPeer
	ip := p.IP
	switch {
	case p.Endpoint != nil:
		for i := range in.Endpoints {
			ep := &in.Endpoints[i]
			if ep.ID == *p.Endpoint {
				tp.identity = ep.Identity
				if !ip.IsValid() && len(ep.IPs) > 0 {
					ip = ep.IPs[0]
				}
				break
			}
		}
		if pol, ok := res.Endpoints[*p.Endpoint]; ok {
			tp.local = &pol
		}
	case p.Identity != 0:
		tp.identity = p.Identity
	case ip.IsValid():
		tp.identity = IdentityWorld
		found := false
		for i := range in.Endpoints {
			ep := &in.Endpoints[i]
			if slices.Contains(ep.IPs, ip) {
				tp.identity, found = ep.Identity, true
				if pol, ok := res.Endpoints[ep.ID]; ok && ep.ID != 0 {
					tp.local = &pol
				}
				break
			}
		}
		if !found {
			if c := longestCIDRIdentity(in.CIDRIdentities, ip); c != 0 {
				tp.identity = c
			}
		}
	}
	if ip.IsValid() {
		tp.cidr = longestCIDRIdentity(in.CIDRIdentities, ip)
	}
	return tp
}

func longestCIDRIdentity(ids []CIDRIdentity, ip netip.Addr) uint32 {
	best, bestBits := uint32(0), -1
	for _, c := range ids {
		if c.Prefix.Contains(ip) && c.Prefix.Bits() > bestBits {
			best, bestBits = c.ID, c.Prefix.Bits()
		}
	}
	return best
}

func decide(res *Result, pol *EndpointPolicy, egress bool, peer tracedPeer, proto uint8, port uint16) DirVerdict {
	enforced := pol.IngressEnforced
	if egress {
		enforced = pol.EgressEnforced
	}
	if !enforced {
		return DirVerdict{Decision: DecisionNotEnforced}
	}
	ids := []uint32{peer.identity}
	if peer.cidr != 0 && peer.cidr != peer.identity {
		ids = append(ids, peer.cidr)
	}
	if peer.identity != IdentityAny {
		ids = append(ids, IdentityAny)
	}
	var allow *Key
	for _, id := range ids {
		k, e, ok := lookup(pol.Entries, id, egress, proto, port)
		if !ok {
			continue
		}
		if e.Deny {
			return DirVerdict{Enforced: true, Decision: DecisionDenied, Rule: res.Rule(e.Cookie), Key: &k}
		}
		if allow == nil {
			allow = &k
		}
	}
	if allow != nil {
		return DirVerdict{Enforced: true, Decision: DecisionAllowed, Rule: res.Rule(pol.Entries[*allow].Cookie), Key: allow}
	}
	return DirVerdict{Enforced: true, Decision: DecisionNoRule}
}

// lookup finds the longest key of one identity that matches the packet:
// port prefixes from /16 down to /0 of the packet's protocol, then the
// any-protocol key.
func lookup(entries map[Key]Entry, id uint32, egress bool, proto uint8, port uint16) (Key, Entry, bool) {
	for plen := 16; plen >= 0; plen-- {
		k := Key{Identity: id, Egress: egress, Proto: proto, Port: port & portMask(uint8(plen)), PortPrefixLen: uint8(plen)}
		if e, ok := entries[k]; ok {
			return k, e, true
		}
	}
	k := Key{Identity: id, Egress: egress}
	e, ok := entries[k]
	return k, e, ok
}

// Format renders a Result as text, one endpoint after another in ID order,
// entries in key order, then the rule table: stable, for golden files and
// the CLI.
func (r Result) Format() string {
	var b strings.Builder
	ids := make([]uint16, 0, len(r.Endpoints))
	for id := range r.Endpoints {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		pol := r.Endpoints[id]
		fmt.Fprintf(&b, "endpoint %d: ingress %s, egress %s\n", id, enforcedWord(pol.IngressEnforced), enforcedWord(pol.EgressEnforced))
		for _, k := range pol.SortedKeys() {
			e := pol.Entries[k]
			fmt.Fprintf(&b, "  %s\n", r.formatEntry(k, e))
		}
	}
	if len(r.Rules) > 0 {
		b.WriteString("rules:\n")
		for i, rule := range r.Rules {
			fmt.Fprintf(&b, "  %d %s: %s\n", i+1, objectRef(rule.Kind, rule.Namespace, rule.Name), rule.Text)
		}
	}
	return b.String()
}

func enforcedWord(b bool) string {
	if b {
		return "enforced"
	}
	return "not enforced"
}

func (r Result) formatEntry(k Key, e Entry) string {
	verdict := "allow"
	if e.Deny {
		verdict = "deny"
	}
	why := "implicit"
	if rule := r.Rule(e.Cookie); rule != nil {
		why = fmt.Sprintf("rule %d", e.Cookie)
	}
	return fmt.Sprintf("%-7s %-5s %-10s %s  %s", dirWord(k.Egress), verdict, identityName(k.Identity), k.PortString(), why)
}

func dirWord(egress bool) string {
	if egress {
		return "egress"
	}
	return "ingress"
}

// PortString renders the protocol and port block: "ANY", "TCP", "TCP/80",
// "TCP/8000-8191".
func (k Key) PortString() string {
	if k.Proto == ProtoAny {
		return "ANY"
	}
	if k.PortPrefixLen == 0 {
		return ProtoName(k.Proto)
	}
	return ProtoName(k.Proto) + "/" + PortPrefix{Port: k.Port, Len: k.PortPrefixLen}.String()
}

func identityName(id uint32) string {
	switch id {
	case IdentityAny:
		return "any"
	case IdentityHost:
		return "host"
	case IdentityWorld:
		return "world"
	case IdentityUnmanaged:
		return "unmanaged"
	case IdentityHealth:
		return "health"
	case IdentityInit:
		return "init"
	case IdentityRemoteNode:
		return "remote-node"
	}
	return fmt.Sprintf("%d", id)
}

// SortedKeys returns the entries' keys in a stable order: ingress first,
// then by identity, protocol, port and prefix length.
func (p EndpointPolicy) SortedKeys() []Key {
	keys := make([]Key, 0, len(p.Entries))
	for k := range p.Entries {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKey)
	return keys
}

func compareKey(a, b Key) int {
	if a.Egress != b.Egress {
		if !a.Egress {
			return -1
		}
		return 1
	}
	return cmp.Or(
		cmp.Compare(a.Identity, b.Identity),
		cmp.Compare(a.Proto, b.Proto),
		cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.PortPrefixLen, b.PortPrefixLen),
	)
}
