// Package api defines the agent's HTTP/JSON API on its unix socket: the wire
// types shared by the agent, the CNI plugin and the CLI, a client, and the
// error codes that cross the socket. It has no knowledge of the kernel.
package api

import (
	"encoding/json"
	"net/netip"
	"time"
)

// DefaultSocketPath is where the agent listens unless told otherwise.
const DefaultSocketPath = "/var/run/membrane/membrane.sock"

// Status is the agent's health summary (GET /v1/status).
type Status struct {
	NodeName   string         `json:"nodeName"`
	Version    string         `json:"version"`
	StartedAt  time.Time      `json:"startedAt"`
	PodCIDR    netip.Prefix   `json:"podCIDR"`
	RouterIP   netip.Addr     `json:"routerIP"`
	Kvstore    KvstoreStatus  `json:"kvstore"`
	Datapath   DatapathStatus `json:"datapath"`
	IPAM       IPAMStatus     `json:"ipam"`
	Endpoints  int            `json:"endpoints"`
	Policy     PolicyStatus   `json:"policy"`
	Services   ServiceStatus  `json:"services"`
	StateDir   string         `json:"stateDir"`
	SocketPath string         `json:"socketPath"`
}

// ServiceStatus summarises the node's load balancing.
type ServiceStatus struct {
	Frontends    int           `json:"frontends"`
	Backends     int           `json:"backends"`
	LastSync     time.Time     `json:"lastSync,omitzero"`
	LastDuration time.Duration `json:"lastDuration"`
	LastError    string        `json:"lastError,omitempty"`
	Warnings     []string      `json:"warnings,omitempty"`
}

// KvstoreStatus describes the agent's connection to etcd.
type KvstoreStatus struct {
	Mode      string   `json:"mode"` // "embedded" or "external"
	Endpoints []string `json:"endpoints"`
	Healthy   bool     `json:"healthy"`
	Message   string   `json:"message,omitempty"`
}

// DatapathStatus describes the loaded BPF datapath.
type DatapathStatus struct {
	PinDir          string `json:"pinDir"`
	EndpointEntries int    `json:"endpointEntries"`
	EndpointMapSize uint32 `json:"endpointMapSize"`
	HostDevice      string `json:"hostDevice"`
	// Maps lists every BPF map's fill level (map pressure).
	Maps []MapUsage `json:"maps,omitempty"`
	// MonitorLevel is the flow-event aggregation level.
	MonitorLevel string `json:"monitorLevel,omitempty"`
	EventsLost   uint64 `json:"eventsLost"`
	FlowsSeen    uint64 `json:"flowsSeen"`
}

// MapUsage is a BPF map's fill level.
type MapUsage struct {
	Name     string `json:"name"`
	Entries  int    `json:"entries"`
	Capacity int    `json:"capacity"`
}

// IPAMStatus summarises address usage of the node's pool.
type IPAMStatus struct {
	Pool      netip.Prefix `json:"pool"`
	Allocated int          `json:"allocated"`
	Capacity  int          `json:"capacity"`
}

// NamedPort is a named container port, as in a Kubernetes pod spec.
type NamedPort struct {
	Name     string `json:"name"`
	Port     uint16 `json:"containerPort"`
	Protocol string `json:"protocol"` // TCP, UDP or SCTP
}

// Endpoint is one workload attachment managed by the agent.
type Endpoint struct {
	ID          uint16            `json:"id"`
	ContainerID string            `json:"containerID"`
	IfName      string            `json:"ifName"` // interface name inside the pod
	Netns       string            `json:"netns"`
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Ports       []NamedPort       `json:"ports,omitempty"`
	IPv4        netip.Addr        `json:"ipv4"`
	MAC         string            `json:"mac"` // pod side
	HostIfName  string            `json:"hostIfName"`
	HostIfIndex int               `json:"hostIfIndex"`
	HostMAC     string            `json:"hostMAC"`
	State       string            `json:"state"` // "ready", "restoring", "not-ready"
	// Readiness is whether the workload takes new service connections:
	// "" or "ready", "not-ready", "terminating" (set with PATCH; a
	// backend that is not ready keeps its connections but gets no new ones).
	Readiness string `json:"readiness,omitempty"`
	Identity  uint32 `json:"identity"`
	// PolicyEnforced says per direction whether policy selects the endpoint.
	IngressEnforced bool      `json:"ingressEnforced"`
	EgressEnforced  bool      `json:"egressEnforced"`
	CreatedAt       time.Time `json:"createdAt"`
}

// EndpointPatch changes workload metadata after ADD (PATCH /v1/endpoints/{id}).
// Nil fields are left unchanged.
type EndpointPatch struct {
	Labels *map[string]string `json:"labels,omitempty"`
	Ports  *[]NamedPort       `json:"ports,omitempty"`
	// Readiness: "ready", "not-ready" or "terminating".
	Readiness *string `json:"readiness,omitempty"`
}

