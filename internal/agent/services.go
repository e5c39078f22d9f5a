package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/policy"
	"github.com/membrane-net/membrane/internal/service"
)

// serviceEngine turns the resolved frontends of the cluster's services
// into the load-balancing maps. It keeps backend ids and service-port
// (reverse-NAT) ids stable across recomputations and agent restarts (they
// are read back from the pinned maps at the first sync), so connections,
// affinity entries and Maglev tables survive both.
type serviceEngine struct {
	a *Agent

	mu         sync.Mutex
	loaded     bool
	backendIDs *idPool[backendKey]         // backend id per backend (1..2^32-1)
	backends   map[uint32]loader.LBBackend // as written
	revNats    *idPool[frontendKey]        // service port id per frontend (1..65535)
	applied    map[frontendKey]appliedFrontend
	result     service.Result
	lastErr    error
	lastSync   time.Time
	lastDur    time.Duration
}

type backendKey struct {
	addr  netip.AddrPort
	proto uint8
}

type frontendKey struct {
	addr  netip.AddrPort
	proto uint8
}

type appliedFrontend struct {
	svc   loader.LBService
	slots int
}

func newServiceEngine(a *Agent) *serviceEngine {
	return &serviceEngine{a: a, backendIDs: newIDPool[backendKey](1<<32 - 1), backends: map[uint32]loader.LBBackend{},
		revNats: newIDPool[frontendKey](1<<16 - 1), applied: map[frontendKey]appliedFrontend{}}
}

// idPool hands out ids 1..max to keys; a key keeps its id until released.
// Ids are handed out round-robin, so a released id is reused last.
type idPool[K comparable] struct {
	ids  map[K]uint32
	used map[uint32]bool
	next uint32
	max  uint32
}

func newIDPool[K comparable](max uint32) *idPool[K] {
	return &idPool[K]{ids: map[K]uint32{}, used: map[uint32]bool{}, next: 1, max: max}
}

// lookup returns k's id, 0 if it has none.
func (p *idPool[K]) lookup(k K) uint32 { return p.ids[k] }

// set records that k holds id (read back from the pinned maps).
func (p *idPool[K]) set(k K, id uint32) {
	p.ids[k], p.used[id] = id, true
	if id >= p.next && id < p.max {
		p.next = id + 1
	}
}

// get returns k's id, giving it a free one if it has none.
func (p *idPool[K]) get(k K) (uint32, bool) {
	if id, ok := p.ids[k]; ok {
		return id, true
	}
	if uint64(len(p.used)) >= uint64(p.max) {
		return 0, false
	}
	for p.used[p.next] {
		p.next = p.next%p.max + 1
	}
	id := p.next
	p.next = p.next%p.max + 1
	p.set(k, id)
	return id, true
}

func (p *idPool[K]) release(k K) {
	if id, ok := p.ids[k]; ok {
		delete(p.used, id)
		delete(p.ids, k)
	}
}

// loadExisting reads what a previous run left in the pinned maps, so that
// ids stay the same and stale entries are found.
func (s *serviceEngine) loadExisting() error {
	svcs, backends, err := s.a.dp.ListLB()
	if err != nil {
		return err
	}
	for id, b := range backends {
		s.backendIDs.set(backendKey{b.Addr, b.Proto}, id)
		s.backends[id] = b
	}
	for _, e := range svcs {
		k := frontendKey{e.Frontend, e.Proto}
		s.revNats.set(k, uint32(e.RevNatID))
		s.applied[k] = appliedFrontend{svc: e.LBService, slots: len(e.Backends)}
	}
	return nil
}

func backendState(b service.Backend) loader.BackendState {
	switch {
	case b.Terminating:
		return loader.BackendTerminating
	case !b.Ready:
		return loader.BackendNotReady
	}
	return loader.BackendActive
}

