package monitor

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
)

// Event is a decoded datapath event (a mirror of the loader's, so that this
// package stays free of kernel imports).
type Event struct {
	Time                     time.Time
	Type                     string // drop, trace, policy-verdict
	Reason                   string // drop reason name, "" when forwarded
	ObsPoint                 string
	Dropped                  bool
	Egress                   bool
	PolicyEvent              bool // Egress is meaningful
	Proto                    uint8
	TCPFlags                 uint8
	SrcEP, DstEP             uint16
	SrcIdentity, DstIdentity uint32
	Cookie                   uint32
	IfIndex, Len             uint32
	Src, Dst                 netip.AddrPort
	CTState                  string
	// NoRule marks a policy verdict or drop where no rule matched in an
	// enforced direction; the flow then names the isolating policies.
	NoRule bool
}

// Enricher answers what the agent knows about endpoints, identities and
// rules. Implementations must be safe for concurrent use.
type Enricher interface {
	EndpointByID(id uint16) (api.Endpoint, bool)
	EndpointByIP(ip netip.Addr) (api.Endpoint, bool)
	IdentityLabels(id uint32) map[string]string
	// Rule returns the policy ("kind ns/name") and rule text of a cookie.
	Rule(cookie uint32) (policy, rule string, ok bool)
	// Isolating names the policies that enforce a direction of a local
	// endpoint.
	Isolating(ep uint16, egress bool) []string
}

// ProtoName names IP protocols.
func ProtoName(p uint8) string {
	switch p {
	case 1:
		return "ICMP"
	case 6:
		return "TCP"
	case 17:
		return "UDP"
	case 132:
		return "SCTP"
	case 58:
		return "ICMPv6"
	}
	return strconv.Itoa(int(p))
}

// TCPFlagString renders TCP flags like "SYN,ACK".
func TCPFlagString(f uint8) string {
	var parts []string
	for _, x := range []struct {
		bit  uint8
		name string
	}{{0x02, "SYN"}, {0x10, "ACK"}, {0x08, "PSH"}, {0x01, "FIN"}, {0x04, "RST"}, {0x20, "URG"}} {
		if f&x.bit != 0 {
			parts = append(parts, x.name)
		}
	}
	return strings.Join(parts, ",")
}

// Enrich turns an event into a flow.
func Enrich(e Event, en Enricher) api.Flow {
	f := api.Flow{
		Time: e.Time, Type: e.Type, Verdict: "FORWARDED", ObsPoint: e.ObsPoint, Protocol: ProtoName(e.Proto),
		Length: e.Len, IfIndex: e.IfIndex, Cookie: e.Cookie, CTState: e.CTState,
	}
	if e.Dropped {
		f.Verdict = "DROPPED"
		f.DropReason = e.Reason
	}
	if e.PolicyEvent || e.Dropped {
		f.Direction = "ingress"
		if e.Egress {
			f.Direction = "egress"
		}
	}
	if e.Proto == 6 {
		f.TCPFlags = TCPFlagString(e.TCPFlags)
	}
	f.Source = peer(e.Src, e.SrcEP, e.SrcIdentity, en)
	f.Dest = peer(e.Dst, e.DstEP, e.DstIdentity, en)
	if e.Cookie != 0 && en != nil {
		if p, r, ok := en.Rule(e.Cookie); ok {
			f.Policy, f.Rule = p, r
		}
	}
	if e.NoRule && e.Cookie == 0 && en != nil {
		ep := e.DstEP
		if e.Egress {
			ep = e.SrcEP
		}
		if pols := en.Isolating(ep, e.Egress); len(pols) > 0 {
			f.Policy = strings.Join(pols, ",")
			f.Rule = "no rule allows it; " + f.Direction + " isolated by " + f.Policy
		}
	}
	return f
}

func peer(ap netip.AddrPort, ep uint16, id uint32, en Enricher) api.FlowPeer {
	p := api.FlowPeer{IP: ap.Addr(), Port: ap.Port(), Identity: id, Endpoint: ep}
	if en == nil {
		return p
	}
	var e api.Endpoint
	var ok bool
	if ep != 0 {
		e, ok = en.EndpointByID(ep)
	}
	if !ok {
		e, ok = en.EndpointByIP(ap.Addr())
	}
	if ok {
		p.Endpoint, p.Namespace, p.Pod, p.Labels = e.ID, e.Namespace, e.Name, e.Labels
		if p.Identity == 0 {
			p.Identity = e.Identity
		}
		return p
	}
	p.Labels = en.IdentityLabels(id)
	return p
}

// Store keeps the newest flows in a ring and fans them out to followers.
type Store struct {
	mu     sync.Mutex
	ring   []api.Flow
	next   int
	full   bool
	total  uint64
	subs   map[int]*sub
	nextID int
}

type sub struct {
	f   *Filter
	ch  chan api.Flow
	lag uint64 // flows a slow follower missed
}

// NewStore returns a store for capacity flows (default 65536).
func NewStore(capacity int) *Store {
	if capacity <= 0 {
		capacity = 65536
	}
	return &Store{ring: make([]api.Flow, capacity), subs: map[int]*sub{}}
}

