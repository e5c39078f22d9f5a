package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
)

var (
	// ErrExhausted means the pool has no free address.
	ErrExhausted = errors.New("address pool exhausted")
	// ErrTaken means the requested address belongs to another owner.
	ErrTaken = errors.New("address already allocated")
	// ErrNotInPool means an address is outside the pool or reserved.
	ErrNotInPool = errors.New("address not allocatable from pool")
)

// Allocator hands out addresses to owners. An owner is an opaque string,
// e.g. "<containerID>/<ifname>"; one owner holds at most one address per
// family.
type Allocator interface {
	// Allocate returns the owner's existing address or a new one.
	Allocate(ctx context.Context, owner string) (netip.Addr, error)
	// AllocateAddr claims a specific address for owner (restore, sticky IPs).
	AllocateAddr(ctx context.Context, addr netip.Addr, owner string) error
	// Release frees addr; releasing a free address is not an error.
	Release(ctx context.Context, addr netip.Addr) error
	// Allocations returns a copy of addr → owner.
	Allocations() map[netip.Addr]string
	// Pool is the prefix addresses come from.
	Pool() netip.Prefix
	// Capacity is how many addresses the pool can hand out.
	Capacity() int
}

// Store persists allocations. Claim must be atomic: it fails with ErrTaken
// when addr is held by a different owner, and succeeds (idempotently) when
// it is already held by owner.
type Store interface {
	Load(ctx context.Context) (map[netip.Addr]string, error)
	Claim(ctx context.Context, addr netip.Addr, owner string) error
	Release(ctx context.Context, addr netip.Addr) error
}

// HostScope allocates from one prefix owned by this node. The network
// address, the first address (the router) and, for IPv4, the broadcast
// address are never handed out.
type HostScope struct {
	mu       sync.Mutex
	pool     netip.Prefix
	reserved map[netip.Addr]bool
	store    Store
	byAddr   map[netip.Addr]string
	byOwner  map[string]netip.Addr
	cursor   netip.Addr // next address to try; allocation rotates through the pool
	capacity int
}

// NewHostScope loads existing allocations from store and returns an
// allocator for pool. Pools larger than 2^20 addresses are refused (they
// belong to a cluster-pool allocator, not a node).
func NewHostScope(ctx context.Context, pool netip.Prefix, store Store) (*HostScope, error) {
	if !pool.IsValid() {
		return nil, fmt.Errorf("new host-scope pool: invalid prefix %v", pool)
	}
	pool = pool.Masked()
	hostBits := pool.Addr().BitLen() - pool.Bits()
	if hostBits > 20 {
		return nil, fmt.Errorf("new host-scope pool %s: too large (/%d); use at most 2^20 addresses", pool, pool.Bits())
	}
	if hostBits < 2 {
		return nil, fmt.Errorf("new host-scope pool %s: too small; need at least a /%d", pool, pool.Addr().BitLen()-2)
	}
	h := &HostScope{
		pool:     pool,
		reserved: map[netip.Addr]bool{},
		store:    store,
		byAddr:   map[netip.Addr]string{},
		byOwner:  map[string]netip.Addr{},
	}
	first := pool.Addr()
	h.reserved[first] = true        // network address
	h.reserved[first.Next()] = true // router
	if pool.Addr().Is4() {
		h.reserved[lastAddr(pool)] = true // broadcast
	}
	h.capacity = (1 << hostBits) - len(h.reserved)
	h.cursor = first.Next().Next()

	loaded, err := store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("load allocations of pool %s: %w", pool, err)
	}
	for a, owner := range loaded {
		if !h.allocatable(a) {
			return nil, fmt.Errorf("load allocations of pool %s: stored address %s (owner %q): %w", pool, a, owner, ErrNotInPool)
		}
		if prev, ok := h.byOwner[owner]; ok {
			return nil, fmt.Errorf("load allocations of pool %s: owner %q holds both %s and %s", pool, owner, prev, a)
		}
		h.byAddr[a] = owner
		h.byOwner[owner] = a
	}
	return h, nil
}

// RouterAddr is the first usable address of a prefix: the node's router IP.
func RouterAddr(pool netip.Prefix) netip.Addr { return pool.Masked().Addr().Next() }

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	hostBits := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && hostBits > 0; i-- {
		n := min(hostBits, 8)
		b[i] |= byte(1<<n - 1)
		hostBits -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (h *HostScope) allocatable(a netip.Addr) bool {
	return h.pool.Contains(a) && !h.reserved[a]
}

// Pool implements Allocator.
func (h *HostScope) Pool() netip.Prefix { return h.pool }

// Capacity implements Allocator.
func (h *HostScope) Capacity() int { return h.capacity }

// Allocations implements Allocator.
func (h *HostScope) Allocations() map[netip.Addr]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[netip.Addr]string, len(h.byAddr))
	for a, o := range h.byAddr {
		out[a] = o
	}
	return out
}

