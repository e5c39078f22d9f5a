package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/link"
	"github.com/membrane-net/membrane/internal/endpoint"
	"github.com/membrane-net/membrane/internal/ipam"
	"github.com/membrane-net/membrane/internal/policy"
)

var _ api.Backend = (*Agent)(nil)

// apiError maps domain errors to API error codes, keeping the message.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	code := api.CodeInternal
	switch {
	case errors.Is(err, endpoint.ErrInvalid):
		code = api.CodeInvalid
	case errors.Is(err, endpoint.ErrNotFound):
		code = api.CodeNotFound
	case errors.Is(err, endpoint.ErrConflict), errors.Is(err, ipam.ErrTaken):
		code = api.CodeConflict
	case errors.Is(err, ipam.ErrExhausted):
		code = api.CodeExhausted
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		code = api.CodeUnavailable
	}
	return &api.Error{Code: code, Message: err.Error()}
}

// Status implements api.Backend.
func (a *Agent) Status(ctx context.Context) api.Status {
	st := api.Status{
		NodeName: a.cfg.NodeName, Version: Version, StartedAt: a.startedAt,
		PodCIDR: a.pool, RouterIP: a.router, StateDir: a.cfg.StateDir, SocketPath: a.cfg.SocketPath,
		Endpoints: a.eps.Count(),
		Policy:    a.policy.status(),
		Services:  a.services.status(),
		Kvstore:   api.KvstoreStatus{Mode: a.kv.Mode(), Endpoints: a.kv.Endpoints(), Healthy: true},
		Datapath:  api.DatapathStatus{PinDir: a.cfg.PinDir(), EndpointMapSize: a.dp.EndpointMapCapacity(), HostDevice: link.HostDevice},
		IPAM:      api.IPAMStatus{Pool: a.alloc.Pool(), Allocated: len(a.alloc.Allocations()), Capacity: a.alloc.Capacity()},
	}
	if err := a.kv.Healthy(ctx); err != nil {
		st.Kvstore.Healthy = false
		st.Kvstore.Message = err.Error()
	}
	if entries, err := a.dp.ListEndpoints(); err == nil {
		st.Datapath.EndpointEntries = len(entries)
	}
	if us, err := (metricsSource{a}).MapUsage(); err == nil {
		for _, u := range us {
			st.Datapath.Maps = append(st.Datapath.Maps, api.MapUsage{Name: u.Name, Entries: u.Entries, Capacity: u.Capacity})
		}
	}
	if lvl, err := a.dp.MonitorLevel(); err == nil {
		st.Datapath.MonitorLevel = lvl.String()
	}
	st.Datapath.EventsLost, _ = a.dp.EventsLost()
	st.Datapath.FlowsSeen = metricsSource{a}.FlowsSeen()
	return st
}

// Endpoints implements api.Backend.
func (a *Agent) Endpoints(context.Context) []api.Endpoint { return a.eps.List() }

// Endpoint implements api.Backend.
func (a *Agent) Endpoint(_ context.Context, ref string) (api.Endpoint, error) {
	ep, err := a.eps.Get(ref)
	return ep, apiError(err)
}

// PatchEndpoint implements api.Backend.
func (a *Agent) PatchEndpoint(ctx context.Context, ref string, p api.EndpointPatch) (api.Endpoint, error) {
	ep, err := a.eps.Patch(ref, p)
	if err != nil {
		return ep, apiError(err)
	}
	// New labels may mean a new identity and different policy.
	if err := a.policy.regenerate(ctx); err != nil {
		return ep, apiError(fmt.Errorf("labels stored, but policy recomputation failed: %w", err))
	}
	return a.eps.Get(strconv.Itoa(int(ep.ID)))
}

// CNIAdd implements api.Backend.
func (a *Agent) CNIAdd(ctx context.Context, r api.CNIAddRequest) (_ api.CNIAddResponse, retErr error) {
	start := time.Now()
	defer func() {
		outcome := "ok"
		if retErr != nil {
			outcome = "error"
		}
		a.metrics.CNIAdd.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	}()
	resp, err := a.eps.Add(ctx, r)
	if err != nil {
		return resp, apiError(err)
	}
	// Answer only once the new endpoint has its identity and policy.
	if err := a.policy.regenerate(ctx); err != nil {
		a.log.Error("policy after ADD; the endpoint stays fail-closed", "container", r.ContainerID, "err", err)
	}
	resp.Endpoint, _ = a.eps.Get(strconv.Itoa(int(resp.Endpoint.ID)))
	return resp, nil
}

// CNIDel implements api.Backend.
func (a *Agent) CNIDel(ctx context.Context, r api.CNIDelRequest) error {
	if err := a.eps.Del(ctx, r); err != nil {
		return apiError(err)
	}
	if err := a.policy.regenerate(ctx); err != nil {
		a.log.Error("policy after DEL", "container", r.ContainerID, "err", err)
	}
	return nil
}

// CNICheck implements api.Backend.
func (a *Agent) CNICheck(ctx context.Context, r api.CNICheckRequest) error {
	return apiError(a.eps.Check(ctx, r))
}