// Endpoint readiness values (Endpoint.Readiness).
const (
	ReadinessReady       = "ready"
	ReadinessNotReady    = "not-ready"
	ReadinessTerminating = "terminating"
)

// CNIAddRequest is what the CNI plugin sends for ADD (POST /v1/cni/add).
type CNIAddRequest struct {
	ContainerID string            `json:"containerID"`
	Netns       string            `json:"netns"`
	IfName      string            `json:"ifName"`
	Namespace   string            `json:"namespace,omitempty"`
	PodName     string            `json:"podName,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Ports       []NamedPort       `json:"ports,omitempty"`
	MTU         int               `json:"mtu,omitempty"`
}

// CNIAddResponse carries what the plugin needs to build a CNI result.
type CNIAddResponse struct {
	Endpoint Endpoint     `json:"endpoint"`
	Address  netip.Prefix `json:"address"` // pod address with prefix length (/32 for IPv4)
	Gateway  netip.Addr   `json:"gateway"` // router IP
	Routes   []Route      `json:"routes"`
}

// Route is a route configured inside the pod.
type Route struct {
	Dst netip.Prefix `json:"dst"`
	GW  netip.Addr   `json:"gw,omitzero"`
}

// CNIDelRequest identifies an attachment to remove (POST /v1/cni/del).
type CNIDelRequest struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Netns       string `json:"netns,omitempty"`
}

// CNICheckRequest asks the agent to verify an attachment (POST /v1/cni/check).
type CNICheckRequest struct {
	ContainerID string       `json:"containerID"`
	IfName      string       `json:"ifName"`
	Netns       string       `json:"netns"`
	Address     netip.Prefix `json:"address,omitzero"` // from prevResult, if any
}

// Attachment names one (container, interface) pair.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// CNIGCRequest lists the attachments the runtime still uses; every other
// attachment of this network is released (POST /v1/cni/gc).
type CNIGCRequest struct {
	Valid []Attachment `json:"valid"`
}

// CNIGCResponse reports what GC removed.
type CNIGCResponse struct {
	RemovedEndpoints []Attachment `json:"removedEndpoints"`
	ReleasedIPs      []netip.Addr `json:"releasedIPs"`
}

// BPFEndpointEntry is one entry of the datapath's endpoint map.
type BPFEndpointEntry struct {
	IP         netip.Addr `json:"ip"`
	IfIndex    uint32     `json:"ifIndex"`
	PodMAC     string     `json:"podMAC"`
	HostMAC    string     `json:"hostMAC"`
	EndpointID uint16     `json:"endpointID"`
	Flags      uint16     `json:"flags"`
	Identity   uint32     `json:"identity"`
}

// Error codes carried in Error.Code. The CNI plugin maps them to CNI error codes.
const (
	CodeInvalid     = "invalid"     // bad input; nothing changed
	CodeNotFound    = "not-found"   // no such endpoint/attachment
	CodeConflict    = "conflict"    // already exists with different parameters
	CodeExhausted   = "exhausted"   // address pool exhausted
	CodeUnavailable = "unavailable" // a dependency (kvstore, kernel) is not ready; retry later
	CodeInternal    = "internal"    // anything else
)

// Error is the body of every non-2xx response.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ApplyRequest carries manifests (YAML or JSON, several documents) to
// store (POST /v1/resources/apply) or delete (POST /v1/resources/delete).
type ApplyRequest struct {
	Manifest string `json:"manifest"`
	// Wait makes the agent answer only once its own datapath enforces the
	// result (bounded by 10s).
	Wait bool `json:"wait,omitempty"`
}

// ResourceRef names a stored resource.
type ResourceRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// ResourceChange reports what happened to one resource.
type ResourceChange struct {
	Ref    ResourceRef `json:"ref"`
	Action string      `json:"action"` // created, configured, unchanged, deleted, not-found
}

// ApplyResponse is the answer to apply and delete.
type ApplyResponse struct {
	Changes []ResourceChange `json:"changes"`
	// Revision is the store revision of the write; RealizedRevision the
	// revision this agent's datapath enforces (>= Revision when Wait
	// succeeded).
	Revision         int64 `json:"revision"`
	RealizedRevision int64 `json:"realizedRevision"`
	// RealizedIn is how long the agent took, after storing, to enforce it.
	RealizedIn time.Duration `json:"realizedInNs,omitempty"`
}

// Resource is one stored manifest (GET /v1/resources).
type Resource struct {
	Ref      ResourceRef     `json:"ref"`
	Manifest json.RawMessage `json:"manifest"`
	// Selects lists the local endpoints a policy selects (policies only).
	Selects []string `json:"selects,omitempty"`
}

// PolicyStatus is the policy part of Status.
type PolicyStatus struct {
	Revision         uint64        `json:"revision"`         // local regeneration counter
	RealizedRevision int64         `json:"realizedRevision"` // store revision enforced
	Policies         int           `json:"policies"`
	Namespaces       int           `json:"namespaces"`
	LastError        string        `json:"lastError,omitempty"`
	LastDuration     time.Duration `json:"lastDurationNs"`
}

// IdentityInfo is one security identity (GET /v1/identities).
type IdentityInfo struct {
	ID        uint32            `json:"id"`
	Labels    map[string]string `json:"labels"`
	Reserved  bool              `json:"reserved,omitempty"`
	Scope     string            `json:"scope"` // reserved, cluster, local
	CIDR      string            `json:"cidr,omitempty"`
	Endpoints []string          `json:"endpoints,omitempty"` // local users (ns/name)
}

// TraceRequest asks for the policy verdict of a hypothetical packet.
// From and To are a local endpoint ("ns/name", name, id or IP), an IP
// address, "id:<n>" for an identity, or a label set "k=v,k2=v2" that must
// match exactly one known identity.
type TraceRequest struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"` // TCP, UDP, SCTP, ICMP or ANY
}

