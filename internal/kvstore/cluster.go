package kvstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/membrane-net/membrane/internal/api"
)

// NodeRecord is a node as the cluster sees it, under
// /membrane/v1/nodes/<name>, bound to the node's lease.
type NodeRecord struct {
	Name        string       `json:"name"`
	IP          netip.Addr   `json:"ip"`
	PodCIDR     netip.Prefix `json:"podCIDR"`
	RoutingMode string       `json:"routingMode"`
	Health      string       `json:"health"`
	Version     string       `json:"version"`
	UpdatedAt   time.Time    `json:"updatedAt"`
}

// IPCacheRecord maps a pod IP to its identity and node, under
// /membrane/v1/ipcache/<ip>, bound to the owning node's lease.
type IPCacheRecord struct {
	IP       netip.Addr `json:"ip"`
	Identity uint32     `json:"identity"`
	Node     string     `json:"node"`
	NodeIP   netip.Addr `json:"nodeIP"`
	// The workload behind the address, for service backends on other
	// nodes: selectors match its labels, named target ports its ports.
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	Ports     []api.NamedPort   `json:"ports,omitempty"`
	Readiness string            `json:"readiness,omitempty"` // "", not-ready, terminating
}

// Key prefixes of the cluster state.
const (
	NodesPrefix    = Prefix + "nodes-registry/"
	IPCachePrefix  = Prefix + "ipcache/"
	PodCIDRsPrefix = Prefix + "podcidrs/"
)

// NodeKey is the registry key of a node.
func NodeKey(name string) string { return NodesPrefix + name }

// IPCacheKey is the ipcache key of an address.
func IPCacheKey(ip netip.Addr) string { return IPCachePrefix + ip.String() }

// ---- pod CIDR allocation (cluster-pool IPAM) ----

func podCIDRKey(p netip.Prefix) string {
	return PodCIDRsPrefix + strings.ReplaceAll(p.String(), "/", "_")
}

// AllocatePodCIDR returns node's pod CIDR: the one it already holds, else
// the first free /bits of cluster, claimed with a create-if-absent
// transaction so no CIDR is ever handed to two nodes.
func AllocatePodCIDR(ctx context.Context, c *clientv3.Client, node string, cluster netip.Prefix, bits int) (netip.Prefix, error) {
	cluster = cluster.Masked()
	if bits < cluster.Bits() || bits > 30 {
		return netip.Prefix{}, fmt.Errorf("allocate pod CIDR for %s: /%d does not fit cluster CIDR %s", node, bits, cluster)
	}
	resp, err := c.Get(ctx, PodCIDRsPrefix, clientv3.WithPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("allocate pod CIDR for %s: %w", node, err)
	}
	used := map[netip.Prefix]bool{}
	for _, kv := range resp.Kvs {
		p, err := netip.ParsePrefix(strings.ReplaceAll(strings.TrimPrefix(string(kv.Key), PodCIDRsPrefix), "_", "/"))
		if err != nil {
			continue
		}
		if string(kv.Value) == node && cluster.Contains(p.Addr()) && p.Bits() == bits {
			return p, nil
		}
		used[p] = true
	}
	n := 1 << (bits - cluster.Bits())
	cand := netip.PrefixFrom(cluster.Addr(), bits)
	for range n {
		if !used[cand] {
			err := ClaimPodCIDR(ctx, c, node, cand)
			if err == nil {
				return cand, nil
			}
			if !errors.Is(err, errCIDRTaken) {
				return netip.Prefix{}, err
			}
		}
		cand = nextPrefix(cand)
	}
	return netip.Prefix{}, fmt.Errorf("allocate pod CIDR for %s: all %d /%d of %s are taken", node, n, bits, cluster)
}

var errCIDRTaken = errors.New("pod CIDR taken")

// ClaimPodCIDR records that node owns p; it fails if another node does.
func ClaimPodCIDR(ctx context.Context, c *clientv3.Client, node string, p netip.Prefix) error {
	key := podCIDRKey(p)
	t, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, node)).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return fmt.Errorf("claim pod CIDR %s for %s: %w", p, node, err)
	}
	if t.Succeeded {
		return nil
	}
	kvs := t.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 1 && string(kvs[0].Value) == node {
		return nil
	}
	owner := ""
	if len(kvs) == 1 {
		owner = string(kvs[0].Value)
	}
	return fmt.Errorf("claim pod CIDR %s for %s: held by node %q: %w", p, node, owner, errCIDRTaken)
}

func nextPrefix(p netip.Prefix) netip.Prefix {
	a := p.Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += 1 << (32 - p.Bits())
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Bits())
}

// ---- node session: leased keys that survive etcd outages ----

// Session keeps a set of keys alive under the node's lease. When the lease
// is lost (etcd unreachable for longer than its TTL), Run takes a new one
// and writes every key again, so the node and its endpoints reappear.
type Session struct {
	c   *clientv3.Client
	ttl time.Duration
	log *slog.Logger

	mu    sync.Mutex
	keys  map[string]string
	lease clientv3.LeaseID
	kick  chan struct{}
}

