package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/identity"
	"github.com/membrane-net/membrane/internal/kvstore"
	"github.com/membrane-net/membrane/internal/service"
)

// clusterSync publishes this node and its endpoints to etcd and turns the
// other nodes' records into datapath state: tunnel entries (remote pod
// CIDR → node IP, vxlan mode) and ipcache entries (remote node IPs as
// remote-node, remote pod IPs with their identities). When etcd is
// unreachable nothing is removed: the datapath keeps the last known state
// and the watcher re-lists once etcd answers again.
type clusterSync struct {
	a *Agent

	mu     sync.Mutex
	nodes  []kvstore.NodeRecord
	remote map[netip.Prefix]uint32 // remote /32 → identity
	pods   []service.Pod           // remote pods, for service backends
	// applied: the policy engine has computed with remote (resync only
	// regenerates when remote changed or the last regeneration failed).
	applied bool
	synced  time.Time
	err     error
}

func newClusterSync(a *Agent) *clusterSync {
	return &clusterSync{a: a, remote: map[netip.Prefix]uint32{}}
}

// register writes this node's record into the session.
func (c *clusterSync) register(ctx context.Context) error {
	rec := kvstore.NodeRecord{Name: c.a.cfg.NodeName, IP: c.a.nodeIP, PodCIDR: c.a.pool, RoutingMode: c.a.cfg.RoutingMode,
		Health: "ok", Version: Version, UpdatedAt: time.Now().UTC()}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return c.a.session.Set(ctx, kvstore.NodeKey(rec.Name), string(b))
}

