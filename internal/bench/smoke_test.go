package bench

import (
	"bytes"
	"context"
	"image/png"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/membrane-net/membrane/internal/lab"
	"github.com/membrane-net/membrane/internal/testutil"
)

// binDirEnv names a directory with prebuilt membrane, membrane-agent and
// membrane-cni; without it the smoke test builds ./cmd/... itself.
const binDirEnv = "MEMBRANE_TEST_BIN_DIR"

// smokeConfig is one 1-second round of every workload on DIRECT and
// MEMBRANE, one tiny policy-scaling case (tcp-rr on IPTABLES-100 and
// MEMBRANE-POLICY-100), tcp-rr and tcp-stream on the four cross-node
// topologies, three CNI ADDs per plugin (one after another, then at once),
// the memory measurement with two endpoints, three policy propagation
// iterations with five endpoints, and svc-crr on the service topologies
// with 1 and 100 services.
func smokeConfig(bin, work string, t *testing.T) Config {
	rr := []string{WorkloadTCPRR}
	return Config{
		Profile:  "smoke",
		Rounds:   1,
		Duration: time.Second,
		Topologies: append([]TopologySpec{{Kind: KindDirect}, {Kind: KindMembrane},
			{Kind: KindIPTables, PolicyEntries: smokePolicyEntries, Workloads: rr},
			{Kind: KindMembranePolicy, PolicyEntries: smokePolicyEntries, Workloads: rr}},
			append(crossNodeTopologies([]string{WorkloadTCPRR, WorkloadTCPStream}), serviceTopologies(smokeServices)...)...),
		Workloads:   []string{WorkloadTCPRR, WorkloadTCPStream, WorkloadTCPCRR, WorkloadUDPRR, WorkloadSvcCRR},
		CNI:         CNIConfig{Plugins: []string{"membrane", "ptp"}, Concurrency: []int{1, 3}, Batch: 3, Rounds: 1},
		Memory:      MemoryConfig{Endpoints: 2, Settle: 200 * time.Millisecond},
		Propagation: PropagationConfig{Endpoints: 5, Iterations: 3, Interval: 500 * time.Microsecond, Timeout: 3 * time.Second},
		BinDir:      bin,
		WorkDir:     work,
		Logger:      slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

const smokePolicyEntries = 100

var smokeServices = []int{1, 100}

// TestSmoke runs the harness end to end, briefly, and checks that it
// produces well-formed results (every number positive, JSON round-trips,
// the report and charts render) and leaves nothing behind. It asserts
// nothing about timing.
func TestSmoke(t *testing.T) {
	testutil.Privileged(t)
	cfg := smokeConfig("", "", t)
	if err := CheckDeps(cfg); err != nil {
		// Under CI=true this fails: CI must install the tools (bench/deps.sh).
		testutil.RequireOrFail(t, false, "%v", err)
	}
	bin := os.Getenv(binDirEnv)
	if bin == "" {
		bin = buildBinaries(t)
	}
	cfg = smokeConfig(bin, t.TempDir(), t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	res, err := Run(ctx, cfg)
	if res != nil {
		t.Cleanup(func() { assertNoLeftovers(t, res.RunID, cfg.WorkDir) })
	}
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(res.Errors) > 0 {
		t.Fatalf("run had errors:\n%s", strings.Join(res.Errors, "\n"))
	}
	if err := res.Validate(); err != nil {
		t.Fatalf("results not well formed: %v", err)
	}
	for _, topo := range res.Topologies {
		for _, w := range res.Workloads {
			want := 0
			if topo.Spec.runs(w.Name) {
				want = 1
			}
			for _, m := range w.Metrics {
				if v := res.Values(topo.Name, w.Name, m.Name); len(v) != want {
					t.Errorf("%s/%s/%s: %d values, want %d", topo.Name, w.Name, m.Name, len(v), want)
				}
			}
		}
	}
	policyName := TopologySpec{Kind: KindMembranePolicy, PolicyEntries: smokePolicyEntries}.Name()
	for _, topo := range res.Topologies {
		if topo.Name != policyName {
			continue
		}
		if pi := policyOf(topo); pi == nil || pi.Entries < smokePolicyEntries+1 || !pi.IngressEnforced {
			t.Errorf("%s: installed policy %+v, want ≥ %d entries, ingress enforced", topo.Name, pi, smokePolicyEntries+1)
		}
	}
	for _, topo := range res.Topologies {
		want := map[string]string{KindMembraneVXLAN2Node: lab.ModeVXLAN, KindMembraneNative2Node: lab.ModeNative}[topo.Spec.Kind]
		if want == "" {
			continue
		}
		if topo.Membrane == nil || len(topo.Membrane.Nodes) != 2 {
			t.Errorf("%s: lab info %+v, want two nodes", topo.Name, topo.Membrane)
			continue
		}
		for _, n := range topo.Membrane.Nodes {
			if n.RoutingMode != want || !n.PodCIDR.IsValid() {
				t.Errorf("%s: node %+v, want routing mode %s and a pod CIDR", topo.Name, n, want)
			}
		}
	}
	nsvc := 0
	for _, topo := range res.Topologies {
		if !topo.Spec.service() {
			continue
		}
		nsvc++
		si := topo.Services
		if si == nil || si.Services != topo.Spec.Services || si.Measured != measuredServiceAddr(topo.Spec.Services) || si.InstallSeconds <= 0 {
			t.Errorf("%s: service install %+v, want %d services, measured %s", topo.Name, si, topo.Spec.Services, measuredServiceAddr(topo.Spec.Services))
			continue
		}
		if topo.Spec.Kind == KindMembraneSvc && (si.LBMapServices < si.Services || topo.Pair == nil || topo.Pair.Client.Cgroup == "") {
			t.Errorf("%s: %d service ports in the LB map for %d services, pair %+v (want the client in its pod's cgroup)", topo.Name, si.LBMapServices, si.Services, topo.Pair)
		}
	}
	if nsvc != 3*len(smokeServices) {
		t.Errorf("%d service topologies, want %d", nsvc, 3*len(smokeServices))
	}
	if p := res.Propagation; p == nil || p.Endpoints != 5 || len(p.DenyMs)+p.DenyTimeouts != 3 || len(p.AllowMs)+p.AllowTimeouts != 3 {
		t.Errorf("propagation result: %+v, want 3 iterations at 5 endpoints", p)
	}
	if len(res.CNI) != 4 {
		t.Errorf("cni series: %d, want 4 (2 plugins × 2 concurrency levels)", len(res.CNI))
	}
	for _, s := range res.CNI {
		if len(s.LatencyMs) != 3 || s.Failures != 0 {
			t.Errorf("cni %s ×%d: %d samples, %d failures; want 3 and 0", s.Plugin, s.Concurrency, len(s.LatencyMs), s.Failures)
		}
	}
	if res.Memory == nil || res.Memory.Endpoints != 2 {
		t.Errorf("memory result: %+v, want one with 2 endpoints", res.Memory)
	}

	// JSON round trip.
	dir := t.TempDir()
	path, err := res.Save(filepath.Join(dir, "results"))
	if err != nil {
		t.Fatal(err)
	}
	back, err := LoadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(res, back, cmpopts.IgnoreFields(Config{}, "Logger", "BinDir", "WorkDir", "CNIPluginDir"), cmpopts.EquateComparable(netip.Addr{}, netip.AddrPort{}, netip.Prefix{})); diff != "" {
		t.Errorf("results differ after a JSON round trip (-ran +loaded):\n%s", diff)
	}
	if latest, err := LatestResults(filepath.Join(dir, "results")); err != nil || filepath.Base(latest) != "latest-smoke.json" {
		t.Errorf("LatestResults = %q, %v", latest, err)
	}

	// Report and charts.
	docs := filepath.Join(dir, "docs")
	if err := WriteReport(back, docs, "`smoke.json`"); err != nil {
		t.Fatalf("WriteReport: %v", err)
	}
	md, err := os.ReadFile(filepath.Join(docs, "performance.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## The targets", "MEMBRANE / DIRECT", "### tcp-rr", "### CNI ADD latency", "### Agent memory per endpoint",
		"## Policy scaling", "| " + policyName + " | 100 |", "## Policy propagation", "| apply → denied | 3 |", ChartRatios, ChartCNI, ChartPolicy,
		"## Cross-node", "| MEMBRANE-VXLAN-2NODE / KERNEL-VXLAN | ≥ 0.9? |", "| tcp-stream (Gbit/s) |", ChartCrossNode,
		"## Services", "### N = 100", "| NFT-VMAP-100 |", "| KUBE-PROXY-IPTABLES-100 | 100 | iptables-restore", ChartServices} {
		if !bytes.Contains(md, []byte(want)) {
			t.Errorf("report lacks %q", want)
		}
	}
	for _, c := range []string{ChartRatios, ChartCNI, ChartPolicy, ChartCrossNode, ChartServices} {
		f, err := os.Open(filepath.Join(docs, c))
		if err != nil {
			t.Errorf("chart: %v", err)
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil || img.Bounds().Dx() < 300 {
			t.Errorf("chart %s: not a usable PNG (%v)", c, err)
		}
	}
}

// assertNoLeftovers checks that a run removed its namespaces, labs, pins,
// processes and work directory.
func assertNoLeftovers(t *testing.T, id, workParent string) {
	t.Helper()
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), netnsPrefix+id) || strings.Contains(e.Name(), "-"+id+"-") {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	labs, _ := filepath.Glob(filepath.Join(lab.DefaultBaseDir, "*-"+id))
	pins, _ := filepath.Glob(filepath.Join(lab.DefaultBPFRoot, "*-"+id+"-node*"))
	for _, p := range append(labs, pins...) {
		t.Errorf("%s left behind", p)
	}
	if _, err := os.Stat(filepath.Join(workParent, "membrane-bench-"+id)); err == nil {
		t.Errorf("work dir left behind")
	}
	out, _ := exec.Command("pgrep", "-af", "membrane-bench-"+id).Output()
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Errorf("processes left behind:\n%s", s)
	}
}

// buildBinaries builds ./cmd/... into a temporary directory.
func buildBinaries(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := t.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+"/", "./cmd/membrane", "./cmd/membrane-agent", "./cmd/membrane-cni")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return bin
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