// Add records a flow and hands it to matching followers. A follower that
// does not keep up misses flows (counted) rather than blocking the reader.
func (s *Store) Add(f api.Flow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = f
	s.next = (s.next + 1) % len(s.ring)
	if s.next == 0 {
		s.full = true
	}
	s.total++
	for _, sb := range s.subs {
		if !sb.f.Match(&f) {
			continue
		}
		select {
		case sb.ch <- f:
		default:
			sb.lag++
		}
	}
}

// Stats reports how many flows were seen and are kept.
func (s *Store) Stats() (total uint64, kept, capacity int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	kept = s.next
	if s.full {
		kept = len(s.ring)
	}
	return s.total, kept, len(s.ring)
}

// Query returns up to last matching flows, oldest first.
func (s *Store) Query(f *Filter, last int) []api.Flow {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.next
	if s.full {
		n = len(s.ring)
	}
	var out []api.Flow
	// Walk newest to oldest, then reverse.
	for i := 0; i < n && (last <= 0 || len(out) < last); i++ {
		idx := (s.next - 1 - i + len(s.ring)) % len(s.ring)
		if f.Match(&s.ring[idx]) {
			out = append(out, s.ring[idx])
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Subscribe follows new matching flows until cancel is called.
func (s *Store) Subscribe(f *Filter, buffer int) (<-chan api.Flow, func() uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextID
	s.nextID++
	sb := &sub{f: f, ch: make(chan api.Flow, buffer)}
	s.subs[id] = sb
	return sb.ch, func() uint64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.subs[id]; ok {
			delete(s.subs, id)
			close(sb.ch)
		}
		return sb.lag
	}
}

// Filter is a compiled api.FlowQuery.
type Filter struct {
	from, to []peerMatch
	verdict  string
	protocol string
	typ      string
	port     uint16
	since    time.Time
}

type peerMatch func(p *api.FlowPeer) bool

// Compile checks a query and builds its filter.
func Compile(q api.FlowQuery) (*Filter, error) {
	f := &Filter{verdict: strings.ToUpper(q.Verdict), protocol: strings.ToUpper(q.Protocol), typ: strings.ToLower(q.Type), port: q.Port, since: q.Since}
	switch f.verdict {
	case "", "FORWARDED", "DROPPED":
	default:
		return nil, fmt.Errorf("verdict %q: want FORWARDED or DROPPED", q.Verdict)
	}
	switch f.typ {
	case "", "drop", "trace", "policy-verdict":
	default:
		return nil, fmt.Errorf("type %q: want drop, trace or policy-verdict", q.Type)
	}
	switch f.protocol {
	case "", "TCP", "UDP", "ICMP", "SCTP":
	default:
		return nil, fmt.Errorf("protocol %q: want TCP, UDP, ICMP or SCTP", q.Protocol)
	}
	for _, s := range q.From {
		m, err := compilePeer(s)
		if err != nil {
			return nil, fmt.Errorf("from %q: %w", s, err)
		}
		f.from = append(f.from, m)
	}
	for _, s := range q.To {
		m, err := compilePeer(s)
		if err != nil {
			return nil, fmt.Errorf("to %q: %w", s, err)
		}
		f.to = append(f.to, m)
	}
	return f, nil
}

func compilePeer(s string) (peerMatch, error) {
	switch {
	case s == "":
		return nil, fmt.Errorf("empty peer")
	case strings.HasPrefix(s, "ns:"):
		ns := s[3:]
		return func(p *api.FlowPeer) bool { return p.Namespace == ns }, nil
	case strings.HasPrefix(s, "id:"):
		n, err := strconv.ParseUint(s[3:], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("bad identity number")
		}
		return func(p *api.FlowPeer) bool { return uint64(p.Identity) == n }, nil
	case strings.Contains(s, "="):
		want := map[string]string{}
		for _, kv := range strings.Split(s, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return nil, fmt.Errorf("bad label %q: want k=v", kv)
			}
			want[k] = v
		}
		return func(p *api.FlowPeer) bool {
			for k, v := range want {
				if got, ok := p.Labels[k]; !ok || got != v {
					return false
				}
			}
			return true
		}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return func(p *api.FlowPeer) bool { return p.IP == a }, nil
	}
	if pfx, err := netip.ParsePrefix(s); err == nil {
		return func(p *api.FlowPeer) bool { return pfx.Contains(p.IP) }, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if ok {
		return func(p *api.FlowPeer) bool { return p.Namespace == ns && p.Pod == name }, nil
	}
	return func(p *api.FlowPeer) bool { return p.Pod == s }, nil
}

// Match reports whether a flow passes the filter.
func (f *Filter) Match(fl *api.Flow) bool {
	if f == nil {
		return true
	}
	if f.verdict != "" && fl.Verdict != f.verdict {
		return false
	}
	if f.protocol != "" && fl.Protocol != f.protocol {
		return false
	}
	if f.typ != "" && fl.Type != f.typ {
		return false
	}
	if f.port != 0 && fl.Source.Port != f.port && fl.Dest.Port != f.port {
		return false
	}
	if !f.since.IsZero() && fl.Time.Before(f.since) {
		return false
	}
	if len(f.from) > 0 && !anyMatch(f.from, &fl.Source) {
		return false
	}
	if len(f.to) > 0 && !anyMatch(f.to, &fl.Dest) {
		return false
	}
	return true
}

func anyMatch(ms []peerMatch, p *api.FlowPeer) bool {
	for _, m := range ms {
		if m(p) {
			return true
		}
	}
	return false
}
