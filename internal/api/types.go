// Package api defines the agent's HTTP/JSON API on its unix socket: the wire
// types shared by the agent, the CNI plugin and the CLI, a client, and the
// error codes that cross the socket. It has no knowledge of the kernel.
package api

import (
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
	StateDir   string         `json:"stateDir"`
	SocketPath string         `json:"socketPath"`
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
	CreatedAt   time.Time         `json:"createdAt"`
}

// EndpointPatch changes workload metadata after ADD (PATCH /v1/endpoints/{id}).
// Nil fields are left unchanged.
type EndpointPatch struct {
	Labels *map[string]string `json:"labels,omitempty"`
	Ports  *[]NamedPort       `json:"ports,omitempty"`
}

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
