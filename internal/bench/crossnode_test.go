package bench

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestKernelTwoNodePlan compares the commands that build the two kernel
// cross-node baselines with golden files (rewrite with -update, commit only
// when the diff is understood).
func TestKernelTwoNodePlan(t *testing.T) {
	for _, kind := range []string{KindKernelVXLAN, KindRouted2Node} {
		t.Run(kind, func(t *testing.T) {
			k := &kernelTwoNode{spec: TopologySpec{Kind: kind}, idx: 9}
			steps, pair := k.plan("mbb-x-f", [2]string{"mbb-x-a", "mbb-x-b"}, [2]string{"mbb-x-c", "mbb-x-s"})
			var b strings.Builder
			for _, st := range steps {
				b.WriteString(strings.Join(st, " ") + "\n")
			}
			b.WriteString("# client " + pair.Client.Netns + " " + pair.Client.Addr.String() + "\n")
			b.WriteString("# server " + pair.Server.Netns + " " + pair.Server.Addr.String() + "\n")
			golden := filepath.Join("testdata", "crossnode-"+kind+".txt")
			if *update {
				if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), b.String()); diff != "" {
				t.Errorf("plan differs from %s (-want +got):\n%s", golden, diff)
			}
			// Nothing may touch the machine's own namespace: every command
			// names one of the topology's namespaces.
			for _, st := range steps {
				line := strings.Join(st, " ")
				if !strings.Contains(line, " -n mbb-x-") && !strings.Contains(line, " netns exec mbb-x-") && !strings.Contains(line, " netns mbb-x-") {
					t.Errorf("command outside the topology's namespaces: %s", line)
				}
				if strings.Contains(line, "default") {
					t.Errorf("default route: %s", line)
				}
			}
		})
	}
}

// crossResults is a run of the four cross-node topologies over three
// rounds, tcp-rr and tcp-stream.
func crossResults() *Results {
	r := &Results{
		Version:   ResultsVersion,
		Profile:   "quick",
		StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Config:    Config{Rounds: 3, Duration: 2 * time.Second},
		Host:      Host{Kernel: "6.1.0", CPUs: 2},
		Workloads: []WorkloadInfo{
			{Name: WorkloadTCPRR, Tool: "sockperf", Metrics: (&sockperfRR{}).Metrics()},
			{Name: WorkloadTCPStream, Tool: "iperf3", Metrics: (&iperfStream{}).Metrics()},
		},
	}
	ws := []string{WorkloadTCPRR, WorkloadTCPStream}
	for _, spec := range crossNodeTopologies(ws) {
		r.Topologies = append(r.Topologies, TopologyInfo{Name: spec.Name(), Spec: spec, Description: "d"})
	}
	vals := map[string]map[string][]float64{
		"KERNEL-VXLAN":          {WorkloadTCPRR: {100, 100, 100}, WorkloadTCPStream: {10, 10, 10}},
		"MEMBRANE-VXLAN-2NODE":  {WorkloadTCPRR: {95, 92, 99}, WorkloadTCPStream: {8, 8.5, 9}},
		"ROUTED-2NODE":          {WorkloadTCPRR: {200, 200, 200}, WorkloadTCPStream: {20, 20, 20}},
		"MEMBRANE-NATIVE-2NODE": {WorkloadTCPRR: {190, 185, 180}, WorkloadTCPStream: {19, 21, 20}},
	}
	for round := 1; round <= 3; round++ {
		for _, w := range ws {
			for _, t := range r.Topologies {
				v := vals[t.Name][w][round-1]
				m := map[string]float64{"tps": v, "p50_rtt_us": 10, "p99_rtt_us": 20}
				if w == WorkloadTCPStream {
					m = map[string]float64{"gbps": v}
				}
				r.Measurements = append(r.Measurements, Measurement{Round: round, Topology: t.Name, Workload: w, Values: m})
			}
		}
	}
	return r
}

func TestCrossNodeTargets(t *testing.T) {
	r := crossResults()
	got := map[string]string{}
	for _, tg := range r.Targets() {
		if strings.HasPrefix(tg.What, "cross-node:") {
			got[tg.What] = tg.Status + " " + tg.Measured
		}
	}
	want := map[string]string{
		"cross-node: MEMBRANE-VXLAN-2NODE ≥ 0.9 × KERNEL-VXLAN (tcp-rr)":      "met 0.950 (per round 0.920–0.990)",
		"cross-node: MEMBRANE-VXLAN-2NODE ≥ 0.9 × KERNEL-VXLAN (tcp-stream)":  "NOT met 0.850 (per round 0.800–0.900)",
		"cross-node: MEMBRANE-NATIVE-2NODE ≥ 0.9 × ROUTED-2NODE (tcp-rr)":     "met 0.925 (per round 0.900–0.950)",
		"cross-node: MEMBRANE-NATIVE-2NODE ≥ 0.9 × ROUTED-2NODE (tcp-stream)": "met 1.000 (per round 0.950–1.050)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cross-node targets (-want +got):\n%s", diff)
	}
	// Without cross-node topologies the targets say so.
	r = fakeResults()
	for _, tg := range r.Targets() {
		if strings.HasPrefix(tg.What, "cross-node:") && tg.Status != "not measured" {
			t.Errorf("%s: %s without cross-node topologies", tg.What, tg.Status)
		}
	}
}