// TraceResponse explains the verdict.
type TraceResponse struct {
	From    string        `json:"from"`
	To      string        `json:"to"`
	Allowed bool          `json:"allowed"`
	Egress  TraceDecision `json:"egress"`
	Ingress TraceDecision `json:"ingress"`
	Summary string        `json:"summary"`
}

// TraceDecision is one direction's decision.
type TraceDecision struct {
	Enforced bool   `json:"enforced"`
	Decision string `json:"decision"` // allowed, denied, no-rule, not-enforced
	Rule     string `json:"rule,omitempty"`
	Policy   string `json:"policy,omitempty"` // kind ns/name
}

// BPFPolicyEntry is one entry of an endpoint's policy map.
type BPFPolicyEntry struct {
	Direction string `json:"direction"`
	Identity  uint32 `json:"identity"` // 0 = any
	Protocol  string `json:"protocol"`
	Ports     string `json:"ports"` // "*", "80", "8080-8083"
	Verdict   string `json:"verdict"`
	Cookie    uint32 `json:"cookie"`
	Rule      string `json:"rule,omitempty"`
}

// BPFPolicy is an endpoint's policy map (GET /v1/bpf/policy/{ref}).
type BPFPolicy struct {
	Endpoint        uint16           `json:"endpoint"`
	Identity        uint32           `json:"identity"`
	IngressEnforced bool             `json:"ingressEnforced"`
	EgressEnforced  bool             `json:"egressEnforced"`
	Entries         []BPFPolicyEntry `json:"entries"`
}

// BPFIPCacheEntry is one ipcache entry.
type BPFIPCacheEntry struct {
	Prefix       netip.Prefix `json:"prefix"`
	Identity     uint32       `json:"identity"`
	CIDRIdentity uint32       `json:"cidrIdentity,omitempty"`
}

// BPFCTEntry is one conntrack entry.
type BPFCTEntry struct {
	Protocol    string         `json:"protocol"`
	Src         netip.AddrPort `json:"src"`
	Dst         netip.AddrPort `json:"dst"`
	ExpiresIn   time.Duration  `json:"expiresInNs"`
	SeenReply   bool           `json:"seenReply"`
	Closing     bool           `json:"closing"`
	SrcIdentity uint32         `json:"srcIdentity"`
	Packets     uint64         `json:"packets"`
	Bytes       uint64         `json:"bytes"`
}

