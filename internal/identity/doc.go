// Package identity defines security identities: numeric ids that stand for
// label sets, the same on every node. It owns the reserved identities, the
// canonical form of a label set, the Allocator interface that the cluster
// store implements (package kvstore, with etcd transactions) and a local
// reference-counting cache in front of it, so that an identity is taken
// from the store once per node and released when its last endpoint goes.
// The package is pure: no kernel, no etcd.
package identity
