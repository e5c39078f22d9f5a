// Package ipam allocates pod addresses. It owns the Allocator interface that
// the endpoint manager consumes and HostScope, an allocator over the node's
// pod CIDR. Allocations are persisted through a Store (etcd in the agent, an
// in-memory fake in tests) before they are handed out, so an agent restart
// neither loses nor double-allocates an address. The package is pure: it
// imports neither the kernel nor etcd; a cluster-wide pool allocator can
// implement Allocator later.
package ipam
