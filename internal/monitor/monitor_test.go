package monitor

import (
	"bytes"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
)

var update = flag.Bool("update", false, "rewrite golden files")

type fakeEnricher struct{}

var eps = map[uint16]api.Endpoint{
	1: {ID: 1, Namespace: "shop", Name: "web", IPv4: netip.MustParseAddr("10.200.1.2"), Identity: 256, Labels: map[string]string{"app": "web"}},
	2: {ID: 2, Namespace: "shop", Name: "db", IPv4: netip.MustParseAddr("10.200.1.3"), Identity: 257, Labels: map[string]string{"app": "db"}},
	3: {ID: 3, Namespace: "tools", Name: "client", IPv4: netip.MustParseAddr("10.200.1.4"), Identity: 258, Labels: map[string]string{"app": "client"}},
}

func (fakeEnricher) EndpointByID(id uint16) (api.Endpoint, bool) { e, ok := eps[id]; return e, ok }
func (fakeEnricher) EndpointByIP(ip netip.Addr) (api.Endpoint, bool) {
	for _, e := range eps {
		if e.IPv4 == ip {
			return e, true
		}
	}
	return api.Endpoint{}, false
}
func (fakeEnricher) IdentityLabels(id uint32) map[string]string {
	if id == 1 {
		return map[string]string{"reserved:host": ""}
	}
	return nil
}
func (fakeEnricher) Isolating(ep uint16, egress bool) []string {
	if ep == 2 && !egress {
		return []string{"networkpolicy shop/db-from-web"}
	}
	return nil
}
func (fakeEnricher) Rule(c uint32) (string, string, bool) {
	if c == 7 {
		return "networkpolicy shop/db-from-web", "networkpolicy shop/db-from-web ingress[0]", true
	}
	return "", "", false
}

var t0 = time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)

func events() []Event {
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	return []Event{
		{Time: t0, Type: "policy-verdict", PolicyEvent: true, Proto: 6, TCPFlags: 0x02, SrcEP: 1, DstEP: 2, SrcIdentity: 256, DstIdentity: 257, Cookie: 7, Src: ap("10.200.1.2:40000"), Dst: ap("10.200.1.3:9090"), CTState: "new", Len: 60},
		{Time: t0.Add(time.Millisecond), Type: "trace", ObsPoint: "to-endpoint", Proto: 6, TCPFlags: 0x02, SrcEP: 1, DstEP: 2, SrcIdentity: 256, DstIdentity: 257, Src: ap("10.200.1.2:40000"), Dst: ap("10.200.1.3:9090"), CTState: "new", Len: 60},
		{Time: t0.Add(2 * time.Millisecond), Type: "drop", Dropped: true, Reason: "POLICY_NO_RULE", NoRule: true, PolicyEvent: true, Proto: 17, SrcEP: 3, DstEP: 2, SrcIdentity: 258, DstIdentity: 257, Src: ap("10.200.1.4:5353"), Dst: ap("10.200.1.3:8080"), CTState: "new", Len: 40},
		{Time: t0.Add(3 * time.Millisecond), Type: "trace", ObsPoint: "from-host", Proto: 1, DstEP: 3, SrcIdentity: 1, DstIdentity: 258, Src: ap("10.200.1.1:0"), Dst: ap("10.200.1.4:0"), Len: 84},
	}
}

func store(t *testing.T) *Store {
	s := NewStore(16)
	for _, e := range events() {
		s.Add(Enrich(e, fakeEnricher{}))
	}
	return s
}

func TestEnrich(t *testing.T) {
	f := Enrich(events()[0], fakeEnricher{})
	if f.Source.Pod != "web" || f.Dest.Namespace != "shop" || f.Policy != "networkpolicy shop/db-from-web" || f.TCPFlags != "SYN" || f.Verdict != "FORWARDED" || f.Direction != "ingress" {
		t.Errorf("enriched flow = %+v", f)
	}
	d := Enrich(events()[2], fakeEnricher{})
	if d.Verdict != "DROPPED" || d.DropReason != "POLICY_NO_RULE" || d.Protocol != "UDP" || d.Policy != "networkpolicy shop/db-from-web" {
		t.Errorf("drop flow = %+v", d)
	}
	h := Enrich(events()[3], fakeEnricher{})
	if h.Source.Labels["reserved:host"] != "" || h.Source.Pod != "" {
		t.Errorf("host peer = %+v", h.Source)
	}
}

