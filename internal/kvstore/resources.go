package kvstore

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/membrane-net/membrane/internal/policy"
)

// ResourceStore keeps applied resources (namespaces, policies) in etcd as
// their JSON manifests under /membrane/v1/resources/<kind>/<namespace>/<name>
// (namespace "_" for cluster-scoped kinds).
type ResourceStore struct {
	c      *clientv3.Client
	prefix string
}

// NewResourceStore returns the cluster's resource store.
func NewResourceStore(c *clientv3.Client) *ResourceStore {
	return &ResourceStore{c: c, prefix: Prefix + "resources/"}
}

// Ref names a stored resource.
type Ref struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

func (r Ref) String() string {
	if r.Namespace == "" {
		return strings.ToLower(r.Kind) + " " + r.Name
	}
	return strings.ToLower(r.Kind) + " " + r.Namespace + "/" + r.Name
}

// RefOf returns the reference of an object.
func RefOf(o *policy.Object) Ref { return Ref{Kind: o.Kind, Namespace: o.Namespace, Name: o.Name} }

func (s *ResourceStore) key(r Ref) string {
	ns := r.Namespace
	if ns == "" {
		ns = "_"
	}
	return s.prefix + strings.ToLower(r.Kind) + "/" + ns + "/" + r.Name
}

// MaxApplyObjects is the most objects one Apply or Delete stores (one etcd
// transaction; the embedded etcd allows twice as many operations; an
// external etcd needs --max-txn-ops of at least that).
const MaxApplyObjects = 2048

// Result of Apply/Delete.
type Change struct {
	Ref    Ref    `json:"ref"`
	Action string `json:"action"` // created, configured, unchanged, deleted, not-found
}

// Apply stores objs in one transaction: all or nothing. It reports per
// object whether it was created, configured or unchanged, and returns the
// store revision after the write.
func (s *ResourceStore) Apply(ctx context.Context, objs []policy.Object) ([]Change, int64, error) {
	if len(objs) > MaxApplyObjects {
		return nil, 0, fmt.Errorf("%d objects in one apply; at most %d are stored in one transaction: split the manifest", len(objs), MaxApplyObjects)
	}
	keys := make([]string, len(objs))
	vals := make([]string, len(objs))
	for i := range objs {
		b, err := json.Marshal(objs[i])
		if err != nil {
			return nil, 0, fmt.Errorf("encode %s: %w", objs[i].Ref(), err)
		}
		keys[i], vals[i] = s.key(RefOf(&objs[i])), string(b)
	}
	// Read the current values to report what changes (and to make the
	// write conditional on them, so a concurrent writer is noticed).
	var gets []clientv3.Op
	for _, k := range keys {
		gets = append(gets, clientv3.OpGet(k))
	}
	cur, err := s.c.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("read current resources: %w", err)
	}
	var conds []clientv3.Cmp
	var puts []clientv3.Op
	changes := make([]Change, len(objs))
	for i, k := range keys {
		kvs := cur.Responses[i].GetResponseRange().Kvs
		switch {
		case len(kvs) == 0:
			changes[i] = Change{RefOf(&objs[i]), "created"}
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		case string(kvs[0].Value) == vals[i]:
			changes[i] = Change{RefOf(&objs[i]), "unchanged"}
			continue
		default:
			changes[i] = Change{RefOf(&objs[i]), "configured"}
			conds = append(conds, clientv3.Compare(clientv3.ModRevision(k), "=", kvs[0].ModRevision))
		}
		puts = append(puts, clientv3.OpPut(k, vals[i]))
	}
	if len(puts) == 0 {
		return changes, cur.Header.Revision, nil
	}
	resp, err := s.c.Txn(ctx).If(conds...).Then(puts...).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("store resources: %w", err)
	}
	if !resp.Succeeded {
		return nil, 0, fmt.Errorf("store resources: changed concurrently by another writer; nothing was stored, apply again")
	}
	return changes, resp.Header.Revision, nil
}

// Delete removes the referenced resources in one transaction.
func (s *ResourceStore) Delete(ctx context.Context, refs []Ref) ([]Change, int64, error) {
	if len(refs) > MaxApplyObjects {
		return nil, 0, fmt.Errorf("%d objects in one delete; at most %d are deleted in one transaction: split the manifest", len(refs), MaxApplyObjects)
	}
	var ops []clientv3.Op
	for _, r := range refs {
		ops = append(ops, clientv3.OpDelete(s.key(r)))
	}
	resp, err := s.c.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, 0, fmt.Errorf("delete resources: %w", err)
	}
	changes := make([]Change, len(refs))
	for i, r := range refs {
		action := "deleted"
		if resp.Responses[i].GetResponseDeleteRange().Deleted == 0 {
			action = "not-found"
		}
		changes[i] = Change{r, action}
	}
	return changes, resp.Header.Revision, nil
}

// List returns every stored resource, sorted by kind, namespace, name, and
// the revision it was read at.
func (s *ResourceStore) List(ctx context.Context) ([]policy.Object, int64, error) {
	resp, err := s.c.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list resources: %w", err)
	}
	out := make([]policy.Object, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var o policy.Object
		if err := json.Unmarshal(kv.Value, &o); err != nil {
			return nil, 0, fmt.Errorf("decode stored resource %s: %w", kv.Key, err)
		}
		out = append(out, o)
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	return out, resp.Header.Revision, nil
}

// Get returns the stored objects among refs (missing ones are left out),
// in one read.
func (s *ResourceStore) Get(ctx context.Context, refs []Ref) (map[Ref]policy.Object, error) {
	if len(refs) > MaxApplyObjects {
		return nil, fmt.Errorf("get %d resources: at most %d in one read", len(refs), MaxApplyObjects)
	}
	gets := make([]clientv3.Op, len(refs))
	for i, r := range refs {
		gets[i] = clientv3.OpGet(s.key(r))
	}
	resp, err := s.c.Txn(ctx).Then(gets...).Commit()
	if err != nil {
		return nil, fmt.Errorf("read resources: %w", err)
	}
	out := map[Ref]policy.Object{}
	for i, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			var o policy.Object
			if err := json.Unmarshal(kv.Value, &o); err != nil {
				return nil, fmt.Errorf("decode stored resource %s: %w", kv.Key, err)
			}
			out[refs[i]] = o
		}
	}
	return out, nil
}

// Watch sends the store revision of every change under the prefix after
// rev until ctx ends. The channel is closed when the watch ends.
func (s *ResourceStore) Watch(ctx context.Context, rev int64) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		defer close(out)
		wch := s.c.Watch(clientv3.WithRequireLeader(ctx), s.prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			select {
			case out <- resp.Header.Revision:
			default:
				// A notification is already pending; the reader re-lists.
				select {
				case <-out:
				default:
				}
				out <- resp.Header.Revision
			}
		}
	}()
	return out
}
