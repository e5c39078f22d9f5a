package service

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/policy"
)

// Algorithm is how a frontend picks a backend for a new connection.
type Algorithm string

// Load-balancing algorithms, named as in the membrane.io/lb-algorithm
// annotation.
const (
	AlgRandom Algorithm = "random"
	AlgMaglev Algorithm = "maglev"
)

// FrontendKind says where a frontend answers.
type FrontendKind string

// Frontend kinds.
const (
	ClusterIP FrontendKind = "ClusterIP" // the service's cluster IP
	NodePort  FrontendKind = "NodePort"  // a node address, on the nodePort
)

// Pod is what Resolve needs to know about a pod that a selector may pick.
type Pod struct {
	IP         netip.Addr
	Namespace  string
	Name       string
	Node       string
	Labels     map[string]string
	NamedPorts []api.NamedPort
	Ready      bool
	// Terminating: the pod is being deleted.
	Terminating bool
}

// Input is everything Resolve reads.
type Input struct {
	// Objects holds Services and EndpointSlices; other kinds are ignored.
	Objects []policy.Object
	Pods    []Pod
	// NodeIPs are this node's addresses where NodePorts answer. IPv6
	// addresses are ignored.
	NodeIPs []netip.Addr
	// DefaultAlgorithm applies to services without the
	// membrane.io/lb-algorithm annotation; "" means AlgRandom.
	DefaultAlgorithm Algorithm
}

// Backend is one destination of a frontend.
type Backend struct {
	Addr        netip.Addr
	Port        uint16
	Proto       uint8 // 6 or 17
	Ready       bool  // false: keeps existing connections, gets no new ones
	Terminating bool
	Node        string
	Pod         string // "ns/name", or "" for an EndpointSlice address
}

// Key is the backend's stable name, "10.200.1.5:8080/tcp": the key Maglev
// hashes.
func (b Backend) Key() string {
	return netip.AddrPortFrom(b.Addr, b.Port).String() + "/" + protoKey(b.Proto)
}

func protoKey(p uint8) string { return strings.ToLower(policy.ProtoName(p)) }

// Frontend is an address, port and protocol a service answers on, with its
// backends.
type Frontend struct {
	Service  string // "ns/name"
	PortName string
	Kind     FrontendKind
	Addr     netip.Addr
	Port     uint16
	Proto    uint8
	// Algorithm picks backends for new connections.
	Algorithm Algorithm
	// AffinityTimeout is the ClientIP session-affinity timeout; 0 means
	// no affinity.
	AffinityTimeout time.Duration
	// Backends are sorted by (Addr, Port); nil when there are none.
	Backends []Backend
}

// Result is the desired load-balancer state of a node.
type Result struct {
	// Frontends are sorted by (Addr, Port, Proto); no two share all three.
	Frontends []Frontend
	// Warnings explain what was skipped, in a stable order.
	Warnings []string
}

type feKey struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

type resolver struct {
	defAlg  Algorithm
	pods    map[string][]*Pod           // by namespace
	slices  map[string][]*policy.Object // by "ns/service", sorted by name
	nodeIPs []netip.Addr                // IPv4, unmapped, sorted, unique
	owner   map[feKey]string            // frontend → service that has it
	res     Result
}

// Resolve computes the frontends of every Service in the input. Services
// are taken in (namespace, name) order; when two of them claim the same
// address, port and protocol the first keeps it and a warning names both.
// Resolve never fails: what it cannot use it skips, with a warning where a
// user would want to know.
func Resolve(in Input) Result {
	r := &resolver{
		defAlg: in.DefaultAlgorithm,
		pods:   map[string][]*Pod{},
		slices: map[string][]*policy.Object{},
		owner:  map[feKey]string{},
	}
	if r.defAlg == "" {
		r.defAlg = AlgRandom
	}
	for i := range in.Pods {
		p := &in.Pods[i]
		r.pods[p.Namespace] = append(r.pods[p.Namespace], p)
	}
	for _, a := range in.NodeIPs {
		if a = a.Unmap(); a.Is4() {
			r.nodeIPs = append(r.nodeIPs, a)
		}
	}
	slices.SortFunc(r.nodeIPs, netip.Addr.Compare)
	r.nodeIPs = slices.Compact(r.nodeIPs)

	var svcs []*policy.Object
	for i := range in.Objects {
		o := &in.Objects[i]
		switch {
		case o.Kind == policy.KindService && o.Service != nil:
			svcs = append(svcs, o)
		case o.Kind == policy.KindEndpointSlice && o.EndpointSlice != nil:
			if name := o.Labels[policy.LabelServiceName]; name != "" {
				k := o.Namespace + "/" + name
				r.slices[k] = append(r.slices[k], o)
			}
		}
	}
	byNsName := func(a, b *policy.Object) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	}
	slices.SortStableFunc(svcs, byNsName)
	for _, l := range r.slices {
		slices.SortStableFunc(l, byNsName)
	}
	for _, o := range svcs {
		r.service(o)
	}
	slices.SortFunc(r.res.Frontends, func(a, b Frontend) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
	})
	return r.res
}