func TestFilters(t *testing.T) {
	s := store(t)
	for _, tc := range []struct {
		name string
		q    api.FlowQuery
		want int
	}{
		{"all", api.FlowQuery{}, 4},
		{"dropped", api.FlowQuery{Verdict: "dropped"}, 1},
		{"forwarded", api.FlowQuery{Verdict: "FORWARDED"}, 3},
		{"from pod", api.FlowQuery{From: []string{"shop/web"}}, 2},
		{"from name only", api.FlowQuery{From: []string{"client"}}, 1},
		{"from namespace", api.FlowQuery{From: []string{"ns:tools"}}, 1},
		{"to label", api.FlowQuery{To: []string{"app=db"}}, 3},
		{"from identity", api.FlowQuery{From: []string{"id:1"}}, 1},
		{"from ip", api.FlowQuery{From: []string{"10.200.1.4"}}, 1},
		{"from cidr", api.FlowQuery{From: []string{"10.200.1.0/30"}}, 3},
		{"from OR", api.FlowQuery{From: []string{"ns:tools", "id:1"}}, 2},
		{"from AND to", api.FlowQuery{From: []string{"shop/web"}, To: []string{"ns:tools"}}, 0},
		{"port", api.FlowQuery{Port: 9090}, 2},
		{"protocol", api.FlowQuery{Protocol: "icmp"}, 1},
		{"type", api.FlowQuery{Type: "policy-verdict"}, 1},
		{"since", api.FlowQuery{Since: t0.Add(2 * time.Millisecond)}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Compile(tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Query(f, 0); len(got) != tc.want {
				t.Errorf("%d flows, want %d: %+v", len(got), tc.want, got)
			}
		})
	}
	for _, bad := range []api.FlowQuery{{Verdict: "maybe"}, {Type: "x"}, {Protocol: "gre"}, {From: []string{"id:x"}}, {To: []string{"=v"}}} {
		if _, err := Compile(bad); err == nil {
			t.Errorf("Compile(%+v) accepted", bad)
		}
	}
}

func TestRingAndLast(t *testing.T) {
	s := NewStore(3)
	for i := range 5 {
		s.Add(api.Flow{Length: uint32(i)})
	}
	got := s.Query(nil, 0)
	var lens []uint32
	for _, f := range got {
		lens = append(lens, f.Length)
	}
	if d := cmp.Diff([]uint32{2, 3, 4}, lens); d != "" {
		t.Errorf("ring keeps (-want +got):\n%s", d)
	}
	if got := s.Query(nil, 2); len(got) != 2 || got[1].Length != 4 {
		t.Errorf("last 2 = %+v", got)
	}
	total, kept, capacity := s.Stats()
	if total != 5 || kept != 3 || capacity != 3 {
		t.Errorf("stats %d %d %d", total, kept, capacity)
	}
}

func TestSubscribe(t *testing.T) {
	s := NewStore(8)
	f, _ := Compile(api.FlowQuery{Verdict: "DROPPED"})
	ch, cancel := s.Subscribe(f, 1)
	s.Add(api.Flow{Verdict: "FORWARDED"})
	s.Add(api.Flow{Verdict: "DROPPED", Length: 1})
	s.Add(api.Flow{Verdict: "DROPPED", Length: 2}) // buffer full: counted as lag
	if got := <-ch; got.Length != 1 {
		t.Errorf("followed flow = %+v", got)
	}
	if lag := cancel(); lag != 1 {
		t.Errorf("lag = %d, want 1", lag)
	}
	if _, ok := <-ch; ok {
		t.Error("channel open after cancel")
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s (-want +got):\n%s", name, d)
	}
}

func TestRenderGolden(t *testing.T) {
	flows := store(t).Query(nil, 0)
	var b bytes.Buffer
	if err := WriteCompact(&b, flows); err != nil {
		t.Fatal(err)
	}
	golden(t, "compact.golden", b.Bytes())
	b.Reset()
	if err := WriteTable(&b, flows); err != nil {
		t.Fatal(err)
	}
	golden(t, "table.golden", b.Bytes())
	b.Reset()
	if err := WriteJSONLines(&b, flows); err != nil {
		t.Fatal(err)
	}
	golden(t, "jsonl.golden", b.Bytes())
}
