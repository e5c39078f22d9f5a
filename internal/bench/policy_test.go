package bench

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/policy"
)

func TestPolicyMapSize(t *testing.T) {
	if defaultPolicyMapSize != loader.DefaultPolicyMapSize {
		t.Fatalf("defaultPolicyMapSize = %d, the agent's default is %d", defaultPolicyMapSize, loader.DefaultPolicyMapSize)
	}
	for n, want := range map[int]int{0: 0, 1000: 0, 10000: 0, 16384 - policyMapSlack: 0, 16384: 32768, 50000: 65536, maxPolicyEntries: 65536} {
		if got := policyMapSize(n); got != want {
			t.Errorf("policyMapSize(%d) = %d, want %d", n, got, want)
		}
	}
}

// The manifests the harness applies must be what the agent accepts: they
// go through the policy package's own parser, and each fits one API
// request (the agent reads at most 1 MiB of body).
func TestPolicyManifests(t *testing.T) {
	for _, n := range []int{0, 1, rulesPerPolicy, rulesPerPolicy + 1, 10000} {
		ms := entryPolicies(n)
		if want := (n + rulesPerPolicy - 1) / rulesPerPolicy; len(ms) != want {
			t.Errorf("n=%d: %d policies, want %d", n, len(ms), want)
		}
		rules, seen := 0, map[string]bool{}
		for _, m := range ms {
			body, _ := json.Marshal(map[string]any{"manifest": m})
			if len(body) > 900<<10 {
				t.Errorf("n=%d: a request of %d bytes", n, len(body))
			}
			objs, err := policy.Parse([]byte(m))
			if err != nil {
				t.Fatalf("n=%d: %v", n, err)
			}
			np := objs[0].NetworkPolicy
			if objs[0].Namespace != benchPodNamespace || np == nil {
				t.Fatalf("n=%d: parsed %+v", n, objs[0])
			}
			rules += len(np.Ingress)
			seen[objs[0].Name] = true
		}
		if rules != n || len(seen) != len(ms) {
			t.Errorf("n=%d: %d rules in %d distinct policies", n, rules, len(seen))
		}
	}
	first := entryPolicies(1)[0]
	for _, want := range []string{`"cidr":"10.99.0.0/32"`, `"port":1000`, `"protocol":"TCP"`, `"app":"bench-server"`} {
		if !strings.Contains(first, want) {
			t.Errorf("first policy lacks %s: %s", want, first)
		}
	}
	for name, m := range map[string]string{"allow client": allowClientPolicy(), "deny probes": denyProbesPolicy()} {
		if _, err := policy.Parse([]byte(m)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Probe tuples never repeat within the prober's budget.
func TestProbeTuples(t *testing.T) {
	seen := map[[2]uint16]bool{}
	for seq := range probeSrcPorts * len(probePorts) {
		s, d := probeTuple(seq, probePorts)
		k := [2]uint16{s, d}
		if seen[k] || s < probeSrcPortBase {
			t.Fatalf("probe %d: tuple %v repeats or is out of range", seq, k)
		}
		seen[k] = true
	}
	// 100 s of tuples at 0.5 ms: longer than the datapath's 60 s UDP
	// conntrack lifetime.
	if d := time.Duration(len(seen)) * 500 * time.Microsecond; d < 60*time.Second {
		t.Errorf("tuple space lasts %s", d)
	}
}

// policyResults is a run with the policy, events and propagation parts.
func policyResults() *Results {
	r := fakeResults()
	rr := []string{WorkloadTCPRR}
	specs := []TopologySpec{
		{Kind: KindMembrane, MonitorLevel: "off", Workloads: rr},
		{Kind: KindIPTables, PolicyEntries: 10000, Workloads: rr},
		{Kind: KindNFTSet, PolicyEntries: 10000, Workloads: rr},
		{Kind: KindMembranePolicy, PolicyEntries: 0, Workloads: rr},
		{Kind: KindMembranePolicy, PolicyEntries: 10000, Workloads: rr},
	}
	tps := map[string][]float64{
		"MEMBRANE-MONITOR-OFF":  {100, 100, 100},
		"IPTABLES-10000":        {10, 11, 9},
		"NFT-SET-10000":         {80, 85, 90},
		"MEMBRANE-POLICY-0":     {100, 100, 100},
		"MEMBRANE-POLICY-10000": {90, 99, 96},
	}
	for _, s := range specs {
		info := TopologyInfo{Name: s.Name(), Spec: s, Description: "d"}
		if s.Kind == KindMembranePolicy {
			info.Membrane = &MembraneInfo{Lab: "bt", Policy: &PolicyInstall{Requested: s.PolicyEntries, Entries: s.PolicyEntries + 2, IngressEnforced: true, Objects: 1}}
		}
		r.Topologies = append(r.Topologies, info)
		for round := 1; round <= 3; round++ {
			r.Measurements = append(r.Measurements, Measurement{Round: round, Topology: s.Name(), Workload: WorkloadTCPRR,
				Values: map[string]float64{"tps": tps[s.Name()][round-1], "p50_rtt_us": 10, "p99_rtt_us": 20}})
		}
	}
	deny := make([]float64, 30)
	for i := range deny {
		deny[i] = float64(i + 1) // p99 29.7
	}
	r.Propagation = &PropagationResult{Endpoints: 100, Iterations: 30, IntervalUs: 500, DenyMs: deny, AllowMs: append(deny[:29:29], 250),
		ApplyCallMs: []float64{1}, DeleteCallMs: []float64{1}, ProbesSent: 100, ProbesEchoed: 50}
	return r
}

func TestPolicyTargets(t *testing.T) {
	r := policyResults()
	got := map[string]string{}
	for _, tg := range r.Targets() {
		got[tg.What] = tg.Status
	}
	want := map[string]string{
		"policy: MEMBRANE-POLICY-10000 ≥ 0.95 × MEMBRANE-POLICY-0 (tcp-rr)":                     "met", // 96/100
		"policy: MEMBRANE-POLICY-10000 ≥ 0.95 × MEMBRANE-POLICY-0 (tcp-crr)":                    "not measured",
		"policy: MEMBRANE-POLICY-10000 ≥ 1.3 × IPTABLES-10000 (tcp-rr)":                         "met",
		"policy: MEMBRANE-POLICY-10000 ≥ 1.3 × IPTABLES-10000 (tcp-crr)":                        "not measured",
		"policy propagation p99 ≤ 100 ms at 100 endpoints (apply → denied)":                     "met",
		"policy propagation p99 ≤ 100 ms at 100 endpoints (delete → allowed)":                   "NOT met",
		"flow events: MEMBRANE (default monitor level) ≥ 0.95 × MEMBRANE-MONITOR-OFF (tcp-rr)":  "met", // 99/100
		"flow events: MEMBRANE (default monitor level) ≥ 0.95 × MEMBRANE-MONITOR-OFF (tcp-crr)": "not measured",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
	if err := r.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	r.Propagation.Endpoints = 5
	for _, tg := range r.Targets() {
		if strings.HasPrefix(tg.What, "policy propagation") && tg.Status != "not measured" {
			t.Errorf("%s judged at 5 endpoints: %s", tg.What, tg.Status)
		}
	}
	r.Propagation.DenyMs = r.Propagation.DenyMs[1:]
	if r.Validate() == nil {
		t.Error("Validate accepted 29 deny samples for 30 iterations")
	}
}

func TestRenderPolicy(t *testing.T) {
	r := policyResults()
	md := Render(r, "`x.json`")
	for _, want := range []string{
		"## Policy scaling",
		"| MEMBRANE-POLICY-10000 | 10000 | 10002 | 1 | default (16384) | 0.0 |",
		"| 0 | 100.0 (100.0–100.0) | 88.00 (81.00–90.00) (ROUTED) | 88.00 (81.00–90.00) (ROUTED) | 1.000 (1.00–1.00) | 1.136 (1.11–1.23) | 1.136 (1.11–1.23) |",
		"| 10000 | 96.00 (90.00–99.00) | 10.00 (9.00–11.00) | 85.00 (80.00–90.00) | 0.960 (0.90–0.99) | 9.600 (9.00–10.67) | 1.129 (1.07–1.16) |",
		"## Flow events cost",
		"| tcp-rr (transactions/s) | 99.00 (95.00–100.00) | 100.0 (100.0–100.0) | 0.990 (0.95–1.00) |",
		"## Policy propagation",
		"| apply → denied | 30 | 15.5 | 27.1 | 29.7 | 30.0 | 0 |",
		"| delete → allowed | 30 | 15.5 | 27.1 | 185.9 | 250.0 | 0 |",
		"| policy propagation p99 ≤ 100 ms at 100 endpoints (delete → allowed) | 185.9 ms (n=30, 100 endpoints) | **NOT met** |",
		"(workloads: tcp-rr)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Rows only for the topologies a workload ran on.
	if strings.Contains(md, "| MEMBRANE-MONITOR-OFF | — |") {
		t.Error("report has an empty row for a topology that did not run the workload")
	}
	if diff := cmp.Diff([]int{0, 10000}, r.policyNs()); diff != "" {
		t.Errorf("policyNs (-want +got):\n%s", diff)
	}
	if got := r.fullTopologies(); !cmp.Equal(got, []string{"DIRECT", "ROUTED", "MEMBRANE"}) {
		t.Errorf("fullTopologies = %v", got)
	}
}