func TestRenderCrossNode(t *testing.T) {
	md := Render(crossResults(), "`x.json`")
	for _, want := range []string{
		"## Cross-node\n",
		"| workload (metric) | MEMBRANE-VXLAN-2NODE / KERNEL-VXLAN | ≥ 0.9? | MEMBRANE-NATIVE-2NODE / ROUTED-2NODE | ≥ 0.9? |",
		"| tcp-rr (transactions/s) | 0.950 (0.92–0.99) | met | 0.925 (0.90–0.95) | met |",
		"| tcp-stream (Gbit/s) | 0.850 (0.80–0.90) | **NOT met** | 1.000 (0.95–1.05) | met |",
		"The ≥ 0.9 target is met on 3 of 4 comparisons; **NOT met**: MEMBRANE-VXLAN-2NODE / KERNEL-VXLAN on tcp-stream (0.850).",
		"| workload (metric) | KERNEL-VXLAN | MEMBRANE-VXLAN-2NODE | ROUTED-2NODE | MEMBRANE-NATIVE-2NODE |",
		"| tcp-rr (transactions/s) | 100.0 (100.0–100.0) | 95.00 (92.00–99.00) | 200.0 (200.0–200.0) | 185.0 (180.0–190.0) |",
		ChartCrossNode,
		"| cross-node: MEMBRANE-VXLAN-2NODE ≥ 0.9 × KERNEL-VXLAN (tcp-stream) | 0.850 (per round 0.800–0.900) | **NOT met** |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q\n%s", want, md)
		}
	}
	if strings.Contains(Render(fakeResults(), "`x.json`"), "## Cross-node") {
		t.Error("cross-node section without cross-node topologies")
	}
	dir := t.TempDir()
	if err := CrossNodeChart(crossResults(), filepath.Join(dir, "c.png")); err != nil {
		t.Fatalf("CrossNodeChart: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "c.png")); err != nil || fi.Size() < 1000 {
		t.Errorf("chart: %v", err)
	}
}

func TestCrossNodeConfig(t *testing.T) {
	for _, tt := range []struct {
		spec TopologySpec
		name string
	}{
		{TopologySpec{Kind: KindKernelVXLAN}, "KERNEL-VXLAN"},
		{TopologySpec{Kind: KindRouted2Node}, "ROUTED-2NODE"},
		{TopologySpec{Kind: KindMembraneVXLAN2Node}, "MEMBRANE-VXLAN-2NODE"},
		{TopologySpec{Kind: KindMembraneNative2Node}, "MEMBRANE-NATIVE-2NODE"},
	} {
		if got := tt.spec.Name(); got != tt.name {
			t.Errorf("%s: Name() = %q, want %q", tt.spec.Kind, got, tt.name)
		}
		if !tt.spec.crossNode() {
			t.Errorf("%s is not cross-node", tt.spec.Kind)
		}
	}
	for _, name := range []string{ProfileQuick, ProfileFull} {
		cfg, _ := Profile(name)
		var got []string
		for _, s := range cfg.Topologies {
			if s.crossNode() {
				got = append(got, s.Name())
			}
		}
		if diff := cmp.Diff([]string{"KERNEL-VXLAN", "MEMBRANE-VXLAN-2NODE", "ROUTED-2NODE", "MEMBRANE-NATIVE-2NODE"}, got); diff != "" {
			t.Errorf("%s: cross-node topologies (-want +got):\n%s", name, diff)
		}
	}
	bad := Config{Profile: "x", Rounds: 1, Duration: time.Second, Workloads: []string{WorkloadTCPRR},
		Topologies: []TopologySpec{{Kind: KindMembraneVXLAN2Node, MonitorLevel: "off"}, {Kind: KindRouted2Node, PolicyEntries: 3}}}
	err := bad.Validate()
	for _, want := range []string{"MEMBRANE-VXLAN-2NODE takes no policy entries or monitor level", "ROUTED-2NODE takes no"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v lacks %q", err, want)
		}
	}
}