// sync resolves in and applies the difference to the datapath. Order:
// backends first, then service ports, then what is gone, so no reader
// ever finds a slot whose backend does not exist.
func (s *serviceEngine) sync(in service.Input) (retErr error) {
	start := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	defer func() {
		s.lastErr, s.lastSync, s.lastDur = retErr, time.Now(), time.Since(start)
	}()
	if !s.loaded {
		if err := s.loadExisting(); err != nil {
			return fmt.Errorf("read load-balancing maps: %w", err)
		}
		s.loaded = true
	}
	res := service.Resolve(in)
	m := int(s.a.cfg.LBMaglevSize)

	// 1. Backends.
	wantBackends := map[uint32]loader.LBBackend{}
	var errs []error
	for _, fe := range res.Frontends {
		for _, b := range fe.Backends {
			k := backendKey{netip.AddrPortFrom(b.Addr, b.Port), b.Proto}
			id, ok := s.backendIDs.get(k)
			if !ok {
				return fmt.Errorf("no free backend id for %s", k.addr)
			}
			lb := loader.LBBackend{Addr: k.addr, Proto: b.Proto, State: backendState(b)}
			if cur, ok := wantBackends[id]; ok && cur.State < lb.State {
				lb.State = cur.State // active for one service port is active
			}
			wantBackends[id] = lb
		}
	}
	for id, b := range wantBackends {
		if cur, ok := s.backends[id]; ok && cur == b {
			continue
		}
		if err := s.a.dp.UpsertLBBackend(id, b); err != nil {
			errs = append(errs, err)
			continue
		}
		s.backends[id] = b
	}

	// 2. Service ports.
	wantFE := map[frontendKey]bool{}
	for _, fe := range res.Frontends {
		k := frontendKey{netip.AddrPortFrom(fe.Addr, fe.Port), fe.Proto}
		wantFE[k] = true
		rn, ok := s.revNats.get(k)
		if !ok {
			errs = append(errs, fmt.Errorf("all 65535 service port ids are in use (frontend %s)", k.addr))
			continue
		}
		lb := loader.LBService{Frontend: k.addr, Proto: fe.Proto, RevNatID: uint16(rn)}
		if fe.Kind == service.NodePort {
			lb.Flags |= loader.LBFlagNodePort
		}
		if fe.AffinityTimeout > 0 {
			lb.Flags |= loader.LBFlagAffinity
			lb.AffinityTimeout = uint32(fe.AffinityTimeout / time.Second)
		}
		var names []string
		var active []uint32
		for _, b := range fe.Backends {
			if backendState(b) != loader.BackendActive {
				continue
			}
			id := s.backendIDs.lookup(backendKey{netip.AddrPortFrom(b.Addr, b.Port), b.Proto})
			active = append(active, id)
			names = append(names, b.Key())
		}
		lb.Backends = active
		if fe.Algorithm == service.AlgMaglev && len(active) > 0 {
			idx, err := service.Maglev(names, m)
			if err != nil {
				errs = append(errs, fmt.Errorf("service %s %s: %w", fe.Service, k.addr, err))
				continue
			}
			lb.Flags |= loader.LBFlagMaglev
			lb.Maglev = make([]uint32, len(idx))
			for i, j := range idx {
				lb.Maglev[i] = active[j]
			}
		}
		prev, had := s.applied[k]
		if had && sameLBService(prev.svc, lb) {
			continue
		}
		if err := s.a.dp.UpsertLBService(lb, prev.slots); err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", fe.Service, err))
			continue
		}
		s.applied[k] = appliedFrontend{svc: lb, slots: len(lb.Backends)}
	}

	// 3. Service ports and backends that are gone.
	for k, prev := range s.applied {
		if wantFE[k] {
			continue
		}
		if err := s.a.dp.DeleteLBService(k.addr, k.proto, prev.svc.RevNatID, prev.slots); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(s.applied, k)
		s.revNats.release(k)
	}
	for id, b := range s.backends {
		if _, ok := wantBackends[id]; ok {
			continue
		}
		if err := s.a.dp.DeleteLBBackend(id); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(s.backends, id)
		s.backendIDs.release(backendKey{b.Addr, b.Proto})
	}
	s.result = res
	for _, w := range res.Warnings {
		s.a.log.Warn("service", "warning", w)
	}
	return errors.Join(errs...)
}

