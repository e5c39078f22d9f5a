package policy

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/membrane-net/membrane/internal/api"
)

// API versions and kinds understood by Parse.
const (
	APIVersionV1         = "v1"
	APIVersionNetworking = "networking.k8s.io/v1"
	APIVersionMembrane   = "membrane.io/v1"
	APIVersionDiscovery  = "discovery.k8s.io/v1"

	KindNamespace      = "Namespace"
	KindNetworkPolicy  = "NetworkPolicy"
	KindMembranePolicy = "MembranePolicy"
	KindService        = "Service"
	KindEndpointSlice  = "EndpointSlice"
	kindList           = "List"
)

// DefaultNamespace is the namespace of a namespaced object that names none.
const DefaultNamespace = "default"

// NamedPort is a named container port of an endpoint.
type NamedPort = api.NamedPort

// Object is one parsed resource. Exactly one of the spec pointers is set,
// the one of its kind; a Namespace has only metadata. Its JSON form is the
// Kubernetes manifest (apiVersion, kind, metadata, spec — or, for an
// EndpointSlice, its top-level addressType, endpoints and ports), so a
// stored Object reads back with Parse or json.Unmarshal unchanged.
type Object struct {
	APIVersion     string
	Kind           string
	Namespace      string // empty for Namespace objects
	Name           string
	Labels         map[string]string
	Annotations    map[string]string
	NetworkPolicy  *NetworkPolicySpec
	MembranePolicy *MembranePolicySpec
	Service        *ServiceSpec       // v1 Service
	EndpointSlice  *EndpointSliceSpec // discovery.k8s.io/v1 EndpointSlice
}

// Ref is "kind ns/name" (or "kind name" for cluster-scoped kinds), lowercased
// kind, as used in error messages.
func (o *Object) Ref() string {
	return objectRef(o.Kind, o.Namespace, o.Name)
}

func objectRef(kind, ns, name string) string {
	k := lower(kind)
	if k == "" {
		k = "object"
	}
	if name == "" {
		name = "<unnamed>"
	}
	if ns == "" {
		return k + " " + name
	}
	return k + " " + ns + "/" + name
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// ObjectMeta is the subset of Kubernetes metadata Membrane keeps.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// LabelSelector selects label sets; matchLabels and matchExpressions are
// ANDed. The empty selector selects everything.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one matchExpressions term.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"` // In, NotIn, Exists, DoesNotExist
	Values   []string `json:"values,omitempty"`
}

// Selector operators.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// NetworkPolicySpec is networking.k8s.io/v1 NetworkPolicy's spec. Slices keep
// the difference between absent (nil) and empty (non-nil, length 0); JSON
// encoding keeps it too (omitzero).
type NetworkPolicySpec struct {
	PodSelector *LabelSelector             `json:"podSelector"`
	PolicyTypes []string                   `json:"policyTypes,omitzero"`
	Ingress     []NetworkPolicyIngressRule `json:"ingress,omitzero"`
	Egress      []NetworkPolicyEgressRule  `json:"egress,omitzero"`
}

// Policy types of a NetworkPolicy.
const (
	PolicyTypeIngress = "Ingress"
	PolicyTypeEgress  = "Egress"
)

// NetworkPolicyIngressRule allows traffic from any of From on any of Ports.
type NetworkPolicyIngressRule struct {
	From  []NetworkPolicyPeer `json:"from,omitzero"`
	Ports []NetworkPolicyPort `json:"ports,omitzero"`
}

// NetworkPolicyEgressRule allows traffic to any of To on any of Ports.
type NetworkPolicyEgressRule struct {
	To    []NetworkPolicyPeer `json:"to,omitzero"`
	Ports []NetworkPolicyPort `json:"ports,omitzero"`
}

// NetworkPolicyPeer is a set of pods (podSelector AND namespaceSelector) or an
// address block.
type NetworkPolicyPeer struct {
	PodSelector       *LabelSelector `json:"podSelector,omitempty"`
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
	IPBlock           *IPBlock       `json:"ipBlock,omitempty"`
}

// IPBlock is a CIDR with exceptions.
type IPBlock struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except,omitempty"`
}

// NetworkPolicyPort is a protocol and a port, a named port or a port range.
type NetworkPolicyPort struct {
	Protocol *string      `json:"protocol,omitempty"` // default TCP
	Port     *IntOrString `json:"port,omitempty"`
	EndPort  *int32       `json:"endPort,omitempty"`
}

// IntOrString is a Kubernetes intstr: a number or a string.
type IntOrString struct {
	IsString bool
	IntVal   int32
	StrVal   string
}

// String renders the value as written.
func (v IntOrString) String() string {
	if v.IsString {
		return v.StrVal
	}
	return strconv.Itoa(int(v.IntVal))
}

// MarshalJSON writes a number or a string.
func (v IntOrString) MarshalJSON() ([]byte, error) {
	if v.IsString {
		return json.Marshal(v.StrVal)
	}
	return json.Marshal(v.IntVal)
}

