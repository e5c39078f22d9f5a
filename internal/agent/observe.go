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
	"github.com/membrane-net/membrane/internal/metrics"
	"github.com/membrane-net/membrane/internal/monitor"
)

// observer reads datapath events, keeps enriched flows and fans raw events
// out to `membrane monitor` followers.
type observer struct {
	a      *Agent
	flows  *monitor.Store
	reader *loader.EventReader

	mu      sync.Mutex
	rawSubs map[int]chan loader.Event
	nextSub int
	seen    uint64
}

func newObserver(a *Agent, capacity int) *observer {
	return &observer{a: a, flows: monitor.NewStore(capacity), rawSubs: map[int]chan loader.Event{}}
}

// run reads events until the reader is closed.
func (o *observer) run() {
	for {
		ev, err := o.reader.Read()
		if err != nil {
			if errors.Is(err, loader.ErrEventsClosed) {
				return
			}
			o.a.log.Warn("read datapath event", "err", err)
			continue
		}
		o.mu.Lock()
		o.seen++
		for _, ch := range o.rawSubs {
			select {
			case ch <- ev:
			default:
			}
		}
		o.mu.Unlock()
		o.flows.Add(monitor.Enrich(toMonitorEvent(ev), o))
	}
}

func toMonitorEvent(e loader.Event) monitor.Event {
	out := monitor.Event{
		Time: e.Time, Type: e.Type.String(), ObsPoint: e.ObsPoint.String(), Dropped: e.Dropped, Egress: e.Egress,
		PolicyEvent: e.Type == loader.EventPolicyVerdict || e.Dropped, Proto: e.Proto, TCPFlags: e.TCPFlags,
		SrcEP: e.SrcEP, DstEP: e.DstEP, SrcIdentity: e.SrcIdentity, DstIdentity: e.DstIdentity, Cookie: e.Cookie,
		IfIndex: e.IfIndex, Len: e.Len, Src: e.Src, Dst: e.Dst, CTState: e.CTState.String(),
	}
	if e.Dropped || e.Reason != 0 {
		out.Reason = e.Reason.Code()
	}
	out.NoRule = e.Reason == loader.DropPolicyNoRule
	return out
}

// EndpointByID implements monitor.Enricher.
func (o *observer) EndpointByID(id uint16) (api.Endpoint, bool) {
	ep, err := o.a.eps.Get(fmt.Sprint(id))
	return ep, err == nil && ep.ID == id
}

// EndpointByIP implements monitor.Enricher.
func (o *observer) EndpointByIP(ip netip.Addr) (api.Endpoint, bool) {
	ep, err := o.a.eps.Get(ip.String())
	return ep, err == nil
}

// IdentityLabels implements monitor.Enricher.
func (o *observer) IdentityLabels(id uint32) map[string]string {
	in, _ := o.a.policy.snapshot()
	for _, i := range in.Identities {
		if i.ID == id {
			return i.Labels.Map()
		}
	}
	for _, c := range in.CIDRIdentities {
		if c.ID == id {
			return map[string]string{"cidr:" + c.Prefix.String(): ""}
		}
	}
	if id >= 1 && id <= 6 {
		return map[string]string{"reserved:" + [...]string{"", "host", "world", "unmanaged", "health", "init", "remote-node"}[id]: ""}
	}
	return nil
}

// Isolating implements monitor.Enricher.
func (o *observer) Isolating(ep uint16, egress bool) []string {
	_, res := o.a.policy.snapshot()
	pol := res.Endpoints[ep]
	if egress {
		return pol.EgressPolicies
	}
	return pol.IngressPolicies
}

// Rule implements monitor.Enricher.
func (o *observer) Rule(cookie uint32) (string, string, bool) {
	_, res := o.a.policy.snapshot()
	r := res.Rule(cookie)
	if r == nil {
		return "", "", false
	}
	return strings.ToLower(r.Kind) + " " + r.Namespace + "/" + r.Name, r.String(), true
}