// publish makes etcd's ipcache hold exactly this node's endpoints.
func (c *clusterSync) publish(ctx context.Context, eps []api.Endpoint, ids map[uint16]identity.ID) error {
	want := map[string]string{}
	for _, ep := range eps {
		rec := kvstore.IPCacheRecord{IP: ep.IPv4, Identity: uint32(ids[ep.ID]), Node: c.a.cfg.NodeName, NodeIP: c.a.nodeIP,
			Namespace: ep.Namespace, Pod: ep.Name, Labels: ep.Labels, Ports: ep.Ports, Readiness: ep.Readiness}
		b, _ := json.Marshal(rec)
		want[kvstore.IPCacheKey(ep.IPv4)] = string(b)
	}
	var errs []error
	for k, v := range want {
		if err := c.a.session.Set(ctx, k, v); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range c.a.session.Keys(kvstore.IPCachePrefix) {
		if _, ok := want[k]; !ok {
			if err := c.a.session.Delete(ctx, k); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// watch keeps the datapath in step with the cluster until ctx ends.
func (c *clusterSync) watch(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := c.resync(ctx)
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			c.a.log.Warn("cluster sync failed; keeping the last known state", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		for range kvstore.WatchPrefixes(ctx, c.a.kv.Client, rev, kvstore.NodesPrefix, kvstore.IPCachePrefix) {
			if _, err := c.resync(ctx); err != nil && ctx.Err() == nil {
				c.a.log.Warn("cluster sync failed; keeping the last known state", "err", err)
			}
		}
		// The watch broke (etcd down, compaction): back off, then re-list.
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// resync lists nodes and ipcache and applies them.
func (c *clusterSync) resync(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nodes, rev, err := kvstore.ListNodes(lctx, c.a.kv.Client)
	if err != nil {
		return 0, err
	}
	recs, _, err := kvstore.ListIPCache(lctx, c.a.kv.Client)
	if err != nil {
		return 0, err
	}
	self := c.a.cfg.NodeName
	remote := map[netip.Prefix]uint32{}
	var pods []service.Pod
	live := map[string]bool{}
	for _, n := range nodes {
		live[n.Name] = true
		if n.Name != self && n.IP.IsValid() {
			remote[netip.PrefixFrom(n.IP, n.IP.BitLen())] = uint32(identity.RemoteNode)
		}
	}
	for _, r := range recs {
		// Records of nodes that are gone are ignored (their lease is about
		// to take them too).
		if r.Node == self || !live[r.Node] {
			continue
		}
		remote[netip.PrefixFrom(r.IP, r.IP.BitLen())] = r.Identity
		pods = append(pods, service.Pod{IP: r.IP, Namespace: r.Namespace, Name: r.Pod, Node: r.Node, Labels: r.Labels,
			NamedPorts: r.Ports, Ready: readyFor(r.Readiness), Terminating: r.Readiness == api.ReadinessTerminating})
	}
	if err := c.syncTunnels(nodes); err != nil {
		return 0, err
	}
	// The policy engine reads only the remote entries: most events are this
	// node's own ipcache records coming back (one per ADD and DEL), which
	// change nothing for it.
	c.mu.Lock()
	changed := !c.applied || !maps.Equal(c.remote, remote) || !reflect.DeepEqual(c.pods, pods)
	c.nodes, c.remote, c.pods, c.synced, c.err = nodes, remote, pods, time.Now(), nil
	c.applied = false
	c.mu.Unlock()
	if !changed {
		c.mu.Lock()
		c.applied = true
		c.mu.Unlock()
		return rev, nil
	}
	if err := c.a.policy.regenerate(ctx); err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.applied = true
	c.mu.Unlock()
	return rev, nil
}

// syncTunnels makes the tunnel map hold the other nodes' pod CIDRs (vxlan
// mode) and nothing else.
func (c *clusterSync) syncTunnels(nodes []kvstore.NodeRecord) error {
	want := map[netip.Prefix]netip.Addr{}
	if c.a.cfg.RoutingMode == "vxlan" {
		for _, n := range nodes {
			if n.Name != c.a.cfg.NodeName && n.PodCIDR.IsValid() && n.IP.IsValid() {
				want[n.PodCIDR] = n.IP
			}
		}
	}
	cur, err := c.a.dp.ListTunnels()
	if err != nil {
		return err
	}
	var errs []error
	have := map[netip.Prefix]netip.Addr{}
	for _, t := range cur {
		have[t.PodCIDR] = t.NodeIP
		if _, ok := want[t.PodCIDR]; !ok {
			if err := c.a.dp.DeleteTunnel(t.PodCIDR); err != nil {
				errs = append(errs, err)
			} else {
				c.a.log.Info("tunnel removed", "podCIDR", t.PodCIDR, "node", t.NodeIP)
			}
		}
	}
	for p, ip := range want {
		if have[p] == ip {
			continue
		}
		if err := c.a.dp.UpsertTunnel(loader.TunnelEntry{PodCIDR: p, NodeIP: ip}); err != nil {
			errs = append(errs, fmt.Errorf("tunnel %s → %s: %w", p, ip, err))
			continue
		}
		c.a.log.Info("tunnel added", "podCIDR", p, "node", ip)
	}
	return errors.Join(errs...)
}

// hasSynced reports whether the cluster state has been read at least once.
func (c *clusterSync) hasSynced() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.synced.IsZero()
}

// remotePods returns the pods of other nodes (records of live nodes).
func (c *clusterSync) remotePods() []service.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.pods)
}

// remoteEntries returns the remote ipcache state for the policy engine.
func (c *clusterSync) remoteEntries() map[netip.Prefix]uint32 {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[netip.Prefix]uint32, len(c.remote))
	for p, id := range c.remote {
		out[p] = id
	}
	return out
}

// Nodes implements api.Backend.
func (a *Agent) Nodes(ctx context.Context) ([]api.Node, error) {
	nodes, _, err := kvstore.ListNodes(ctx, a.kv.Client)
	if err != nil {
		// etcd down: report what we last saw.
		a.clusterSync.mu.Lock()
		nodes = a.clusterSync.nodes
		a.clusterSync.mu.Unlock()
		if nodes == nil {
			return nil, &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
		}
	}
	out := make([]api.Node, len(nodes))
	for i, n := range nodes {
		out[i] = api.Node{Name: n.Name, IP: n.IP, PodCIDR: n.PodCIDR, RoutingMode: n.RoutingMode, Health: n.Health,
			Version: n.Version, Self: n.Name == a.cfg.NodeName}
	}
	return out, nil
}

// BPFTunnels implements api.Backend.
func (a *Agent) BPFTunnels(context.Context) ([]api.BPFTunnelEntry, error) {
	ts, err := a.dp.ListTunnels()
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.BPFTunnelEntry, len(ts))
	for i, t := range ts {
		out[i] = api.BPFTunnelEntry{PodCIDR: t.PodCIDR, NodeIP: t.NodeIP}
	}
	return out, nil
}

// BGPPeers implements api.Backend.
func (a *Agent) BGPPeers(ctx context.Context) ([]api.BGPPeer, error) {
	if a.bgp == nil {
		return nil, &api.Error{Code: api.CodeNotFound, Message: "BGP is not enabled on this node (--bgp-asn)"}
	}
	ps, err := a.bgp.Peers(ctx)
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.BGPPeer, len(ps))
	for i, p := range ps {
		out[i] = api.BGPPeer(p)
	}
	return out, nil
}

// BGPRoutes implements api.Backend.
func (a *Agent) BGPRoutes(context.Context) ([]api.BGPRoute, error) {
	if a.bgp == nil {
		return nil, &api.Error{Code: api.CodeNotFound, Message: "BGP is not enabled on this node (--bgp-asn)"}
	}
	rs, err := a.bgp.Routes()
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.BGPRoute, len(rs))
	for i, r := range rs {
		out[i] = api.BGPRoute(r)
	}
	return out, nil
}
