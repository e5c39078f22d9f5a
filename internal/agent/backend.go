package agent

import (
	"context"
	"errors"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/link"
	"github.com/membrane-net/membrane/internal/endpoint"
	"github.com/membrane-net/membrane/internal/ipam"
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
func (a *Agent) PatchEndpoint(_ context.Context, ref string, p api.EndpointPatch) (api.Endpoint, error) {
	ep, err := a.eps.Patch(ref, p)
	return ep, apiError(err)
}

// CNIAdd implements api.Backend.
func (a *Agent) CNIAdd(ctx context.Context, r api.CNIAddRequest) (api.CNIAddResponse, error) {
	resp, err := a.eps.Add(ctx, r)
	return resp, apiError(err)
}

// CNIDel implements api.Backend.
func (a *Agent) CNIDel(ctx context.Context, r api.CNIDelRequest) error {
	return apiError(a.eps.Del(ctx, r))
}

// CNICheck implements api.Backend.
func (a *Agent) CNICheck(ctx context.Context, r api.CNICheckRequest) error {
	return apiError(a.eps.Check(ctx, r))
}

// CNIGC implements api.Backend.
func (a *Agent) CNIGC(ctx context.Context, r api.CNIGCRequest) (api.CNIGCResponse, error) {
	out, err := a.eps.GC(ctx, r)
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
			HostMAC: e.HostMAC.String(), EndpointID: e.EndpointID, Flags: e.Flags})
	}
	return out, nil
}