// Flows implements api.Backend.
func (a *Agent) Flows(ctx context.Context, q api.FlowQuery, emit func(api.Flow) error) error {
	f, err := monitor.Compile(q)
	if err != nil {
		return &api.Error{Code: api.CodeInvalid, Message: err.Error()}
	}
	var ch <-chan api.Flow
	var cancel func() uint64
	if q.Follow {
		// Subscribe before reading history so nothing falls in between.
		ch, cancel = a.obs.flows.Subscribe(f, 4096)
		defer cancel()
	}
	last := q.Last
	if last == 0 && !q.Follow {
		last = 100
	}
	if last > 0 || !q.Follow {
		for _, fl := range a.obs.flows.Query(f, last) {
			if err := emit(fl); err != nil {
				return err
			}
		}
	}
	if !q.Follow {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case fl, ok := <-ch:
			if !ok {
				return nil
			}
			if err := emit(fl); err != nil {
				return err
			}
		}
	}
}

// Monitor implements api.Backend: raw events, as decoded, until ctx ends.
func (a *Agent) Monitor(ctx context.Context, emit func(any) error) error {
	ch := make(chan loader.Event, 4096)
	a.obs.mu.Lock()
	id := a.obs.nextSub
	a.obs.nextSub++
	a.obs.rawSubs[id] = ch
	a.obs.mu.Unlock()
	defer func() {
		a.obs.mu.Lock()
		delete(a.obs.rawSubs, id)
		a.obs.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-ch:
			raw := map[string]any{
				"time": ev.Time.Format(time.RFC3339Nano), "type": ev.Type.String(), "reason": ev.Reason.String(),
				"reasonCode": ev.Reason.Code(), "obsPoint": ev.ObsPoint.String(), "dropped": ev.Dropped, "egress": ev.Egress, "proto": ev.Proto,
				"tcpFlags": ev.TCPFlags, "srcEP": ev.SrcEP, "dstEP": ev.DstEP, "srcIdentity": ev.SrcIdentity,
				"dstIdentity": ev.DstIdentity, "cookie": ev.Cookie, "ifindex": ev.IfIndex, "len": ev.Len,
				"src": ev.Src.String(), "dst": ev.Dst.String(), "ctState": ev.CTState.String(),
			}
			if err := emit(raw); err != nil {
				return err
			}
		}
	}
}

// metricsSource adapts the agent to metrics.Source.
type metricsSource struct{ a *Agent }

func (s metricsSource) DatapathCounters() ([]metrics.DatapathCounter, error) {
	m, err := s.a.dp.Metrics()
	if err != nil {
		return nil, err
	}
	out := make([]metrics.DatapathCounter, 0, len(m))
	for k, v := range m {
		reason := k.Reason.Code()
		out = append(out, metrics.DatapathCounter{Reason: reason, Egress: k.Egress, Packets: v.Packets, Bytes: v.Bytes})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Reason != out[j].Reason {
			return out[i].Reason < out[j].Reason
		}
		return !out[i].Egress && out[j].Egress
	})
	return out, nil
}

func (s metricsSource) MapUsage() ([]metrics.MapUsage, error) {
	us, err := s.a.dp.MapPressure()
	if err != nil {
		return nil, err
	}
	out := make([]metrics.MapUsage, len(us))
	for i, u := range us {
		out[i] = metrics.MapUsage{Name: u.Name, Entries: int(u.Entries), Capacity: int(u.Capacity)}
	}
	return out, nil
}

func (s metricsSource) Endpoints() int { return s.a.eps.Count() }
func (s metricsSource) Identities() int {
	in, _ := s.a.policy.snapshot()
	return len(in.Identities) + len(in.CIDRIdentities)
}
func (s metricsSource) PolicyRevision() uint64      { return s.a.policy.status().Revision }
func (s metricsSource) EventsLost() (uint64, error) { return s.a.dp.EventsLost() }
func (s metricsSource) FlowsSeen() uint64 {
	s.a.obs.mu.Lock()
	defer s.a.obs.mu.Unlock()
	return s.a.obs.seen
}
