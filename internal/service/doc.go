// Package service is Membrane's pure load-balancing core. It turns v1
// Services and discovery.k8s.io/v1 EndpointSlices (parsed by
// internal/policy) and the pods known to the cluster into the desired
// load-balancer state of one node: frontends (a cluster IP or node address,
// a port and a protocol) each with its sorted backends, its algorithm and its
// session-affinity timeout (Resolve). It also builds Maglev lookup tables
// (Maglev), the consistent-hashing algorithm the datapath can use instead of
// a random pick.
//
// Like internal/policy it is deterministic and has no I/O: it imports
// neither the kernel, etcd nor the datapath. The agent feeds it the stored
// objects, the pods and the node's addresses, and writes the Result into the
// BPF service maps; the same inputs always give the same Result, and Maglev
// gives the same table in every process and Go version, so two agents agree
// on where a flow goes.
//
// Lifecycle: Parse/store (internal/policy) → Resolve on every change of
// services, slices or pods → Maglev per frontend whose algorithm is maglev
// → diff against the maps.
//
// What is left to the datapath: which backends get new connections (the
// Result keeps not-ready and terminating backends, flagged, so existing
// connections to them keep working), and the node port range the agent was
// configured with (validation only checks Kubernetes' 30000-32767).
package service
