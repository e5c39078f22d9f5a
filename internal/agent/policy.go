package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/identity"
	"github.com/membrane-net/membrane/internal/kvstore"
	"github.com/membrane-net/membrane/internal/policy"
	"github.com/membrane-net/membrane/internal/service"
)

// policyEngine turns stored resources, endpoints and identities into the
// datapath's state: endpoint identities, the ipcache and the per-endpoint
// policy maps. regenerate is a full, idempotent recomputation: the pure
// resolver computes the desired state and the engine applies the
// difference. It runs when the resource store changes (etcd watch) and
// synchronously after every endpoint change, so a CNI ADD returns only
// once its endpoint is governed by policy.
type policyEngine struct {
	a *Agent

	mu        sync.Mutex
	objects   []policy.Object
	objRev    int64 // store revision of objects
	realized  int64 // store revision the datapath enforces
	revision  uint64
	epIDs     map[uint16]identity.ID // identity references held per endpoint
	cidrIDs   map[netip.Prefix]identity.ID
	nextLocal identity.ID
	ipcache   map[netip.Prefix]loader.IPCacheEntry // last applied
	policied  map[uint16]bool                      // endpoints with a policy map
	input     policy.Input
	// lastIdentities is the last identity list read from etcd.
	lastIdentities map[identity.ID]string
	result         policy.Result
	lastErr        error
	lastDur        time.Duration

	realizedCh chan struct{} // closed and replaced on every realization

	// Coalescing: every regenerate call takes a ticket; a computation that
	// succeeds covers every ticket taken before it started, since it reads
	// the endpoints, objects and remote entries after that. Concurrent
	// ADDs waiting for the mutex are so answered by one computation instead
	// of one each.
	tickets atomic.Uint64
	covered uint64 // highest ticket covered by a successful computation
}

func newPolicyEngine(a *Agent) *policyEngine {
	return &policyEngine{a: a, epIDs: map[uint16]identity.ID{}, cidrIDs: map[netip.Prefix]identity.ID{},
		nextLocal: identity.LocalScope | 1, ipcache: map[netip.Prefix]loader.IPCacheEntry{}, policied: map[uint16]bool{},
		realizedCh: make(chan struct{})}
}

// reload reads the resource store and regenerates.
func (e *policyEngine) reload(ctx context.Context) error {
	objs, rev, err := e.a.resources.List(ctx)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.objects, e.objRev = objs, rev
	return e.regenerateLocked(ctx)
}

// regenerate recomputes with the current objects. It returns once a
// computation that started after the call has succeeded (possibly one run
// for another caller), or with this call's own computation's error.
func (e *policyEngine) regenerate(ctx context.Context) error {
	ticket := e.tickets.Add(1)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.covered >= ticket {
		return nil
	}
	return e.regenerateLocked(ctx)
}

// waitRealized blocks until the datapath enforces store revision rev.
func (e *policyEngine) waitRealized(ctx context.Context, rev int64) error {
	for {
		e.mu.Lock()
		done, ch := e.realized >= rev, e.realizedCh
		e.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for policy revision %d: %w", rev, ctx.Err())
		}
	}
}

func namespaceLabels(objs []policy.Object) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, o := range objs {
		if o.Kind != "Namespace" {
			continue
		}
		l := map[string]string{}
		for k, v := range o.Labels {
			l[k] = v
		}
		l["kubernetes.io/metadata.name"] = o.Name
		out[o.Name] = l
	}
	return out
}