func (s *serviceEngine) status() api.ServiceStatus {
	if s == nil {
		return api.ServiceStatus{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := api.ServiceStatus{Frontends: len(s.applied), Backends: len(s.backends), LastSync: s.lastSync,
		LastDuration: s.lastDur, Warnings: s.result.Warnings}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
	}
	return st
}

func sameLBService(a, b loader.LBService) bool {
	return a.Frontend == b.Frontend && a.Proto == b.Proto && a.RevNatID == b.RevNatID && a.Flags == b.Flags &&
		a.AffinityTimeout == b.AffinityTimeout && slices.Equal(a.Backends, b.Backends) && slices.Equal(a.Maglev, b.Maglev)
}

// servicePods is what Resolve needs of the local endpoints and the remote
// pods the cluster sync knows.
func (a *Agent) servicePods(eps []api.Endpoint) []service.Pod {
	pods := make([]service.Pod, 0, len(eps))
	for _, ep := range eps {
		pods = append(pods, service.Pod{IP: ep.IPv4, Namespace: ep.Namespace, Name: ep.Name, Node: a.cfg.NodeName,
			Labels: ep.Labels, NamedPorts: ep.Ports, Ready: readyFor(ep.Readiness), Terminating: ep.Readiness == api.ReadinessTerminating})
	}
	if a.clusterSync != nil {
		pods = append(pods, a.clusterSync.remotePods()...)
	}
	return pods
}

// readyFor says whether an endpoint's readiness (api.Endpoint.Readiness,
// as published) takes new service connections.
func readyFor(readiness string) bool {
	return readiness == "" || readiness == api.ReadinessReady
}

// Services implements api.Backend: the frontends of every service with
// their backends, as this node realises them.
func (a *Agent) Services(_ context.Context) ([]api.Service, error) {
	a.services.mu.Lock()
	defer a.services.mu.Unlock()
	byName := map[string]*api.Service{}
	var order []string
	for _, fe := range a.services.result.Frontends {
		svc := byName[fe.Service]
		if svc == nil {
			svc = &api.Service{Name: fe.Service}
			byName[fe.Service] = svc
			order = append(order, fe.Service)
		}
		k := frontendKey{netip.AddrPortFrom(fe.Addr, fe.Port), fe.Proto}
		out := api.ServiceFrontend{Kind: string(fe.Kind), Address: k.addr, Protocol: policy.ProtoName(fe.Proto), PortName: fe.PortName,
			Algorithm: string(fe.Algorithm), AffinityTimeout: fe.AffinityTimeout, RevNatID: uint16(a.services.revNats.lookup(k))}
		for _, b := range fe.Backends {
			out.Backends = append(out.Backends, api.ServiceBackend{Address: netip.AddrPortFrom(b.Addr, b.Port), Node: b.Node, Pod: b.Pod,
				State: backendState(b).String(), ID: a.services.backendIDs.lookup(backendKey{netip.AddrPortFrom(b.Addr, b.Port), b.Proto})})
		}
		svc.Frontends = append(svc.Frontends, out)
	}
	sort.Strings(order)
	res := make([]api.Service, 0, len(order))
	for _, n := range order {
		res = append(res, *byName[n])
	}
	return res, nil
}

// Service implements api.Backend: one service by "ns/name" or "name" (in
// namespace default).
func (a *Agent) Service(ctx context.Context, ref string) (api.Service, error) {
	all, err := a.Services(ctx)
	if err != nil {
		return api.Service{}, err
	}
	want := ref
	if !strings.Contains(ref, "/") {
		want = "default/" + ref
	}
	for _, s := range all {
		if s.Name == want {
			return s, nil
		}
	}
	return api.Service{}, &api.Error{Code: api.CodeNotFound, Message: fmt.Sprintf("service %q: no such service with a frontend on this node", ref)}
}

// BPFLB implements api.Backend: the load-balancing maps as they are.
func (a *Agent) BPFLB(context.Context) (api.BPFLB, error) {
	svcs, backends, err := a.dp.ListLB()
	if err != nil {
		return api.BPFLB{}, &api.Error{Code: api.CodeInternal, Message: err.Error()}
	}
	var out api.BPFLB
	for _, s := range svcs {
		e := api.BPFLBService{Frontend: s.Frontend, Protocol: policy.ProtoName(s.Proto), RevNatID: s.RevNatID, Backends: s.Backends,
			AffinityTimeout: s.AffinityTimeout, MaglevSlots: s.MaglevSlots}
		if s.Flags&loader.LBFlagNodePort != 0 {
			e.Flags = append(e.Flags, "nodeport")
		}
		if s.Flags&loader.LBFlagAffinity != 0 {
			e.Flags = append(e.Flags, "affinity")
		}
		if s.Flags&loader.LBFlagMaglev != 0 {
			e.Flags = append(e.Flags, "maglev")
		}
		out.Services = append(out.Services, e)
	}
	ids := make([]uint32, 0, len(backends))
	for id := range backends {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		b := backends[id]
		out.Backends = append(out.Backends, api.BPFLBBackend{ID: id, Address: b.Addr, Protocol: policy.ProtoName(b.Proto), State: b.State.String()})
	}
	return out, nil
}