// FlowPeer is one side of a flow, enriched with what the agent knows.
type FlowPeer struct {
	IP        netip.Addr        `json:"ip"`
	Port      uint16            `json:"port,omitempty"`
	Identity  uint32            `json:"identity"`
	Endpoint  uint16            `json:"endpoint,omitempty"` // local endpoint id
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Name is "ns/pod", "reserved:<entity>" or the IP.
func (p FlowPeer) Name() string {
	if p.Pod != "" {
		return p.Namespace + "/" + p.Pod
	}
	return p.IP.String()
}

// Flow is one observed datapath event (GET /v1/flows).
type Flow struct {
	Time       time.Time `json:"time"`
	Type       string    `json:"type"`    // drop, trace, policy-verdict
	Verdict    string    `json:"verdict"` // FORWARDED or DROPPED
	DropReason string    `json:"dropReason,omitempty"`
	ObsPoint   string    `json:"observationPoint,omitempty"`
	Direction  string    `json:"direction,omitempty"` // ingress or egress (policy)
	Protocol   string    `json:"protocol"`
	TCPFlags   string    `json:"tcpFlags,omitempty"`
	CTState    string    `json:"ctState,omitempty"`
	Source     FlowPeer  `json:"source"`
	Dest       FlowPeer  `json:"destination"`
	Policy     string    `json:"policy,omitempty"` // kind ns/name of the deciding policy
	Rule       string    `json:"rule,omitempty"`
	Length     uint32    `json:"length"`
	IfIndex    uint32    `json:"ifindex,omitempty"`
	Cookie     uint32    `json:"cookie,omitempty"`
}

// FlowQuery filters flows. Peer filters (From, To) accept "ns/pod",
// "ns:<namespace>", "id:<identity>", "<ip>" or "k=v" labels; several values
// of one filter are ORed, different filters ANDed.
type FlowQuery struct {
	From     []string  `json:"from,omitempty"`
	To       []string  `json:"to,omitempty"`
	Verdict  string    `json:"verdict,omitempty"` // FORWARDED, DROPPED
	Protocol string    `json:"protocol,omitempty"`
	Type     string    `json:"type,omitempty"`
	Port     uint16    `json:"port,omitempty"` // source or destination port
	Since    time.Time `json:"since,omitzero"`
	Last     int       `json:"last,omitempty"` // at most this many of the newest matches (default 100 without Follow)
	Follow   bool      `json:"follow,omitempty"`
}

// Node is a cluster node (GET /v1/nodes).
type Node struct {
	Name        string       `json:"name"`
	IP          netip.Addr   `json:"ip"`
	PodCIDR     netip.Prefix `json:"podCIDR"`
	RoutingMode string       `json:"routingMode"`
	Health      string       `json:"health"`
	Version     string       `json:"version"`
	Self        bool         `json:"self,omitempty"`
}

// BPFTunnelEntry is one tunnel map entry.
type BPFTunnelEntry struct {
	PodCIDR netip.Prefix `json:"podCIDR"`
	NodeIP  netip.Addr   `json:"nodeIP"`
}

// BGPPeer is one BGP session.
type BGPPeer struct {
	Address  string `json:"address"`
	ASN      uint32 `json:"asn"`
	State    string `json:"state"`
	Uptime   string `json:"uptime,omitempty"`
	Received uint64 `json:"received"`
	Accepted uint64 `json:"accepted"`
	Sent     uint64 `json:"advertised"`
}

// BGPRoute is one path of the node's BGP table.
type BGPRoute struct {
	Prefix  string `json:"prefix"`
	NextHop string `json:"nextHop"`
	Local   bool   `json:"local"`
	Peer    string `json:"peer,omitempty"`
	Best    bool   `json:"best"`
}

// Service is a service as one node realises it (GET /v1/services).
type Service struct {
	Name      string            `json:"name"` // "namespace/name"
	Frontends []ServiceFrontend `json:"frontends"`
}

// ServiceFrontend is one address, port and protocol of a service.
type ServiceFrontend struct {
	Kind            string           `json:"kind"` // ClusterIP or NodePort
	Address         netip.AddrPort   `json:"address"`
	Protocol        string           `json:"protocol"`
	PortName        string           `json:"portName,omitempty"`
	Algorithm       string           `json:"algorithm"`
	AffinityTimeout time.Duration    `json:"affinityTimeout,omitempty"`
	RevNatID        uint16           `json:"revNatID"`
	Backends        []ServiceBackend `json:"backends"`
}

// ServiceBackend is one backend of a frontend.
type ServiceBackend struct {
	ID      uint32         `json:"id"`
	Address netip.AddrPort `json:"address"`
	Node    string         `json:"node,omitempty"`
	Pod     string         `json:"pod,omitempty"`
	State   string         `json:"state"` // active, not-ready, terminating
}

// BPFLB is a dump of the load-balancing maps (GET /v1/bpf/lb).
type BPFLB struct {
	Services []BPFLBService `json:"services"`
	Backends []BPFLBBackend `json:"backends"`
}

// BPFLBService is one service port of mbr_lb4_services.
type BPFLBService struct {
	Frontend        netip.AddrPort `json:"frontend"`
	Protocol        string         `json:"protocol"`
	RevNatID        uint16         `json:"revNatID"`
	Flags           []string       `json:"flags,omitempty"`
	AffinityTimeout uint32         `json:"affinityTimeoutSeconds,omitempty"`
	Backends        []uint32       `json:"backends"` // ids in slot order (active only)
	// MaglevSlots counts the slots of each backend id in the Maglev table.
	MaglevSlots map[uint32]int `json:"maglevSlots,omitempty"`
}

// BPFLBBackend is one entry of mbr_lb4_backends.
type BPFLBBackend struct {
	ID       uint32         `json:"id"`
	Address  netip.AddrPort `json:"address"`
	Protocol string         `json:"protocol"`
	State    string         `json:"state"`
}
