// Package kvstore is the agent's only door to etcd. It starts the embedded
// etcd server (the default store, data under the agent's state directory,
// served on unix sockets so nothing listens on a network port) or connects
// to an external cluster, and provides the etcd-backed adapters that the
// pure packages need (the IPAM store). Keys live under /membrane/.
//
// Lifecycle: Open (start embedded server if needed, connect) → use → Close
// (client first, then the embedded server).
package kvstore
