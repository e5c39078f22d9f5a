package policy

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Service and EndpointSlice carry no policy: Resolve ignores them. They live
// here because they are parsed, defaulted, validated and stored exactly like
// the policy kinds; internal/service turns them into load-balancer state.

// Service types, cluster IPs and session affinities Membrane accepts.
const (
	ServiceTypeClusterIP = "ClusterIP"
	ServiceTypeNodePort  = "NodePort"

	// ClusterIPNone makes a service headless: it gets no frontend.
	ClusterIPNone = "None"

	SessionAffinityNone     = "None"
	SessionAffinityClientIP = "ClientIP"

	// DefaultClientIPTimeoutSeconds is the ClientIP affinity timeout when
	// the manifest gives none (3 hours, as in Kubernetes).
	DefaultClientIPTimeoutSeconds int32 = 10800
	// MaxClientIPTimeoutSeconds is the longest ClientIP affinity timeout.
	MaxClientIPTimeoutSeconds int32 = 86400

	// NodePortMin and NodePortMax bound a nodePort, as Kubernetes' default
	// service-node-port-range. The agent may narrow the range further.
	NodePortMin int32 = 30000
	NodePortMax int32 = 32767

	// AnnotationLBAlgorithm picks a service's load-balancing algorithm:
	// "random" or "maglev". Absent means the agent's default.
	AnnotationLBAlgorithm = "membrane.io/lb-algorithm"

	// LabelServiceName names the service an EndpointSlice belongs to.
	LabelServiceName = "kubernetes.io/service-name"

	// AddressTypeIPv4 is the only EndpointSlice address type supported.
	AddressTypeIPv4 = "IPv4"
)

// ServiceSpec is v1 Service's spec, restricted to what Membrane implements.
type ServiceSpec struct {
	Type                  string                 `json:"type,omitempty"`      // "ClusterIP" (default) or "NodePort"
	ClusterIP             string                 `json:"clusterIP,omitempty"` // "" = to be allocated by the agent, "None" = headless: no frontends
	Selector              map[string]string      `json:"selector,omitempty"`
	Ports                 []ServicePort          `json:"ports,omitempty"`
	SessionAffinity       string                 `json:"sessionAffinity,omitempty"` // "None" (default) or "ClientIP"
	SessionAffinityConfig *SessionAffinityConfig `json:"sessionAffinityConfig,omitempty"`
}

// Headless reports whether the service has clusterIP None.
func (s *ServiceSpec) Headless() bool { return s.ClusterIP == ClusterIPNone }

// AffinityTimeoutSeconds is the ClientIP affinity timeout in seconds, 0 when
// the service has no session affinity.
func (s *ServiceSpec) AffinityTimeoutSeconds() int32 {
	if s.SessionAffinity != SessionAffinityClientIP {
		return 0
	}
	if c := s.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		return *c.ClientIP.TimeoutSeconds
	}
	return DefaultClientIPTimeoutSeconds
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name       string       `json:"name,omitempty"`
	Protocol   string       `json:"protocol,omitempty"` // TCP (default) or UDP; SCTP is refused
	Port       int32        `json:"port"`
	TargetPort *IntOrString `json:"targetPort,omitempty"` // number or named port; defaulted to port
	NodePort   int32        `json:"nodePort,omitempty"`
}

// SessionAffinityConfig configures session affinity.
type SessionAffinityConfig struct {
	ClientIP *ClientIPConfig `json:"clientIP,omitempty"`
}

// ClientIPConfig configures ClientIP session affinity.
type ClientIPConfig struct {
	TimeoutSeconds *int32 `json:"timeoutSeconds,omitempty"` // default 10800, 1..86400
}

// EndpointSliceSpec is the body of a discovery.k8s.io/v1 EndpointSlice: the
// backends of a service without a selector. In a manifest these fields sit
// at the top level, next to metadata, as in Kubernetes.
type EndpointSliceSpec struct {
	AddressType string          `json:"addressType"` // only IPv4
	Endpoints   []SliceEndpoint `json:"endpoints"`
	Ports       []SlicePort     `json:"ports,omitempty"`
}