func (r *resolver) warn(format string, args ...any) {
	r.res.Warnings = append(r.res.Warnings, fmt.Sprintf(format, args...))
}

func (r *resolver) service(o *policy.Object) {
	s := o.Service
	ref := o.Namespace + "/" + o.Name
	if s.Headless() {
		return
	}
	alg := r.defAlg
	if v, ok := o.Annotations[policy.AnnotationLBAlgorithm]; ok {
		switch a := Algorithm(v); a {
		case AlgRandom, AlgMaglev:
			alg = a
		default:
			r.warn("service %s: unknown load-balancing algorithm %q, using %s", ref, v, r.defAlg)
		}
	}
	affinity := time.Duration(s.AffinityTimeoutSeconds()) * time.Second

	var vip netip.Addr
	switch s.ClusterIP {
	case "":
		r.warn("service %s: no cluster IP allocated yet; no ClusterIP frontends", ref)
	default:
		a, err := netip.ParseAddr(s.ClusterIP)
		if a = a.Unmap(); err != nil || !a.Is4() {
			r.warn("service %s: cluster IP %q is not an IPv4 address; no ClusterIP frontends", ref, s.ClusterIP)
		} else {
			vip = a
		}
	}
	nodePort := s.Type == policy.ServiceTypeNodePort

	// Slices of a selector-less service that match none of its ports are
	// most likely a mistake; say so once per slice.
	usedSlice := map[*policy.Object]bool{}
	for _, p := range s.Ports {
		proto, ok := serviceProto(p.Protocol)
		if !ok {
			r.warn("service %s: port %s: unsupported protocol %q; skipped", ref, portLabel(p), p.Protocol)
			continue
		}
		if p.Port < 1 || p.Port > 65535 {
			r.warn("service %s: port %s: %d is not a port number; skipped", ref, portLabel(p), p.Port)
			continue
		}
		var backends []Backend
		if len(s.Selector) > 0 {
			backends = r.podBackends(o.Namespace, s.Selector, p, proto)
		} else {
			backends = r.sliceBackends(ref, p, proto, usedSlice)
		}
		fe := Frontend{
			Service: ref, PortName: p.Name, Proto: proto,
			Algorithm: alg, AffinityTimeout: affinity,
		}
		if vip.IsValid() {
			fe.Kind, fe.Addr, fe.Port = ClusterIP, vip, uint16(p.Port)
			r.add(fe, backends)
		}
		if nodePort && p.NodePort >= 1 && p.NodePort <= 65535 {
			for _, a := range r.nodeIPs {
				fe.Kind, fe.Addr, fe.Port = NodePort, a, uint16(p.NodePort)
				r.add(fe, backends)
			}
		}
	}
	if len(s.Selector) == 0 {
		for _, sl := range r.slices[ref] {
			if !usedSlice[sl] {
				r.warn("endpointslice %s/%s: no port matches a port of service %s by name and protocol; unused", sl.Namespace, sl.Name, ref)
			}
		}
	}
}

// add records a frontend unless an earlier service has its address, port
// and protocol.
func (r *resolver) add(fe Frontend, backends []Backend) {
	k := feKey{fe.Addr, fe.Port, fe.Proto}
	if prev, dup := r.owner[k]; dup {
		r.warn("service %s: %s frontend %s/%s is already service %s's; ignored",
			fe.Service, fe.Kind, netip.AddrPortFrom(fe.Addr, fe.Port), policy.ProtoName(fe.Proto), prev)
		return
	}
	r.owner[k] = fe.Service
	fe.Backends = slices.Clone(backends)
	r.res.Frontends = append(r.res.Frontends, fe)
}

