package bench

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Tool outputs as the Debian bookworm builds print them.
const sockperfOut = "sockperf: \x1b[2;35m== version #3.7-no.git == \x1b[0m\n" +
	"sockperf: [Total Run] RunTime=3.001 sec; Warm up time=400 msec; SentMessages=99297; ReceivedMessages=99296\n" +
	"sockperf: ========= Printing statistics for Server No: 0\n" +
	"sockperf: [Valid Duration] RunTime=2.500 sec; SentMessages=100000; ReceivedMessages=100000\n" +
	"sockperf: \x1b[2;35m====> avg-rtt=19.944 (std-dev=9.088)\x1b[0m\n" +
	"sockperf: ---> <MAX> observation = 1001.220\n" +
	"sockperf: ---> percentile 99.999 =  510.172\n" +
	"sockperf: ---> percentile 99.000 =   61.526\n" +
	"sockperf: ---> percentile 90.000 =   20.018\n" +
	"sockperf: ---> percentile 50.000 =   18.584\n" +
	"sockperf: ---> <MIN> observation =   17.332\n"

const wrkOut = `Running 3s test @ http://10.213.0.3:18080/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   171.89us   76.56us   1.43ms   68.19%
    Req/Sec    13.08k   649.99    13.75k    61.90%
  Latency Distribution
     50%  160.00us
     75%  190.00us
     90%  250.00us
     99%    1.20ms
  27318 requests in 2.10s, 3.78MB read
Requests/sec:  13008.39
Transfer/sec:      1.80MB
`

