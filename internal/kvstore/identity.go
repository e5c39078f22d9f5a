package kvstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/membrane-net/membrane/internal/identity"
)

// IdentityAllocator allocates cluster-wide identities in etcd.
//
// Keys (under /membrane/v1/identities/):
//
//	id/<id>            = canonical labels      the identity
//	labels/<sha256>    = <id>                  reverse index
//	gen/<id>           = node that last took a reference (its revision guards GC)
//	refs/<id>/<node>   = "1", bound to the node's lease: a node that dies drops its references
//	next               = next candidate id (a hint; ids are created with create-if-absent)
//
// Allocation and the first reference of a node happen in transactions, so
// two nodes allocating the same labels at once get the same id, and an id
// is never handed out twice. Release deletes the node's reference and, if
// no reference is left, deletes the identity in a transaction that fails
// when another node took a reference meanwhile (gen changed).
type IdentityAllocator struct {
	c      *clientv3.Client
	node   string
	prefix string
	min    identity.ID
	max    identity.ID

	mu    sync.Mutex
	lease clientv3.LeaseID
	ka    context.CancelFunc
	ttl   int64
}

var _ identity.Allocator = (*IdentityAllocator)(nil)

// NewIdentityAllocator returns an allocator for node. leaseTTL bounds how
// long a dead node's references keep identities alive.
func NewIdentityAllocator(c *clientv3.Client, node string, leaseTTL time.Duration) *IdentityAllocator {
	return &IdentityAllocator{c: c, node: node, prefix: Prefix + "identities/",
		min: identity.MinAllocated, max: identity.MaxAllocated, ttl: int64(leaseTTL / time.Second)}
}

// Close stops the lease keep-alive. The lease is not revoked: references
// survive an agent restart until the TTL passes.
func (a *IdentityAllocator) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ka != nil {
		a.ka()
		a.ka = nil
	}
}

func (a *IdentityAllocator) getLease(ctx context.Context) (clientv3.LeaseID, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lease != 0 {
		return a.lease, nil
	}
	ttl := a.ttl
	if ttl < 5 {
		ttl = 5
	}
	g, err := a.c.Grant(ctx, ttl)
	if err != nil {
		return 0, fmt.Errorf("grant lease for node %s: %w", a.node, err)
	}
	kctx, cancel := context.WithCancel(context.Background())
	ch, err := a.c.KeepAlive(kctx, g.ID)
	if err != nil {
		cancel()
		return 0, fmt.Errorf("keep lease of node %s alive: %w", a.node, err)
	}
	go func() {
		for range ch {
		}
		// The channel closes when the lease is lost (etcd unreachable for
		// longer than the TTL) or on Close: take a new one next time.
		a.mu.Lock()
		if a.lease == g.ID {
			a.lease = 0
		}
		a.mu.Unlock()
	}()
	a.lease, a.ka = g.ID, cancel
	return g.ID, nil
}

func labelsKeyHash(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return hex.EncodeToString(sum[:])
}

func (a *IdentityAllocator) idKey(id identity.ID) string {
	return a.prefix + "id/" + strconv.FormatUint(uint64(id), 10)
}
func (a *IdentityAllocator) genKey(id identity.ID) string {
	return a.prefix + "gen/" + strconv.FormatUint(uint64(id), 10)
}
func (a *IdentityAllocator) refKey(id identity.ID) string {
	return a.prefix + "refs/" + strconv.FormatUint(uint64(id), 10) + "/" + a.node
}

// Allocate implements identity.Allocator.
func (a *IdentityAllocator) Allocate(ctx context.Context, canonical string) (identity.ID, error) {
	lease, err := a.getLease(ctx)
	if err != nil {
		return 0, err
	}
	lkey := a.prefix + "labels/" + labelsKeyHash(canonical)
	for attempt := 0; attempt < 64; attempt++ {
		resp, err := a.c.Get(ctx, lkey)
		if err != nil {
			return 0, fmt.Errorf("look up identity of {%s}: %w", canonical, err)
		}
		if len(resp.Kvs) == 1 {
			n, err := strconv.ParseUint(string(resp.Kvs[0].Value), 10, 32)
			if err != nil {
				return 0, fmt.Errorf("identity index %s holds %q: %w", lkey, resp.Kvs[0].Value, err)
			}
			id := identity.ID(n)
			// Take a reference only while the identity still exists.
			t, err := a.c.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(a.idKey(id)), "!=", 0)).
				Then(clientv3.OpPut(a.refKey(id), "1", clientv3.WithLease(lease)), clientv3.OpPut(a.genKey(id), a.node)).
				Commit()
			if err != nil {
				return 0, fmt.Errorf("reference identity %d: %w", id, err)
			}
			if t.Succeeded {
				return id, nil
			}
			continue // freed meanwhile: allocate anew
		}
		id, err := a.candidate(ctx)
		if err != nil {
			return 0, err
		}
		t, err := a.c.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(lkey), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(a.idKey(id)), "=", 0)).
			Then(clientv3.OpPut(lkey, strconv.FormatUint(uint64(id), 10)),
				clientv3.OpPut(a.idKey(id), canonical),
				clientv3.OpPut(a.genKey(id), a.node),
				clientv3.OpPut(a.refKey(id), "1", clientv3.WithLease(lease)),
				clientv3.OpPut(a.prefix+"next", strconv.FormatUint(uint64(id)+1, 10))).
			Commit()
		if err != nil {
			return 0, fmt.Errorf("create identity %d for {%s}: %w", id, canonical, err)
		}
		if t.Succeeded {
			return id, nil
		}
		// Lost a race (same labels, or the same id): look again. Bump the
		// hint so the next candidate differs.
		_, _ = a.c.Put(ctx, a.prefix+"next", strconv.FormatUint(uint64(id)+1, 10))
	}
	return 0, fmt.Errorf("allocate identity for {%s}: too much contention (64 attempts)", canonical)
}