// CNIGC implements api.Backend.
func (a *Agent) CNIGC(ctx context.Context, r api.CNIGCRequest) (api.CNIGCResponse, error) {
	out, err := a.eps.GC(ctx, r)
	if rerr := a.policy.regenerate(ctx); rerr != nil {
		a.log.Error("policy after GC", "err", rerr)
	}
	return out, apiError(err)
}

// CNIStatus implements api.Backend: ready when the kvstore answers and the
// pool has room.
func (a *Agent) CNIStatus(ctx context.Context) error {
	if err := a.kv.Healthy(ctx); err != nil {
		return &api.Error{Code: api.CodeUnavailable, Message: "kvstore not healthy: " + err.Error()}
	}
	if n := len(a.alloc.Allocations()); n >= a.alloc.Capacity() {
		return &api.Error{Code: api.CodeExhausted, Message: "address pool " + a.alloc.Pool().String() + " is exhausted"}
	}
	return nil
}

// BPFEndpoints implements api.Backend.
func (a *Agent) BPFEndpoints(context.Context) ([]api.BPFEndpointEntry, error) {
	entries, err := a.dp.ListEndpoints()
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.BPFEndpointEntry, 0, len(entries))
	for _, e := range entries {
		out = append(out, api.BPFEndpointEntry{IP: e.IP, IfIndex: e.IfIndex, PodMAC: e.PodMAC.String(),
			HostMAC: e.HostMAC.String(), EndpointID: e.EndpointID, Flags: e.Flags, Identity: e.Identity})
	}
	return out, nil
}

// BPFPolicy implements api.Backend.
func (a *Agent) BPFPolicy(_ context.Context, ref string) (api.BPFPolicy, error) {
	ep, err := a.eps.Get(ref)
	if err != nil {
		return api.BPFPolicy{}, apiError(err)
	}
	entries, err := a.dp.EndpointPolicy(ep.ID)
	if err != nil {
		return api.BPFPolicy{}, apiError(err)
	}
	_, res := a.policy.snapshot()
	out := api.BPFPolicy{Endpoint: ep.ID, Identity: ep.Identity, IngressEnforced: ep.IngressEnforced, EgressEnforced: ep.EgressEnforced}
	for k, v := range entries {
		e := api.BPFPolicyEntry{Direction: "ingress", Identity: k.Identity, Protocol: "ANY", Ports: "*", Verdict: "allow", Cookie: v.Cookie}
		if k.Egress {
			e.Direction = "egress"
		}
		if k.Proto != 0 {
			e.Protocol = policy.ProtoName(k.Proto)
		}
		if k.PortPrefixLen > 0 {
			span := uint32(1) << (16 - uint32(k.PortPrefixLen))
			if span == 1 {
				e.Ports = strconv.Itoa(int(k.Port))
			} else {
				e.Ports = fmt.Sprintf("%d-%d", k.Port, uint32(k.Port)+span-1)
			}
		}
		if v.Deny {
			e.Verdict = "deny"
		}
		if r := res.Rule(v.Cookie); r != nil {
			e.Rule = r.String()
		} else if v.Cookie == 0 {
			e.Rule = "implicit: host may reach its pods"
		}
		out.Entries = append(out.Entries, e)
	}
	sort.Slice(out.Entries, func(i, j int) bool {
		x, y := out.Entries[i], out.Entries[j]
		if x.Direction != y.Direction {
			return x.Direction < y.Direction
		}
		if x.Identity != y.Identity {
			return x.Identity < y.Identity
		}
		if x.Protocol != y.Protocol {
			return x.Protocol < y.Protocol
		}
		return x.Ports < y.Ports
	})
	return out, nil
}

// BPFIPCache implements api.Backend.
func (a *Agent) BPFIPCache(context.Context) ([]api.BPFIPCacheEntry, error) {
	entries, err := a.dp.ListIPCache()
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.BPFIPCacheEntry, len(entries))
	for i, e := range entries {
		out[i] = api.BPFIPCacheEntry{Prefix: e.Prefix, Identity: e.Identity, CIDRIdentity: e.CIDRIdentity}
	}
	return out, nil
}

// BPFCT implements api.Backend.
func (a *Agent) BPFCT(context.Context) ([]api.BPFCTEntry, error) {
	entries, err := a.dp.ListCT()
	if err != nil {
		return nil, apiError(err)
	}
	out := make([]api.BPFCTEntry, len(entries))
	for i, e := range entries {
		proto := policy.ProtoName(e.Proto)
		if e.Proto == 1 {
			proto = "ICMP"
		}
		out[i] = api.BPFCTEntry{Protocol: proto, Src: e.Src, Dst: e.Dst, ExpiresIn: e.Expires, SeenReply: e.SeenReply,
			Closing: e.Closing, SrcIdentity: e.SrcIdentity, Packets: e.Packets, Bytes: e.Bytes}
	}
	return out, nil
}

// BPFCTFlush implements api.Backend.
func (a *Agent) BPFCTFlush(context.Context) (int, error) {
	n, err := a.dp.FlushCT()
	return n, apiError(err)
}