func TestParsers(t *testing.T) {
	tests := []struct {
		name  string
		parse func(string) (map[string]float64, error)
		in    string
		want  map[string]float64
	}{
		{"sockperf", parseSockperf, sockperfOut, map[string]float64{"tps": 40000, "p50_rtt_us": 18.584, "p99_rtt_us": 61.526}},
		{"iperf3", parseIperf, `{"start":{},"end":{"sum_received":{"bits_per_second":8.5e9}}}`, map[string]float64{"gbps": 8.5}},
		{"wrk", parseWrk, wrkOut, map[string]float64{"cps": 13008.39, "p50_us": 160, "p99_us": 1200, "errors": 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateApprox(1e-9, 1e-9)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParserErrors(t *testing.T) {
	for name, fn := range map[string]func() error{
		"sockperf empty": func() error { _, err := parseSockperf("sockperf: connection refused\n"); return err },
		"sockperf zero": func() error {
			_, err := parseSockperf(strings.Replace(sockperfOut, "ReceivedMessages=100000", "ReceivedMessages=0", 1))
			return err
		},
		"iperf3 error":    func() error { _, err := parseIperf(`{"error":"unable to connect"}`); return err },
		"iperf3 not json": func() error { _, err := parseIperf("iperf3: error"); return err },
		"wrk socket errors": func() error {
			_, err := parseWrk(wrkOut + "  Socket errors: connect 5000, read 0, write 0, timeout 0\n")
			return err
		},
		"wrk no requests/s": func() error {
			_, err := parseWrk("unable to connect to 10.213.0.3:18080 Connection refused\n")
			return err
		},
		"wrk non-2xx answer": func() error { _, err := parseWrk(wrkOut + "  Non-2xx or 3xx responses: 27318\n"); return err },
	} {
		if fn() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestSummarize(t *testing.T) {
	got := Summarize([]float64{5, 1, 3, 2, 4})
	if diff := cmp.Diff(Summary{N: 5, Median: 3, Min: 1, Max: 5}, got); diff != "" {
		t.Error(diff)
	}
	if s := Summarize([]float64{1, 2, 3, 4}); s.Median != 2.5 {
		t.Errorf("even median = %v, want 2.5", s.Median)
	}
	sorted := []float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
	for p, want := range map[float64]float64{0: 10, 50: 55, 99: 99.1, 100: 100} {
		if got := Percentile(sorted, p); math.Abs(got-want) > 1e-9 {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
}

// fakeResults is a run of three topologies over three rounds.
func fakeResults() *Results {
	r := &Results{
		Version:   ResultsVersion,
		Profile:   "quick",
		StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Config:    Config{Rounds: 3, Duration: 3 * time.Second, CNI: CNIConfig{Batch: 20, Rounds: 5}},
		Host:      Host{Kernel: "6.1.0", CPUs: 2, Tools: map[string]string{"sockperf": "3.7"}},
		Workloads: []WorkloadInfo{{Name: WorkloadTCPRR, Tool: "sockperf", Metrics: (&sockperfRR{}).Metrics()}},
	}
	for _, n := range []string{"DIRECT", "ROUTED", "MEMBRANE"} {
		r.Topologies = append(r.Topologies, TopologyInfo{Name: n, Description: "d"})
	}
	tps := map[string][]float64{"DIRECT": {100, 110, 90}, "ROUTED": {90, 88, 81}, "MEMBRANE": {99, 100, 95}}
	for round := 1; round <= 3; round++ {
		for _, n := range []string{"DIRECT", "ROUTED", "MEMBRANE"} {
			r.Measurements = append(r.Measurements, Measurement{Round: round, Topology: n, Workload: WorkloadTCPRR,
				Values: map[string]float64{"tps": tps[n][round-1], "p50_rtt_us": 10, "p99_rtt_us": 20}})
		}
	}
	r.CNI = []CNISeries{{Plugin: "membrane", Concurrency: 20, LatencyMs: []float64{5, 6, 7, 8, 150}}}
	return r
}

func TestRatioAndTargets(t *testing.T) {
	r := fakeResults()
	ratio, ok := r.Ratio("MEMBRANE", "DIRECT", WorkloadTCPRR, "tps")
	if !ok {
		t.Fatal("no ratio")
	}
	// Medians 99 / 100; per round 0.99, 0.909…, 1.055….
	if math.Abs(ratio.OfMedians-0.99) > 1e-9 || math.Abs(ratio.PerRound.Min-100.0/110) > 1e-9 || math.Abs(ratio.PerRound.Max-95.0/90) > 1e-9 {
		t.Errorf("ratio = %+v", ratio)
	}
	got := map[string]string{}
	for _, tg := range r.Targets()[:6] { // the policy, events and propagation ones: policy_test.go
		got[tg.What] = tg.Status
	}
	want := map[string]string{
		"TCP request/response ≥ 0.95 × DIRECT":       "met",
		"UDP request/response ≥ 0.95 × DIRECT":       "not measured",
		"TCP stream ≥ 1.0 × DIRECT":                  "not measured",
		"connect/request/close rate ≥ 0.95 × DIRECT": "not measured",
		"CNI ADD p50 ≤ 20 ms at 20 concurrent":       "met",
		"CNI ADD p99 ≤ 100 ms at 20 concurrent":      "NOT met",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	if err := r.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	r.Measurements[0].Values["tps"] = 0
	if r.Validate() == nil {
		t.Error("Validate accepted a zero metric")
	}
}

func TestRender(t *testing.T) {
	md := Render(fakeResults(), "`bench/results/x.json`")
	for _, want := range []string{
		"| TCP request/response ≥ 0.95 × DIRECT | 0.990 × DIRECT (per round 0.909–1.056) | met |",
		"| CNI ADD p99 ≤ 100 ms at 20 concurrent | 144.3 ms (n=5) | **NOT met** |",
		"MEMBRANE / DIRECT | MEMBRANE / ROUTED | ROUTED / DIRECT |",
		"| tcp-rr (transactions/s) | 0.990 (0.91–1.06) | 1.125 (1.10–1.17) | 0.880 (0.80–0.90) |",
		"| MEMBRANE | 99.00 (95.00–100.00) | 10.00 (10.00–10.00) | 20.00 (20.00–20.00) | 3 | 0 |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q\n%s", want, md)
		}
	}
}

func TestProfiles(t *testing.T) {
	for _, name := range []string{ProfileQuick, ProfileFull} {
		cfg, err := Profile(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		// ≥ 100 CNI samples per (plugin, concurrency), ≥ 4 rounds (quick
		// went from 5 to 4 to make room for the policy, events and
		// propagation parts), ≥ 30 propagation iterations at 100 endpoints.
		if cfg.CNI.Rounds*cfg.CNI.Batch < 100 || cfg.CNI.Rounds*20 < 100 || cfg.Rounds < 4 ||
			cfg.Propagation.Iterations < 30 || cfg.Propagation.Endpoints != 100 {
			t.Errorf("%s: too few samples: %+v", name, cfg)
		}
	}
	if _, err := Profile("huge"); err == nil {
		t.Error("unknown profile accepted")
	}
	bad := Config{Profile: "x", Rounds: 0, Duration: time.Hour, Topologies: []TopologySpec{{Kind: "nope"}, {Kind: KindIPTables}}, Workloads: []string{"ping"}}
	err := bad.Validate()
	for _, want := range []string{"rounds 0", "duration 1h0m0s", `kind "nope"`, "iptables needs policy entries", `workload "ping"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error %v lacks %q", err, want)
		}
	}
}

func TestTopologyNames(t *testing.T) {
	for _, tt := range []struct {
		spec TopologySpec
		want string
	}{
		{TopologySpec{Kind: KindDirect}, "DIRECT"},
		{TopologySpec{Kind: KindIPTables, PolicyEntries: 10000}, "IPTABLES-10000"},
		{TopologySpec{Kind: KindNFTSet, PolicyEntries: 1000}, "NFT-SET-1000"},
		{TopologySpec{Kind: KindMembrane}, "MEMBRANE"},
		{TopologySpec{Kind: KindMembranePolicy, PolicyEntries: 0, Workloads: []string{WorkloadTCPRR}}, "MEMBRANE-POLICY-0"},
		{TopologySpec{Kind: KindMembranePolicy, PolicyEntries: 1000}, "MEMBRANE-POLICY-1000"},
		{TopologySpec{Kind: KindMembrane, MonitorLevel: "off"}, "MEMBRANE-MONITOR-OFF"},
	} {
		if got := tt.spec.Name(); got != tt.want {
			t.Errorf("%+v.Name() = %q, want %q", tt.spec, got, tt.want)
		}
	}
}

func TestPolicyRules(t *testing.T) {
	block := netip.MustParsePrefix("10.213.4.0/24")
	ipt := string(iptablesRules(3, block))
	want := "*filter\n:FORWARD ACCEPT [0:0]\n" +
		"-A FORWARD -s 10.99.0.0/32 -p tcp --dport 1000 -j DROP\n" +
		"-A FORWARD -s 10.99.0.1/32 -p tcp --dport 1001 -j DROP\n" +
		"-A FORWARD -s 10.99.0.2/32 -p tcp --dport 1002 -j DROP\n" +
		"-A FORWARD -s 10.213.4.0/24 -d 10.213.4.0/24 -j ACCEPT\nCOMMIT\n"
	if diff := cmp.Diff(want, ipt); diff != "" {
		t.Errorf("iptables rules (-want +got):\n%s", diff)
	}
	nft := string(nftRuleset(10000, block))
	if n := strings.Count(nft, " . tcp . "); n != 10000 {
		t.Errorf("nft set has %d elements, want 10000", n)
	}
	if !strings.Contains(nft, "ip saddr . meta l4proto . th dport @deny drop") {
		t.Errorf("nft ruleset lacks the lookup rule")
	}
	// Entries are distinct up to the limit.
	seen := map[string]bool{}
	for i := range maxPolicyEntries {
		a, p := denyEntry(i)
		k := a.String() + ":" + string(rune(p))
		if seen[k] {
			t.Fatalf("entry %d repeats %s", i, k)
		}
		seen[k] = true
	}
}

func TestCheckDepsNamesPackages(t *testing.T) {
	cfg := Config{Topologies: []TopologySpec{{Kind: KindBridge}}, CNIPluginDir: t.TempDir()}
	err := CheckDeps(cfg)
	if err == nil || !strings.Contains(err.Error(), "Debian package containernetworking-plugins") || !strings.Contains(err.Error(), "apt-get install") {
		t.Errorf("CheckDeps = %v, want an error naming containernetworking-plugins", err)
	}
}