// candidate returns a free id at or after the "next" hint, wrapping once.
func (a *IdentityAllocator) candidate(ctx context.Context) (identity.ID, error) {
	resp, err := a.c.Get(ctx, a.prefix+"next")
	if err != nil {
		return 0, fmt.Errorf("read identity hint: %w", err)
	}
	start := a.min
	if len(resp.Kvs) == 1 {
		if n, err := strconv.ParseUint(string(resp.Kvs[0].Value), 10, 32); err == nil && identity.ID(n) >= a.min && identity.ID(n) <= a.max {
			start = identity.ID(n)
		}
	}
	// Probe in batches: ids are dense, so the first batch almost always hits.
	id := start
	for scanned := uint64(0); scanned <= uint64(a.max-a.min); {
		batchEnd := min(id+255, a.max)
		r, err := a.c.Get(ctx, a.idKey(id), clientv3.WithRange(a.idKey(batchEnd+1)), clientv3.WithKeysOnly())
		if err != nil {
			return 0, fmt.Errorf("scan identities: %w", err)
		}
		used := map[identity.ID]bool{}
		for _, kv := range r.Kvs {
			n, _ := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), a.prefix+"id/"), 10, 32)
			used[identity.ID(n)] = true
		}
		for c := id; c <= batchEnd; c++ {
			if !used[c] {
				return c, nil
			}
		}
		scanned += uint64(batchEnd-id) + 1
		if batchEnd == a.max {
			id = a.min
		} else {
			id = batchEnd + 1
		}
	}
	return 0, fmt.Errorf("allocate identity between %d and %d: %w", a.min, a.max, identity.ErrExhausted)
}

// Release implements identity.Allocator.
func (a *IdentityAllocator) Release(ctx context.Context, id identity.ID) error {
	if _, err := a.c.Delete(ctx, a.refKey(id)); err != nil {
		return fmt.Errorf("drop reference to identity %d: %w", id, err)
	}
	return a.collect(ctx, id)
}

// collect deletes id if no node references it.
func (a *IdentityAllocator) collect(ctx context.Context, id identity.ID) error {
	gen, err := a.c.Get(ctx, a.genKey(id))
	if err != nil {
		return fmt.Errorf("collect identity %d: %w", id, err)
	}
	refs, err := a.c.Get(ctx, a.prefix+"refs/"+strconv.FormatUint(uint64(id), 10)+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("collect identity %d: %w", id, err)
	}
	if refs.Count > 0 || len(gen.Kvs) == 0 {
		return nil
	}
	cur, err := a.c.Get(ctx, a.idKey(id))
	if err != nil || len(cur.Kvs) == 0 {
		return err
	}
	lkey := a.prefix + "labels/" + labelsKeyHash(string(cur.Kvs[0].Value))
	_, err = a.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(a.genKey(id)), "=", gen.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(a.idKey(id)), clientv3.OpDelete(lkey), clientv3.OpDelete(a.genKey(id))).
		Commit()
	if err != nil {
		return fmt.Errorf("collect identity %d: %w", id, err)
	}
	return nil
}

// List implements identity.Allocator.
func (a *IdentityAllocator) List(ctx context.Context) (map[identity.ID]string, error) {
	resp, err := a.c.Get(ctx, a.prefix+"id/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list identities: %w", err)
	}
	out := make(map[identity.ID]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := strconv.ParseUint(strings.TrimPrefix(string(kv.Key), a.prefix+"id/"), 10, 32)
		if err != nil {
			return nil, fmt.Errorf("list identities: bad key %q", kv.Key)
		}
		out[identity.ID(n)] = string(kv.Value)
	}
	return out, nil
}
