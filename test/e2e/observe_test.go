package e2e

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
)

// TestObserveAndMetrics checks that denied and allowed connections show up
// as flows with their reason and policy, that following works, and that
// the agent's Prometheus endpoint parses and its counters move.
func TestObserveAndMetrics(t *testing.T) {
	l := newLab(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n := node(t, l)
	c := api.NewClient(n.Socket)
	for _, s := range []lab.PodSpec{
		{Namespace: "n1", Name: "a", Labels: map[string]string{"app": "a"}},
		{Namespace: "n1", Name: "b", Labels: map[string]string{"app": "b"}},
		{Namespace: "n2", Name: "c", Labels: map[string]string{"app": "c"}},
	} {
		if _, err := l.AddPod(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	pol := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: n1}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 8080}]
---
apiVersion: membrane.io/v1
kind: MembranePolicy
metadata: {name: a-not-from-n2, namespace: n1}
spec:
  endpointSelector: {matchLabels: {app: a}}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: n2}}]
`
	if _, err := c.Apply(ctx, api.ApplyRequest{Manifest: pol, Wait: true}); err != nil {
		t.Fatal(err)
	}

	// Follow drops from n2/c before causing them.
	followed := make(chan api.Flow, 16)
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	go func() {
		_ = c.Flows(fctx, api.FlowQuery{From: []string{"n2/c"}, Verdict: "DROPPED", Follow: true}, func(f api.Flow) error {
			followed <- f
			return nil
		})
	}()
	time.Sleep(200 * time.Millisecond) // let the follower subscribe

	m, err := l.Probe(ctx, lab.ProbeSpec{Proto: "tcp", Port: 8080, Timeout: 700 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	_ = m.Render(&b)
	t.Logf("matrix:\n%s", b.String())

	query := func(q api.FlowQuery) []api.Flow {
		t.Helper()
		var out []api.Flow
		if err := c.Flows(ctx, q, func(f api.Flow) error { out = append(out, f); return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	find := func(flows []api.Flow, pred func(api.Flow) bool) *api.Flow {
		for i := range flows {
			if pred(flows[i]) {
				return &flows[i]
			}
		}
		return nil
	}

	// No rule allows n2/c → n1/b: dropped, naming the isolating policy.
	drops := query(api.FlowQuery{From: []string{"n2/c"}, To: []string{"n1/b"}, Verdict: "DROPPED", Type: "drop"})
	if f := find(drops, func(f api.Flow) bool {
		return f.DropReason == "POLICY_NO_RULE" && f.Policy == "networkpolicy n1/b-from-a" && f.Direction == "ingress" && f.Dest.Port == 8080
	}); f == nil {
		t.Errorf("no POLICY_NO_RULE drop naming networkpolicy n1/b-from-a among %+v", drops)
	}
	// An explicit deny rule: POLICY_DENIED with the rule.
	drops = query(api.FlowQuery{From: []string{"ns:n2"}, To: []string{"app=a"}, Verdict: "DROPPED"})
	if f := find(drops, func(f api.Flow) bool {
		return f.DropReason == "POLICY_DENIED" && f.Policy == "membranepolicy n1/a-not-from-n2" && strings.Contains(f.Rule, "ingressDeny[0]")
	}); f == nil {
		t.Errorf("no POLICY_DENIED drop by membranepolicy n1/a-not-from-n2 ingressDeny[0] among %+v", drops)
	}
	// Allowed n1/a → n1/b: a forwarded policy verdict with the allowing rule.
	fwd := query(api.FlowQuery{From: []string{"n1/a"}, To: []string{"n1/b"}, Verdict: "FORWARDED", Type: "policy-verdict"})
	if f := find(fwd, func(f api.Flow) bool {
		return f.Policy == "networkpolicy n1/b-from-a" && strings.Contains(f.Rule, "ingress[0]")
	}); f == nil {
		t.Errorf("no FORWARDED verdict by networkpolicy n1/b-from-a among %+v", fwd)
	}
	if got := query(api.FlowQuery{Last: 2}); len(got) != 2 {
		t.Errorf("--last 2 returned %d flows", len(got))
	}
	select {
	case f := <-followed:
		if f.Verdict != "DROPPED" || f.Source.Pod != "c" {
			t.Errorf("followed flow %+v", f)
		}
	case <-time.After(5 * time.Second):
		t.Error("follower saw no drop from n2/c")
	}

	// Metrics, scraped inside the node namespace.
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		var body []byte
		// The socket must be made on the thread inside the namespace, so
		// dial there and speak HTTP over that one connection.
		if err := inNetns(t, n.Netns, func() error {
			conn, err := net.DialTimeout("tcp", "127.0.0.1:"+lab.MetricsPort, 5*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n"); err != nil {
				return err
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err = io.ReadAll(resp.Body)
			return err
		}); err != nil {
			t.Fatalf("scrape metrics: %v", err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
		if err != nil {
			t.Fatalf("metrics do not parse: %v", err)
		}
		return fams
	}
	sum := func(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
		total := 0.0
		f, ok := fams[name]
		if !ok {
			t.Fatalf("metric %s missing", name)
		}
	next:
		for _, m := range f.Metric {
			for k, v := range labels {
				ok := false
				for _, l := range m.Label {
					if l.GetName() == k && l.GetValue() == v {
						ok = true
					}
				}
				if !ok {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				total += m.Counter.GetValue()
			case m.Gauge != nil:
				total += m.Gauge.GetValue()
			case m.Histogram != nil:
				total += float64(m.Histogram.GetSampleCount())
			}
		}
		return total
	}
	before := scrape()
	for name, want := range map[string]float64{"membrane_endpoints": 3} {
		if got := sum(before, name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := sum(before, "membrane_bpf_map_capacity", map[string]string{"map": "mbr_endpoints"}); got != 65536 {
		t.Errorf("endpoint map capacity = %v", got)
	}
	if got := sum(before, "membrane_cni_add_duration_seconds", nil); got < 3 {
		t.Errorf("CNI ADD histogram has %v samples, want ≥ 3", got)
	}
	if got := sum(before, "membrane_datapath_packets_total", map[string]string{"reason": "POLICY_NO_RULE"}); got < 1 {
		t.Errorf("no POLICY_NO_RULE drops counted")
	}
	if got := sum(before, "membrane_kvstore_operations_total", nil); got < 1 {
		t.Errorf("no kvstore operations counted")
	}
	fwdBefore := sum(before, "membrane_datapath_packets_total", map[string]string{"reason": "FORWARDED"})
	if _, err := l.Probe(ctx, lab.ProbeSpec{Proto: "udp", Port: 9090, Timeout: 700 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	after := scrape()
	if fwdAfter := sum(after, "membrane_datapath_packets_total", map[string]string{"reason": "FORWARDED"}); fwdAfter <= fwdBefore {
		t.Errorf("forwarded packets did not move: %v → %v", fwdBefore, fwdAfter)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Datapath.FlowsSeen == 0 || len(st.Datapath.Maps) == 0 || st.Datapath.MonitorLevel != "default" {
		t.Errorf("status datapath = %+v", st.Datapath)
	}
}
