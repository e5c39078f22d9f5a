package identity

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// ID is a security identity.
type ID uint32

// Reserved identities.
const (
	Unknown    ID = 0
	Host       ID = 1
	World      ID = 2
	Unmanaged  ID = 3
	Health     ID = 4
	Init       ID = 5
	RemoteNode ID = 6

	// MinAllocated is the first identity the cluster allocator hands out.
	MinAllocated ID = 256
	// MaxAllocated is the last: identities must fit the 24-bit VXLAN VNI.
	MaxAllocated ID = 1<<24 - 1
	// LocalScope marks node-local identities (CIDR identities): never on
	// the wire, never in etcd.
	LocalScope ID = 1 << 24
)

// ReservedNames maps reserved identities to their entity names.
var ReservedNames = map[ID]string{
	Host: "host", World: "world", Unmanaged: "unmanaged", Health: "health", Init: "init", RemoteNode: "remote-node",
}

// String names reserved identities and prints others as numbers.
func (id ID) String() string {
	if n, ok := ReservedNames[id]; ok {
		return fmt.Sprintf("%d (reserved:%s)", uint32(id), n)
	}
	return fmt.Sprintf("%d", uint32(id))
}

// IsLocal reports whether id is a node-local (CIDR) identity.
func (id ID) IsLocal() bool { return id&LocalScope != 0 }

// ReservedLabels returns the label set of a reserved identity, as policy
// sees it ("reserved:host" style keys).
func ReservedLabels(id ID) map[string]string {
	if n, ok := ReservedNames[id]; ok {
		return map[string]string{"reserved:" + n: ""}
	}
	return nil
}

// Canonical is the canonical form of a label set: sorted "k=v" joined by
// ",". Label keys and values cannot contain ',' so it is unambiguous.
func Canonical(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
	}
	return b.String()
}

// ParseCanonical is the inverse of Canonical.
func ParseCanonical(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parse label set %q: bad element %q", s, kv)
		}
		out[k] = v
	}
	return out, nil
}

// ErrExhausted means no identity is free in the allocatable range.
var ErrExhausted = errors.New("identity space exhausted")

// Allocator is the cluster-wide store of identities.
type Allocator interface {
	// Allocate returns the identity of labels, creating it if needed, and
	// records a reference from this node.
	Allocate(ctx context.Context, canonical string) (ID, error)
	// Release drops this node's reference; the store frees the identity
	// when no node references it.
	Release(ctx context.Context, id ID) error
	// List returns every identity in the store.
	List(ctx context.Context) (map[ID]string, error)
}

// Cache counts this node's users of each identity and talks to the
// Allocator only on the first acquire and the last release.
type Cache struct {
	alloc Allocator

	mu     sync.Mutex
	refs   map[ID]int
	byKey  map[string]ID
	labels map[ID]string
}

// NewCache wraps alloc.
func NewCache(alloc Allocator) *Cache {
	return &Cache{alloc: alloc, refs: map[ID]int{}, byKey: map[string]ID{}, labels: map[ID]string{}}
}

// Acquire returns the identity of labels and takes a reference.
func (c *Cache) Acquire(ctx context.Context, labels map[string]string) (ID, error) {
	key := Canonical(labels)
	c.mu.Lock()
	defer c.mu.Unlock()
	if id, ok := c.byKey[key]; ok {
		c.refs[id]++
		return id, nil
	}
	id, err := c.alloc.Allocate(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("allocate identity for {%s}: %w", key, err)
	}
	c.byKey[key] = id
	c.labels[id] = key
	c.refs[id] = 1
	return id, nil
}

// Release drops a reference taken by Acquire.
func (c *Cache) Release(ctx context.Context, id ID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.refs[id]
	if !ok {
		return fmt.Errorf("release identity %d: not held by this node", id)
	}
	if n > 1 {
		c.refs[id] = n - 1
		return nil
	}
	if err := c.alloc.Release(ctx, id); err != nil {
		return fmt.Errorf("release identity %d: %w", id, err)
	}
	delete(c.byKey, c.labels[id])
	delete(c.labels, id)
	delete(c.refs, id)
	return nil
}

// Held returns this node's identities and their reference counts.
func (c *Cache) Held() map[ID]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[ID]int, len(c.refs))
	for id, n := range c.refs {
		out[id] = n
	}
	return out
}