// NewSession returns a session; call Run in a goroutine.
func NewSession(c *clientv3.Client, ttl time.Duration, log *slog.Logger) *Session {
	return &Session{c: c, ttl: ttl, log: log, keys: map[string]string{}, kick: make(chan struct{}, 1)}
}

// Set records a leased key and writes it if the session is up.
func (s *Session) Set(ctx context.Context, key, value string) error {
	s.mu.Lock()
	if s.keys[key] == value && s.lease != 0 {
		s.mu.Unlock()
		return nil
	}
	s.keys[key] = value
	lease := s.lease
	s.mu.Unlock()
	if lease == 0 {
		return nil // written when the session comes up
	}
	if _, err := s.c.Put(ctx, key, value, clientv3.WithLease(lease)); err != nil {
		s.poke()
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// Delete forgets a key and deletes it.
func (s *Session) Delete(ctx context.Context, key string) error {
	s.mu.Lock()
	_, had := s.keys[key]
	delete(s.keys, key)
	s.mu.Unlock()
	if !had {
		return nil
	}
	if _, err := s.c.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// Keys returns the keys the session holds with a prefix.
func (s *Session) Keys(prefix string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k := range s.keys {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (s *Session) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Up reports whether the session currently holds a lease.
func (s *Session) Up() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease != 0
}

// Run keeps the session alive until ctx ends. The lease is not revoked at
// the end: an agent restart keeps the node registered until the TTL passes.
func (s *Session) Run(ctx context.Context) {
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		err := s.once(ctx)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("kvstore session lost; re-registering", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (s *Session) once(ctx context.Context) error {
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	g, err := s.c.Grant(gctx, int64(s.ttl/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ch, err := s.c.KeepAlive(kctx, g.ID)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	s.mu.Lock()
	keys := make(map[string]string, len(s.keys))
	for k, v := range s.keys {
		keys[k] = v
	}
	s.mu.Unlock()
	for k, v := range keys {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.c.Put(pctx, k, v, clientv3.WithLease(g.ID))
		pcancel()
		if err != nil {
			return fmt.Errorf("write %s: %w", k, err)
		}
	}
	s.mu.Lock()
	s.lease = g.ID
	// Keys set while we were writing the snapshot are written now.
	var late []string
	for k, v := range s.keys {
		if keys[k] != v {
			late = append(late, k)
		}
	}
	s.mu.Unlock()
	for _, k := range late {
		s.mu.Lock()
		v, ok := s.keys[k]
		s.mu.Unlock()
		if ok {
			_, _ = s.c.Put(ctx, k, v, clientv3.WithLease(g.ID))
		}
	}
	defer func() {
		s.mu.Lock()
		s.lease = 0
		s.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
			// A write failed: check the lease is still there.
			tctx, tcancel := context.WithTimeout(ctx, 5*time.Second)
			r, err := s.c.TimeToLive(tctx, g.ID)
			tcancel()
			if err == nil && r.TTL <= 0 {
				return errors.New("lease expired")
			}
		case _, ok := <-ch:
			if !ok {
				return errors.New("lease keep-alive ended")
			}
		}
	}
}

// ---- reading the cluster ----

// ListNodes returns the registered nodes.
func ListNodes(ctx context.Context, c *clientv3.Client) ([]NodeRecord, int64, error) {
	resp, err := c.Get(ctx, NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list nodes: %w", err)
	}
	out := make([]NodeRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var n NodeRecord
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return nil, 0, fmt.Errorf("decode node %s: %w", kv.Key, err)
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, resp.Header.Revision, nil
}

// ListIPCache returns the cluster's pod IP → identity records.
func ListIPCache(ctx context.Context, c *clientv3.Client) ([]IPCacheRecord, int64, error) {
	resp, err := c.Get(ctx, IPCachePrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list ipcache: %w", err)
	}
	out := make([]IPCacheRecord, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var r IPCacheRecord
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return nil, 0, fmt.Errorf("decode ipcache %s: %w", kv.Key, err)
		}
		out = append(out, r)
	}
	return out, resp.Header.Revision, nil
}

// WatchPrefixes sends a notification (the revision) for every change under
// any prefix after rev, until ctx ends or the watch breaks (then the
// channel closes and the caller re-lists).
func WatchPrefixes(ctx context.Context, c *clientv3.Client, rev int64, prefixes ...string) <-chan int64 {
	out := make(chan int64, 1)
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, p := range prefixes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One broken watch ends them all, so the caller re-lists.
			defer cancel()
			for resp := range c.Watch(clientv3.WithRequireLeader(wctx), p, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
				if resp.Err() != nil {
					return
				}
				select {
				case out <- resp.Header.Revision:
				default:
				}
			}
		}()
	}
	go func() { wg.Wait(); cancel(); close(out) }()
	return out
}
