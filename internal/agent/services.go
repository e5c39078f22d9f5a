package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/service"
)

// serviceEngine turns the resolved frontends of the cluster's services
// into the load-balancing maps. It keeps backend ids and service-port
// (reverse-NAT) ids stable across recomputations and agent restarts (they
// are read back from the pinned maps at the first sync), so connections,
// affinity entries and Maglev tables survive both.
type serviceEngine struct {
	a *Agent

	mu          sync.Mutex
	loaded      bool
	backendIDs  map[backendKey]uint32
	nextBackend uint32
	backends    map[uint32]loader.LBBackend // as written
	revNats     map[frontendKey]uint16
	usedRevNat  map[uint16]bool
	nextRevNat  uint16
	applied     map[frontendKey]appliedFrontend
	result      service.Result
	lastErr     error
	lastSync    time.Time
	lastDur     time.Duration
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
	return &serviceEngine{a: a, backendIDs: map[backendKey]uint32{}, backends: map[uint32]loader.LBBackend{},
		revNats: map[frontendKey]uint16{}, usedRevNat: map[uint16]bool{}, applied: map[frontendKey]appliedFrontend{},
		nextBackend: 1, nextRevNat: 1}
}

// loadExisting reads what a previous run left in the pinned maps, so that
// ids stay the same and stale entries are found.
func (s *serviceEngine) loadExisting() error {
	svcs, backends, err := s.a.dp.ListLB()
	if err != nil {
		return err
	}
	for id, b := range backends {
		s.backendIDs[backendKey{b.Addr, b.Proto}] = id
		s.backends[id] = b
		s.nextBackend = max(s.nextBackend, id+1)
	}
	for _, e := range svcs {
		k := frontendKey{e.Frontend, e.Proto}
		s.revNats[k] = e.RevNatID
		s.usedRevNat[e.RevNatID] = true
		s.applied[k] = appliedFrontend{svc: e.LBService, slots: len(e.Backends)}
	}
	return nil
}

func (s *serviceEngine) backendID(k backendKey) (uint32, error) {
	if id, ok := s.backendIDs[k]; ok {
		return id, nil
	}
	for range 1 << 20 {
		id := s.nextBackend
		s.nextBackend++
		if s.nextBackend == 0 {
			s.nextBackend = 1
		}
		if _, taken := s.backends[id]; !taken && id != 0 {
			s.backendIDs[k] = id
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free backend id for %s", k.addr)
}

func (s *serviceEngine) revNatID(k frontendKey) (uint16, error) {
	if id, ok := s.revNats[k]; ok {
		return id, nil
	}
	for range 1 << 16 {
		id := s.nextRevNat
		s.nextRevNat++
		if s.nextRevNat == 0 {
			s.nextRevNat = 1
		}
		if id != 0 && !s.usedRevNat[id] {
			s.revNats[k] = id
			s.usedRevNat[id] = true
			return id, nil
		}
	}
	return 0, fmt.Errorf("all 65535 service port ids are in use (frontend %s)", k.addr)
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
			id, err := s.backendID(k)
			if err != nil {
				return err
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
		rn, err := s.revNatID(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		lb := loader.LBService{Frontend: k.addr, Proto: fe.Proto, RevNatID: rn}
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
			id := s.backendIDs[backendKey{netip.AddrPortFrom(b.Addr, b.Port), b.Proto}]
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
		delete(s.usedRevNat, s.revNats[k])
		delete(s.revNats, k)
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
		delete(s.backendIDs, backendKey{b.Addr, b.Proto})
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
	if a.Frontend != b.Frontend || a.Proto != b.Proto || a.RevNatID != b.RevNatID || a.Flags != b.Flags ||
		a.AffinityTimeout != b.AffinityTimeout || len(a.Backends) != len(b.Backends) || len(a.Maglev) != len(b.Maglev) {
		return false
	}
	for i := range a.Backends {
		if a.Backends[i] != b.Backends[i] {
			return false
		}
	}
	for i := range a.Maglev {
		if a.Maglev[i] != b.Maglev[i] {
			return false
		}
	}
	return true
}

// servicePods is what Resolve needs of the local endpoints and the remote
// pods the cluster sync knows.
func (a *Agent) servicePods(eps []api.Endpoint) []service.Pod {
	pods := make([]service.Pod, 0, len(eps))
	for _, ep := range eps {
		pods = append(pods, service.Pod{IP: ep.IPv4, Namespace: ep.Namespace, Name: ep.Name, Node: a.cfg.NodeName,
			Labels: ep.Labels, NamedPorts: ep.Ports, Ready: ep.Readiness != api.ReadinessNotReady && ep.Readiness != api.ReadinessTerminating,
			Terminating: ep.Readiness == api.ReadinessTerminating})
	}
	if a.clusterSync != nil {
		pods = append(pods, a.clusterSync.remotePods()...)
	}
	return pods
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
		out := api.ServiceFrontend{Kind: string(fe.Kind), Address: k.addr, Protocol: protoName(fe.Proto), PortName: fe.PortName,
			Algorithm: string(fe.Algorithm), AffinityTimeout: fe.AffinityTimeout, RevNatID: a.services.revNats[k]}
		for _, b := range fe.Backends {
			out.Backends = append(out.Backends, api.ServiceBackend{Address: netip.AddrPortFrom(b.Addr, b.Port), Node: b.Node, Pod: b.Pod,
				State: backendState(b).String(), ID: a.services.backendIDs[backendKey{netip.AddrPortFrom(b.Addr, b.Port), b.Proto}]})
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

func protoName(p uint8) string {
	switch p {
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	}
	return fmt.Sprintf("proto-%d", p)
}

// BPFLB implements api.Backend: the load-balancing maps as they are.
func (a *Agent) BPFLB(context.Context) (api.BPFLB, error) {
	svcs, backends, err := a.dp.ListLB()
	if err != nil {
		return api.BPFLB{}, &api.Error{Code: api.CodeInternal, Message: err.Error()}
	}
	var out api.BPFLB
	for _, s := range svcs {
		e := api.BPFLBService{Frontend: s.Frontend, Protocol: protoName(s.Proto), RevNatID: s.RevNatID, Backends: s.Backends,
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
		out.Backends = append(out.Backends, api.BPFLBBackend{ID: id, Address: b.Addr, Protocol: protoName(b.Proto), State: b.State.String()})
	}
	return out, nil
}