func (e *policyEngine) regenerateLocked(ctx context.Context) (retErr error) {
	start := time.Now()
	ticket := e.tickets.Load() // before reading any input
	defer func() {
		if retErr == nil {
			e.covered = max(e.covered, ticket)
		}
		e.lastErr, e.lastDur = retErr, time.Since(start)
		if retErr != nil {
			e.a.log.Error("policy regeneration failed", "err", retErr)
		}
	}()
	a := e.a
	nsLabels := namespaceLabels(e.objects)
	eps := a.eps.List()
	for _, ep := range eps {
		if _, ok := nsLabels[ep.Namespace]; !ok {
			nsLabels[ep.Namespace] = map[string]string{"kubernetes.io/metadata.name": ep.Namespace}
		}
	}

	// 1. Identities of local endpoints: acquire the new set first, release
	// the old set once the datapath uses the new one.
	newIDs := make(map[uint16]identity.ID, len(eps))
	for _, ep := range eps {
		lbls := policy.EndpointIdentityLabels(ep.Namespace, ep.Labels, nsLabels[ep.Namespace]).Map()
		id, err := a.idCache.Acquire(ctx, lbls)
		if err != nil {
			for _, got := range newIDs {
				_ = a.idCache.Release(ctx, got)
			}
			return fmt.Errorf("identity of endpoint %d (%s/%s): %w", ep.ID, ep.Namespace, ep.Name, err)
		}
		newIDs[ep.ID] = id
	}
	oldIDs := e.epIDs
	e.epIDs = newIDs
	defer func() {
		for _, id := range oldIDs {
			if err := a.idCache.Release(context.WithoutCancel(ctx), id); err != nil {
				a.log.Warn("release identity", "id", id, "err", err)
			}
		}
	}()
	all, err := a.idAlloc.List(ctx)
	if err != nil {
		if e.lastIdentities == nil {
			return err
		}
		// etcd unreachable: keep computing with the identities last seen.
		a.log.Warn("list identities failed; using the last known set", "err", err)
		all = e.lastIdentities
	}
	e.lastIdentities = all
	idents := make([]policy.Identity, 0, len(all))
	for id, canonical := range all {
		m, err := identity.ParseCanonical(canonical)
		if err != nil {
			return fmt.Errorf("identity %d: %w", id, err)
		}
		idents = append(idents, policy.Identity{ID: uint32(id), Labels: policy.NewLabels(m)})
	}
	sort.Slice(idents, func(i, j int) bool { return idents[i].ID < idents[j].ID })

	// 2. Node-local CIDR identities for every prefix policy mentions.
	prefixes := policy.CIDRPrefixes(e.objects)
	keep := map[netip.Prefix]bool{}
	var cidrIdents []policy.CIDRIdentity
	for _, p := range prefixes {
		keep[p] = true
		id, ok := e.cidrIDs[p]
		if !ok {
			id = e.nextLocal
			e.nextLocal++
			e.cidrIDs[p] = id
		}
		cidrIdents = append(cidrIdents, policy.CIDRIdentity{ID: uint32(id), Prefix: p})
	}
	for p := range e.cidrIDs {
		if !keep[p] {
			delete(e.cidrIDs, p)
		}
	}
	cidrOf := func(a netip.Addr) uint32 {
		best, bits := uint32(0), -1
		for _, c := range cidrIdents {
			if c.Prefix.Contains(a) && c.Prefix.Bits() > bits {
				best, bits = c.ID, c.Prefix.Bits()
			}
		}
		return best
	}

	// 3. Resolve.
	in := policy.Input{Objects: e.objects, Namespaces: nsLabels, Identities: idents, CIDRIdentities: cidrIdents, AllowHostIngress: true}
	for _, ep := range eps {
		in.Endpoints = append(in.Endpoints, policy.EndpointInfo{ID: ep.ID, Namespace: ep.Namespace, Labels: ep.Labels,
			Identity: uint32(newIDs[ep.ID]), IPs: []netip.Addr{ep.IPv4}, Ports: ep.Ports})
	}
	res := policy.Resolve(in)

	// 4. ipcache: CIDR prefixes, endpoints, the node's own address.
	want := map[netip.Prefix]loader.IPCacheEntry{}
	for _, c := range cidrIdents {
		want[c.Prefix] = loader.IPCacheEntry{Prefix: c.Prefix, Identity: c.ID, CIDRIdentity: c.ID}
	}
	for _, ep := range eps {
		p := netip.PrefixFrom(ep.IPv4, 32)
		want[p] = loader.IPCacheEntry{Prefix: p, Identity: uint32(newIDs[ep.ID]), CIDRIdentity: cidrOf(ep.IPv4)}
	}
	// Remote pods and nodes: an endpoint's own /32 wins over a policy
	// CIDR of the same prefix (which stays visible as its CIDR identity),
	// but never over a local endpoint.
	localEP := make(map[netip.Prefix]bool, len(eps))
	for _, ep := range eps {
		localEP[netip.PrefixFrom(ep.IPv4, 32)] = true
	}
	for p, id := range a.clusterSync.remoteEntries() {
		if !localEP[p] {
			want[p] = loader.IPCacheEntry{Prefix: p, Identity: id, CIDRIdentity: cidrOf(p.Addr())}
		}
	}
	for _, own := range []netip.Addr{a.router, a.nodeIP} {
		if own.IsValid() {
			p := netip.PrefixFrom(own, 32)
			want[p] = loader.IPCacheEntry{Prefix: p, Identity: uint32(identity.Host), CIDRIdentity: cidrOf(own)}
		}
	}
	var errs []error
	for p, w := range want {
		if cur, ok := e.ipcache[p]; ok && cur == w {
			continue
		}
		if err := a.dp.UpsertIPCache(w); err != nil {
			errs = append(errs, err)
			continue
		}
		e.ipcache[p] = w
	}

	// 5. Policy maps and endpoint flags.
	live := map[uint16]bool{}
	for _, ep := range eps {
		live[ep.ID] = true
		pol := res.Endpoints[ep.ID]
		entries := make(map[loader.PolicyKey]loader.PolicyValue, len(pol.Entries))
		for k, v := range pol.Entries {
			entries[loader.PolicyKey{Identity: k.Identity, Egress: k.Egress, Proto: k.Proto, Port: k.Port, PortPrefixLen: k.PortPrefixLen}] =
				loader.PolicyValue{Deny: v.Deny, Cookie: v.Cookie}
		}
		if err := a.dp.SetEndpointPolicy(ep.ID, entries); err != nil {
			// Keep the endpoint fail-closed rather than half-applied.
			errs = append(errs, fmt.Errorf("endpoint %d (%s/%s): %w", ep.ID, ep.Namespace, ep.Name, err))
			_ = a.eps.SetPolicyState(ep.ID, uint32(newIDs[ep.ID]), true, true)
			continue
		}
		e.policied[ep.ID] = true
		if err := a.eps.SetPolicyState(ep.ID, uint32(newIDs[ep.ID]), pol.IngressEnforced, pol.EgressEnforced); err != nil {
			errs = append(errs, err)
		}
	}
	for id := range e.policied {
		if !live[id] {
			if err := a.dp.DeleteEndpointPolicy(id); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(e.policied, id)
		}
	}
	for p := range e.ipcache {
		if _, ok := want[p]; !ok {
			if err := a.dp.DeleteIPCache(p); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(e.ipcache, p)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Tell the cluster which identity each local pod address has. etcd
	// being unreachable must not fail the local computation: the session
	// writes the records once it is back.
	if a.clusterSync != nil {
		if err := a.clusterSync.publish(ctx, eps, newIDs); err != nil {
			a.log.Warn("publish endpoints to the cluster", "err", err)
		}
	}
	// Services follow the same objects and endpoints. A full map must not
	// fail endpoint creation: the error is logged and shown in status.
	sin := service.Input{Objects: e.objects, Pods: a.servicePods(eps), DefaultAlgorithm: service.Algorithm(a.cfg.LBAlgorithm)}
	if a.nodeIP.IsValid() {
		sin.NodeIPs = []netip.Addr{a.nodeIP}
	}
	// Not before the cluster state was read once: the other nodes' pods
	// are backends too, and a restarted agent must not drop them (and
	// renumber them) while it has not seen them yet. Until then the
	// pinned maps keep what the previous run left.
	if a.clusterSync != nil && a.clusterSync.hasSynced() {
		if err := a.services.sync(sin); err != nil {
			a.log.Error("service load balancing not fully applied", "err", err)
		}
	}
	e.input, e.result = in, res
	e.revision++
	e.realized = e.objRev
	close(e.realizedCh)
	e.realizedCh = make(chan struct{})
	return nil
}

// watch regenerates on every change of the resource store until ctx ends,
// re-establishing the watch (and re-listing) if it breaks.
func (e *policyEngine) watch(ctx context.Context) {
	for ctx.Err() == nil {
		e.mu.Lock()
		rev := e.objRev
		e.mu.Unlock()
		ch := e.a.resources.Watch(ctx, rev)
		for range ch {
			if err := e.reload(ctx); err != nil && ctx.Err() == nil {
				e.a.log.Error("reload policy resources", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		// The watch ended (etcd compaction, leader loss): re-list.
		if err := e.reload(ctx); err != nil && ctx.Err() == nil {
			e.a.log.Error("reload policy resources", "err", err)
		}
	}
}

func (e *policyEngine) status() api.PolicyStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := api.PolicyStatus{Revision: e.revision, RealizedRevision: e.realized, LastDuration: e.lastDur}
	for _, o := range e.objects {
		switch o.Kind {
		case policy.KindNamespace:
			st.Namespaces++
		case policy.KindNetworkPolicy, policy.KindMembranePolicy:
			st.Policies++
		}
	}
	if e.lastErr != nil {
		st.LastError = e.lastErr.Error()
	}
	return st
}

// snapshot returns the last resolver input and result.
func (e *policyEngine) snapshot() (policy.Input, policy.Result) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.input, e.result
}

// storeRef converts between the store's and the API's references.
func storeRef(r kvstore.Ref) api.ResourceRef {
	return api.ResourceRef{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
}