// UnmarshalJSON reads a number or a string.
func (v *IntOrString) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		v.IsString = true
		return json.Unmarshal(b, &v.StrVal)
	}
	v.IsString = false
	if err := json.Unmarshal(b, &v.IntVal); err != nil {
		return fmt.Errorf("expected a port number or name: %w", err)
	}
	return nil
}

// MembranePolicySpec is membrane.io/v1 MembranePolicy's spec, modelled on
// CiliumNetworkPolicy. A present section (even empty) turns default deny on
// in its direction unless EnableDefaultDeny says otherwise.
type MembranePolicySpec struct {
	Description       string             `json:"description,omitempty"`
	EndpointSelector  *LabelSelector     `json:"endpointSelector"`
	Ingress           []IngressRule      `json:"ingress,omitzero"`
	IngressDeny       []IngressRule      `json:"ingressDeny,omitzero"`
	Egress            []EgressRule       `json:"egress,omitzero"`
	EgressDeny        []EgressRule       `json:"egressDeny,omitzero"`
	EnableDefaultDeny *DefaultDenyConfig `json:"enableDefaultDeny,omitempty"`
}

// DefaultDenyConfig overrides whether a MembranePolicy puts the endpoints it
// selects into default deny. Nil fields keep the default (on when the
// direction has a section).
type DefaultDenyConfig struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// IngressRule is one MembranePolicy ingress (or ingressDeny) rule. Peers of
// all kinds are ORed; ToPorts restricts them. A rule with ToPorts and no
// peers applies to every peer; a rule with neither selects nothing.
type IngressRule struct {
	FromEndpoints []LabelSelector `json:"fromEndpoints,omitzero"`
	FromCIDR      []string        `json:"fromCIDR,omitzero"`
	FromCIDRSet   []CIDRRule      `json:"fromCIDRSet,omitzero"`
	FromEntities  []string        `json:"fromEntities,omitzero"`
	ToPorts       []PortRule      `json:"toPorts,omitzero"`
}

// EgressRule is one MembranePolicy egress (or egressDeny) rule.
type EgressRule struct {
	ToEndpoints []LabelSelector `json:"toEndpoints,omitzero"`
	ToCIDR      []string        `json:"toCIDR,omitzero"`
	ToCIDRSet   []CIDRRule      `json:"toCIDRSet,omitzero"`
	ToEntities  []string        `json:"toEntities,omitzero"`
	ToPorts     []PortRule      `json:"toPorts,omitzero"`
}

// CIDRRule is a CIDR with exceptions.
type CIDRRule struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except,omitempty"`
}

// PortRule lists ports; any of them matches.
type PortRule struct {
	Ports []PortProtocol `json:"ports"`
}

// PortProtocol is a port (number, name, or "0"/"" for all ports), an
// optional end of range, and a protocol (TCP, UDP, SCTP, ANY; default ANY).
type PortProtocol struct {
	Port     string `json:"port,omitempty"`
	EndPort  int32  `json:"endPort,omitempty"`
	Protocol string `json:"protocol,omitempty"`
}

// Entities accepted by fromEntities/toEntities.
const (
	EntityWorld      = "world"
	EntityHost       = "host"
	EntityCluster    = "cluster"
	EntityRemoteNode = "remote-node"
	EntityHealth     = "health"
	EntityInit       = "init"
	EntityUnmanaged  = "unmanaged"
	EntityAll        = "all"
)

// Reserved identities.
const (
	IdentityAny        uint32 = 0 // wildcard in map keys
	IdentityHost       uint32 = 1
	IdentityWorld      uint32 = 2
	IdentityUnmanaged  uint32 = 3
	IdentityHealth     uint32 = 4
	IdentityInit       uint32 = 5
	IdentityRemoteNode uint32 = 6

	// MinClusterIdentity is the first identity the allocator hands out.
	MinClusterIdentity uint32 = 256
	// CIDRIdentityFlag marks node-local CIDR identities (>= 1<<24).
	CIDRIdentityFlag uint32 = 1 << 24
)

// IsClusterIdentity reports whether id is an allocated cluster identity.
func IsClusterIdentity(id uint32) bool {
	return id >= MinClusterIdentity && id < CIDRIdentityFlag
}

// IsCIDRIdentity reports whether id is a node-local CIDR identity.
func IsCIDRIdentity(id uint32) bool { return id >= CIDRIdentityFlag }

// IP protocol numbers used in map keys.
const (
	ProtoAny  uint8 = 0
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// ProtoName returns "TCP", "UDP", "SCTP" or "ANY".
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	case ProtoAny:
		return "ANY"
	}
	return strconv.Itoa(int(p))
}

// ParseProto maps a protocol name to its number; "" and "ANY" are ProtoAny.
func ParseProto(s string) (uint8, bool) {
	switch s {
	case "TCP":
		return ProtoTCP, true
	case "UDP":
		return ProtoUDP, true
	case "SCTP":
		return ProtoSCTP, true
	case "", "ANY":
		return ProtoAny, true
	}
	return 0, false
}