// SliceEndpoint is one backend. Like kube-proxy, Membrane uses the first
// address only; the others are fungible copies by definition.
type SliceEndpoint struct {
	Addresses  []string           `json:"addresses"`
	Conditions EndpointConditions `json:"conditions,omitempty"`
	NodeName   string             `json:"nodeName,omitempty"`
}

// EndpointConditions are an endpoint's conditions; nil Ready and Serving
// mean true, nil Terminating false.
type EndpointConditions struct {
	Ready       *bool `json:"ready,omitempty"`
	Serving     *bool `json:"serving,omitempty"`
	Terminating *bool `json:"terminating,omitempty"`
}

// SlicePort is a port the endpoints of a slice listen on; Name matches the
// service port's name.
type SlicePort struct {
	Name     string `json:"name,omitempty"`
	Port     *int32 `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"` // TCP (default) or UDP
}

// endpointSliceFields are the top-level manifest fields of an EndpointSlice
// besides apiVersion, kind and metadata.
var endpointSliceFields = map[string]bool{"addressType": true, "endpoints": true, "ports": true}

// defaultService fills in what the Kubernetes API server defaults.
func defaultService(s *ServiceSpec) {
	// Empty and absent mean the same here and both encode as absent, so
	// keep one form and let the JSON form read back unchanged.
	if len(s.Selector) == 0 {
		s.Selector = nil
	}
	if len(s.Ports) == 0 {
		s.Ports = nil
	}
	if s.Type == "" {
		s.Type = ServiceTypeClusterIP
	}
	if s.SessionAffinity == "" {
		s.SessionAffinity = SessionAffinityNone
	}
	for i := range s.Ports {
		p := &s.Ports[i]
		if p.Protocol == "" {
			p.Protocol = "TCP"
		}
		// An invalid port is reported once, on port, not again on
		// the targetPort defaulted from it.
		if p.TargetPort == nil && p.Port >= 1 && p.Port <= 65535 {
			p.TargetPort = &IntOrString{IntVal: p.Port}
		}
	}
	if s.SessionAffinity == SessionAffinityClientIP {
		if s.SessionAffinityConfig == nil {
			s.SessionAffinityConfig = &SessionAffinityConfig{}
		}
		if s.SessionAffinityConfig.ClientIP == nil {
			s.SessionAffinityConfig.ClientIP = &ClientIPConfig{}
		}
		if s.SessionAffinityConfig.ClientIP.TimeoutSeconds == nil {
			t := DefaultClientIPTimeoutSeconds
			s.SessionAffinityConfig.ClientIP.TimeoutSeconds = &t
		}
	}
}

// defaultEndpointSlice defaults slice port protocols to TCP.
func defaultEndpointSlice(s *EndpointSliceSpec) {
	if len(s.Ports) == 0 {
		s.Ports = nil // encodes as absent
	}
	for i := range s.Ports {
		if s.Ports[i].Protocol == "" {
			s.Ports[i].Protocol = "TCP"
		}
	}
}