// Allocate implements Allocator. The store is written before the address
// is returned; if the store refuses, nothing changes in memory.
func (h *HostScope) Allocate(ctx context.Context, owner string) (netip.Addr, error) {
	if owner == "" {
		return netip.Addr{}, errors.New("allocate address: empty owner")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if a, ok := h.byOwner[owner]; ok {
		return a, nil
	}
	if len(h.byAddr) >= h.capacity {
		return netip.Addr{}, fmt.Errorf("allocate address for %q from %s (%d of %d in use): %w", owner, h.pool, len(h.byAddr), h.capacity, ErrExhausted)
	}
	a := h.cursor
	for range h.capacity + len(h.reserved) {
		if !h.pool.Contains(a) {
			a = h.pool.Addr()
		}
		if h.allocatable(a) && h.byAddr[a] == "" {
			err := h.store.Claim(ctx, a, owner)
			if errors.Is(err, ErrTaken) {
				// Someone else (another agent sharing the store by mistake,
				// or a stale writer) holds it: skip, keep looking.
				a = a.Next()
				continue
			}
			if err != nil {
				return netip.Addr{}, fmt.Errorf("allocate address %s for %q: persist: %w", a, owner, err)
			}
			h.byAddr[a] = owner
			h.byOwner[owner] = a
			h.cursor = a.Next()
			return a, nil
		}
		a = a.Next()
	}
	return netip.Addr{}, fmt.Errorf("allocate address for %q from %s: %w", owner, h.pool, ErrExhausted)
}

// AllocateAddr implements Allocator.
func (h *HostScope) AllocateAddr(ctx context.Context, a netip.Addr, owner string) error {
	if owner == "" {
		return fmt.Errorf("allocate address %s: empty owner", a)
	}
	if !h.allocatable(a) {
		return fmt.Errorf("allocate address %s from %s: %w", a, h.pool, ErrNotInPool)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if cur, ok := h.byAddr[a]; ok {
		if cur == owner {
			return nil
		}
		return fmt.Errorf("allocate address %s for %q: held by %q: %w", a, owner, cur, ErrTaken)
	}
	if prev, ok := h.byOwner[owner]; ok {
		return fmt.Errorf("allocate address %s for %q: owner already holds %s: %w", a, owner, prev, ErrTaken)
	}
	if err := h.store.Claim(ctx, a, owner); err != nil {
		return fmt.Errorf("allocate address %s for %q: persist: %w", a, owner, err)
	}
	h.byAddr[a] = owner
	h.byOwner[owner] = a
	return nil
}

// Release implements Allocator.
func (h *HostScope) Release(ctx context.Context, a netip.Addr) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	owner, ok := h.byAddr[a]
	if !ok {
		return nil
	}
	if err := h.store.Release(ctx, a); err != nil {
		return fmt.Errorf("release address %s of %q: persist: %w", a, owner, err)
	}
	delete(h.byAddr, a)
	delete(h.byOwner, owner)
	return nil
}

// SortedAddrs returns the keys of m in order; a helper for listings.
func SortedAddrs(m map[netip.Addr]string) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for a := range m {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// MemStore is an in-memory Store for tests and for agents run without
// persistence. It is safe for concurrent use.
type MemStore struct {
	mu sync.Mutex
	m  map[netip.Addr]string
	// FailClaims, when set, makes Claim return it (to test error paths).
	FailClaims error
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore { return &MemStore{m: map[netip.Addr]string{}} }

// Load implements Store.
func (s *MemStore) Load(context.Context) (map[netip.Addr]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[netip.Addr]string, len(s.m))
	for a, o := range s.m {
		out[a] = o
	}
	return out, nil
}

// Claim implements Store.
func (s *MemStore) Claim(_ context.Context, a netip.Addr, owner string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.FailClaims != nil {
		return s.FailClaims
	}
	if cur, ok := s.m[a]; ok && cur != owner {
		return fmt.Errorf("claim %s: held by %q: %w", a, cur, ErrTaken)
	}
	s.m[a] = owner
	return nil
}

// Release implements Store.
func (s *MemStore) Release(_ context.Context, a netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, a)
	return nil
}
