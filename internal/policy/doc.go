// Package policy is Membrane's pure policy core. It owns the API types that
// `membrane apply` accepts (Namespace, networking.k8s.io/v1 NetworkPolicy,
// membrane.io/v1 MembranePolicy, and the policy-free v1 Service and
// discovery.k8s.io/v1 EndpointSlice that internal/service turns into
// load-balancer frontends), their strict parsing and validation, label
// selectors, and
// resolution: objects, identities and endpoints go in, the desired per-endpoint
// policy map state comes out (Resolve), together with a table of the rules that
// produced each entry so that verdicts can be explained (Trace).
//
// The package is deterministic and has no I/O: it imports neither the kernel,
// etcd nor the datapath. The agent feeds it what it learnt from the store and
// the identity allocator, and writes the Result into the BPF policy maps. The
// same inputs always give the same Result, so resolution is tested with
// golden files and truth tables, without root.
//
// Lifecycle: Parse (or JSON decoding of a stored Object) → Validate →
// CIDRPrefixes (the agent allocates node-local CIDR identities for them) →
// Resolve → diff against the maps → Trace for `membrane policy trace`.
package policy