func validateService(obj *Object, fe *fieldErrors) {
	if obj.APIVersion != APIVersionV1 {
		fe.add("apiVersion", "Service needs apiVersion %s, got %q", APIVersionV1, obj.APIVersion)
	}
	if r := dns1123Label(obj.Namespace); r != "" {
		fe.add("metadata.namespace", "%q %s", obj.Namespace, r)
	}
	if r := dns1035Label(obj.Name); r != "" {
		fe.add("metadata.name", "%q %s", obj.Name, r)
	}
	if v, ok := obj.Annotations[AnnotationLBAlgorithm]; ok && v != "random" && v != "maglev" {
		fe.add("metadata.annotations."+AnnotationLBAlgorithm, "unknown load-balancing algorithm %q (want random or maglev)", v)
	}
	s := obj.Service
	if s == nil || obj.NetworkPolicy != nil || obj.MembranePolicy != nil || obj.EndpointSlice != nil {
		fe.add("spec", "Service needs a Service spec")
		return
	}

	nodePort := false
	switch s.Type {
	case ServiceTypeClusterIP:
	case ServiceTypeNodePort:
		nodePort = true
	case "LoadBalancer", "ExternalName":
		fe.add("spec.type", "service type %s is not supported (want ClusterIP or NodePort)", s.Type)
	default:
		fe.add("spec.type", "unknown service type %q (want ClusterIP or NodePort)", s.Type)
	}

	switch s.ClusterIP {
	case "":
	case ClusterIPNone:
		if nodePort {
			fe.add("spec.clusterIP", "a NodePort service cannot be headless (clusterIP None)")
		}
	default:
		if r := ipv4Unicast(s.ClusterIP); r != "" {
			fe.add("spec.clusterIP", "%q %s", s.ClusterIP, r)
		}
	}

	validateLabelMap("spec.selector", s.Selector, fe)

	if len(s.Ports) == 0 && !s.Headless() {
		fe.add("spec.ports", "required: a service needs at least one port (only a headless service, clusterIP None, may have none)")
	}
	names := map[string]int{}
	ports := map[string]int{}
	nodePorts := map[string]int{}
	for i, p := range s.Ports {
		pp := fmt.Sprintf("spec.ports[%d]", i)
		switch {
		case p.Name == "" && len(s.Ports) > 1:
			fe.add(pp+".name", "required when a service has more than one port")
		case p.Name != "":
			if r := dns1123Label(p.Name); r != "" {
				fe.add(pp+".name", "%q %s", p.Name, r)
			} else if j, dup := names[p.Name]; dup {
				fe.add(pp+".name", "duplicate name %q (also spec.ports[%d])", p.Name, j)
			} else {
				names[p.Name] = i
			}
		}
		protoOK := validateServiceProto(pp+".protocol", p.Protocol, fe)
		if p.Port < 1 || p.Port > 65535 {
			fe.add(pp+".port", "%d is not a port number (1-65535)", p.Port)
		} else if protoOK {
			k := strconv.Itoa(int(p.Port)) + "/" + p.Protocol
			if j, dup := ports[k]; dup {
				fe.add(pp+".port", "duplicate port %s (also spec.ports[%d])", k, j)
			} else {
				ports[k] = i
			}
		}
		if tp := p.TargetPort; tp != nil {
			if tp.IsString {
				if r := portName(tp.StrVal); r != "" {
					fe.add(pp+".targetPort", "%q %s", tp.StrVal, r)
				}
			} else if tp.IntVal < 1 || tp.IntVal > 65535 {
				fe.add(pp+".targetPort", "%d is not a port number (1-65535)", tp.IntVal)
			}
		}
		switch {
		case !nodePort && p.NodePort != 0:
			fe.add(pp+".nodePort", "only a NodePort service takes a nodePort (type is %s)", s.Type)
		case nodePort && p.NodePort == 0:
			fe.add(pp+".nodePort", "required for a NodePort service (%d-%d): Membrane does not allocate node ports", NodePortMin, NodePortMax)
		case nodePort && (p.NodePort < NodePortMin || p.NodePort > NodePortMax):
			fe.add(pp+".nodePort", "%d is outside the node port range %d-%d", p.NodePort, NodePortMin, NodePortMax)
		case nodePort && protoOK:
			k := strconv.Itoa(int(p.NodePort)) + "/" + p.Protocol
			if j, dup := nodePorts[k]; dup {
				fe.add(pp+".nodePort", "duplicate node port %s (also spec.ports[%d])", k, j)
			} else {
				nodePorts[k] = i
			}
		}
	}

	switch s.SessionAffinity {
	case SessionAffinityNone:
		if s.SessionAffinityConfig != nil {
			fe.add("spec.sessionAffinityConfig", "only allowed with sessionAffinity ClientIP")
		}
	case SessionAffinityClientIP:
		if c := s.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			if t := *c.ClientIP.TimeoutSeconds; t < 1 || t > MaxClientIPTimeoutSeconds {
				fe.add("spec.sessionAffinityConfig.clientIP.timeoutSeconds", "%d is out of range (1-%d)", t, MaxClientIPTimeoutSeconds)
			}
		}
	default:
		fe.add("spec.sessionAffinity", "unknown session affinity %q (want None or ClientIP)", s.SessionAffinity)
	}
}