// podBackends selects the pods of ns whose labels contain every selector
// pair and maps the service port to each pod's target port.
func (r *resolver) podBackends(ns string, sel map[string]string, p policy.ServicePort, proto uint8) []Backend {
	var bs backendSet
	for _, pod := range r.pods[ns] {
		if !containsAll(pod.Labels, sel) {
			continue
		}
		addr := pod.IP.Unmap()
		if !addr.Is4() {
			continue // no address yet, or IPv6
		}
		port, ok := targetPort(p, proto, pod.NamedPorts)
		if !ok {
			continue
		}
		bs.add(Backend{
			Addr: addr, Port: port, Proto: proto,
			Ready: pod.Ready, Terminating: pod.Terminating,
			Node: pod.Node, Pod: pod.Namespace + "/" + pod.Name,
		})
	}
	return bs.sorted()
}

// targetPort is the pod port a service port sends to: the number, the pod's
// named port of that name and protocol, or the service port itself.
func targetPort(p policy.ServicePort, proto uint8, named []api.NamedPort) (uint16, bool) {
	tp := p.TargetPort
	switch {
	case tp == nil:
		return uint16(p.Port), true
	case !tp.IsString:
		if tp.IntVal < 1 || tp.IntVal > 65535 {
			return 0, false
		}
		return uint16(tp.IntVal), true
	}
	for _, np := range named {
		if np.Name != tp.StrVal || np.Port == 0 {
			continue
		}
		if npProto, ok := serviceProto(np.Protocol); ok && npProto == proto {
			return np.Port, true
		}
	}
	return 0, false
}

// sliceBackends collects the endpoints of the service's slices whose port
// has the service port's name and protocol.
func (r *resolver) sliceBackends(ref string, p policy.ServicePort, proto uint8, used map[*policy.Object]bool) []Backend {
	var bs backendSet
	for _, o := range r.slices[ref] {
		sl := o.EndpointSlice
		if sl.AddressType != policy.AddressTypeIPv4 {
			continue
		}
		var port uint16
		for _, sp := range sl.Ports {
			spProto, ok := serviceProto(sp.Protocol)
			if sp.Name != p.Name || !ok || spProto != proto || sp.Port == nil || *sp.Port < 1 || *sp.Port > 65535 {
				continue
			}
			port = uint16(*sp.Port)
			break
		}
		if port == 0 {
			continue
		}
		used[o] = true
		for _, e := range sl.Endpoints {
			if len(e.Addresses) == 0 {
				continue
			}
			// Like kube-proxy, the first address stands for the
			// endpoint; the others are fungible copies.
			addr, err := netip.ParseAddr(e.Addresses[0])
			if addr = addr.Unmap(); err != nil || !addr.Is4() {
				continue
			}
			bs.add(Backend{
				Addr: addr, Port: port, Proto: proto,
				Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
				Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
				Node:        e.NodeName,
			})
		}
	}
	return bs.sorted()
}

// backendSet merges backends with the same address and port: one listed
// twice (a pod IP reused, or an address in two slices during a handover)
// is ready if any copy is, and terminating only if every copy is.
type backendSet struct {
	list []Backend
	at   map[netip.AddrPort]int
}

func (s *backendSet) add(b Backend) {
	k := netip.AddrPortFrom(b.Addr, b.Port)
	if i, ok := s.at[k]; ok {
		prev := &s.list[i]
		if b.Ready && !prev.Ready {
			// The ready copy describes the live endpoint.
			b.Terminating = b.Terminating && prev.Terminating
			*prev = b
			return
		}
		prev.Ready = prev.Ready || b.Ready
		prev.Terminating = prev.Terminating && b.Terminating
		return
	}
	if s.at == nil {
		s.at = map[netip.AddrPort]int{}
	}
	s.at[k] = len(s.list)
	s.list = append(s.list, b)
}

func (s *backendSet) sorted() []Backend {
	slices.SortFunc(s.list, func(a, b Backend) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	return s.list
}

func containsAll(labels, sel map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// serviceProto maps a service protocol to its number; "" is TCP.
func serviceProto(s string) (uint8, bool) {
	switch strings.ToUpper(s) {
	case "", "TCP":
		return policy.ProtoTCP, true
	case "UDP":
		return policy.ProtoUDP, true
	}
	return 0, false
}

func portLabel(p policy.ServicePort) string {
	if p.Name != "" {
		return p.Name
	}
	return strconv.Itoa(int(p.Port))
}