// validateServiceProto checks a service or slice port protocol (defaults
// applied) and reports whether it is usable.
func validateServiceProto(p, proto string, fe *fieldErrors) bool {
	switch proto {
	case "TCP", "UDP":
		return true
	case "SCTP":
		fe.add(p, "SCTP is not supported for services (want TCP or UDP)")
	default:
		fe.add(p, "unsupported protocol %q (want TCP or UDP)", proto)
	}
	return false
}

func validateEndpointSlice(obj *Object, fe *fieldErrors) {
	if obj.APIVersion != APIVersionDiscovery {
		fe.add("apiVersion", "EndpointSlice needs apiVersion %s, got %q", APIVersionDiscovery, obj.APIVersion)
	}
	if r := dns1123Label(obj.Namespace); r != "" {
		fe.add("metadata.namespace", "%q %s", obj.Namespace, r)
	}
	if r := dns1123Subdomain(obj.Name); r != "" {
		fe.add("metadata.name", "%q %s", obj.Name, r)
	}
	if svc, ok := obj.Labels[LabelServiceName]; !ok {
		fe.add("metadata.labels", "label %s is required: it names the service these endpoints belong to", LabelServiceName)
	} else if r := dns1035Label(svc); r != "" {
		fe.add("metadata.labels."+LabelServiceName, "%q is not a service name: %s", svc, r)
	}
	s := obj.EndpointSlice
	if s == nil || obj.NetworkPolicy != nil || obj.MembranePolicy != nil || obj.Service != nil {
		fe.add("", "EndpointSlice needs addressType, endpoints and ports")
		return
	}
	switch s.AddressType {
	case AddressTypeIPv4:
	case "":
		fe.add("addressType", "required (IPv4)")
	case "IPv6":
		fe.add("addressType", "IPv6 is not supported yet (want IPv4)")
	default:
		fe.add("addressType", "unsupported address type %q (want IPv4)", s.AddressType)
	}
	for i, e := range s.Endpoints {
		ep := fmt.Sprintf("endpoints[%d]", i)
		if len(e.Addresses) == 0 {
			fe.add(ep+".addresses", "must list at least one address")
		}
		for j, a := range e.Addresses {
			if r := ipv4Unicast(a); r != "" {
				fe.add(fmt.Sprintf("%s.addresses[%d]", ep, j), "%q %s", a, r)
			}
		}
		if e.NodeName != "" {
			if r := dns1123Subdomain(e.NodeName); r != "" {
				fe.add(ep+".nodeName", "%q %s", e.NodeName, r)
			}
		}
	}
	names := map[string]int{}
	for i, p := range s.Ports {
		pp := fmt.Sprintf("ports[%d]", i)
		if p.Name != "" {
			if r := dns1123Label(p.Name); r != "" {
				fe.add(pp+".name", "%q %s", p.Name, r)
			}
		}
		// Names are unique whatever they are, "" included.
		if j, dup := names[p.Name]; dup {
			fe.add(pp+".name", "duplicate name %q (also ports[%d])", p.Name, j)
		} else {
			names[p.Name] = i
		}
		validateServiceProto(pp+".protocol", p.Protocol, fe)
		if p.Port != nil && (*p.Port < 1 || *p.Port > 65535) {
			fe.add(pp+".port", "%d is not a port number (1-65535)", *p.Port)
		}
	}
}

// ipv4Unicast checks a service or endpoint address: an IPv4 address a host
// can own. It returns "" or the reason it is refused.
func ipv4Unicast(s string) string {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return "is not an IP address"
	case a.Is4In6():
		return fmt.Sprintf("is an IPv4-mapped IPv6 address; write it as %s", a.Unmap())
	case a.Is6():
		return "is IPv6, which is not supported yet (IPv4 only)"
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(),
		a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "is not a unicast address (unspecified, loopback, link-local, multicast and broadcast are refused)"
	}
	return ""
}

// dns1035Label checks a service name: a DNS-1123 label that starts with a
// letter.
func dns1035Label(s string) string {
	if r := dns1123Label(s); r != "" {
		return r
	}
	if c := s[0]; c < 'a' || c > 'z' {
		return "must start with a lowercase letter (a DNS-1035 label)"
	}
	return ""
}
