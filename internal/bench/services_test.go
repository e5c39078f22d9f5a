package bench

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/kvstore"
)

func TestServiceVIPs(t *testing.T) {
	seen := map[netip.Addr]bool{}
	for i := range maxServices {
		a := serviceVIP(i)
		if !serviceCIDR.Contains(a) || seen[a] || a.As4()[3] == 0 && a.As4()[2] == 0 {
			t.Fatalf("serviceVIP(%d) = %s: outside %s, repeated or the network address", i, a, serviceCIDR)
		}
		seen[a] = true
	}
	if got := measuredServiceAddr(30000); got != netip.MustParseAddrPort("10.96.117.57:80") {
		t.Errorf("measured service at 30000 = %s", got)
	}
}

// TestServiceManifestsFitOneApply: every batch is one apply the agent
// accepts (at most kvstore.MaxApplyObjects objects, a request body under
// the API's 1 MiB) and together they hold every service once.
func TestServiceManifestsFitOneApply(t *testing.T) {
	ms := serviceManifests(30000)
	if len(ms) != 15 {
		t.Fatalf("%d manifests for 30000 services, want 15", len(ms))
	}
	total := 0
	for i, m := range ms {
		var list struct {
			Kind  string `json:"kind"`
			Items []struct {
				Metadata struct{ Name string }      `json:"metadata"`
				Spec     struct{ ClusterIP string } `json:"spec"`
			} `json:"items"`
		}
		if err := json.Unmarshal([]byte(m), &list); err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(api.ApplyRequest{Manifest: m})
		if len(list.Items) > kvstore.MaxApplyObjects || len(body) >= 1<<20 || list.Kind != "List" {
			t.Errorf("batch %d: %d items, %d bytes of request", i, len(list.Items), len(body))
		}
		for j, it := range list.Items {
			k := total + j
			if it.Metadata.Name != serviceName(k) || it.Spec.ClusterIP != serviceVIP(k).String() {
				t.Errorf("batch %d item %d: %s %s, want %s %s", i, j, it.Metadata.Name, it.Spec.ClusterIP, serviceName(k), serviceVIP(k))
			}
		}
		total += len(list.Items)
	}
	if total != 30000 {
		t.Errorf("%d services in the manifests, want 30000", total)
	}
}

// TestKubeProxyIPTables checks the shape kube-proxy gives its rules: one
// KUBE-SERVICES rule per service in index order (the measured one last),
// a KUBE-SVC and a KUBE-SEP chain per service, statistic only with more
// than one endpoint left.
func TestKubeProxyIPTables(t *testing.T) {
	one := []netip.AddrPort{netip.MustParseAddrPort("10.213.9.3:18081")}
	in, lines := kubeProxyIPTables(3, one, baselineClusterCIDR)
	s := string(in)
	if lines != strings.Count(s, "\n") || !strings.HasPrefix(s, "*nat\n") || !strings.HasSuffix(s, "COMMIT\n") {
		t.Fatalf("not an iptables-restore nat input:\n%s", s)
	}
	var svcRules []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "-A KUBE-SERVICES ") {
			svcRules = append(svcRules, l)
		}
	}
	if len(svcRules) != 3 || !strings.Contains(svcRules[2], "-d "+measuredServiceAddr(3).Addr().String()+"/32 ") {
		t.Errorf("KUBE-SERVICES rules %q: want 3, the measured service's last", svcRules)
	}
	for _, want := range []string{"-j DNAT --to-destination 10.213.9.3:18081", "! -s 10.213.0.0/16", "-A PREROUTING", "-A OUTPUT", "MASQUERADE"} {
		if strings.Count(s, want) < 1 {
			t.Errorf("rules lack %q", want)
		}
	}
	if strings.Contains(s, "statistic") || strings.Count(s, ":KUBE-SVC-") != 3 || strings.Count(s, ":KUBE-SEP-") != 3 {
		t.Errorf("one endpoint: want 3 KUBE-SVC, 3 KUBE-SEP chains and no statistic:\n%s", s)
	}
	two := append(one, netip.MustParseAddrPort("10.213.9.4:18081"))
	in, _ = kubeProxyIPTables(1, two, baselineClusterCIDR)
	if got := strings.Count(string(in), "-m statistic --mode random --probability 0.5000000000"); got != 1 {
		t.Errorf("two endpoints: %d statistic rules, want 1 (the first endpoint at 1/2):\n%s", got, in)
	}
}

func TestNFTVMap(t *testing.T) {
	one := []netip.AddrPort{netip.MustParseAddrPort("10.213.9.3:18081")}
	in, _ := nftVMap(3, one, baselineClusterCIDR)
	s := string(in)
	for i := range 3 {
		if !strings.Contains(s, fmt.Sprintf("%s . tcp . 80 : goto service-", serviceVIP(i))) {
			t.Errorf("verdict map lacks service %d", i)
		}
	}
	for _, want := range []string{"type ipv4_addr . inet_proto . inet_service : verdict", "ip daddr . meta l4proto . th dport vmap @service-ips",
		"dnat to 10.213.9.3:18081", "hook prerouting", "hook output", "masquerade"} {
		if !strings.Contains(s, want) {
			t.Errorf("ruleset lacks %q", want)
		}
	}
	if strings.Contains(s, "numgen") {
		t.Errorf("one endpoint needs no numgen:\n%s", s)
	}
	in, _ = nftVMap(1, append(one, netip.MustParseAddrPort("10.213.9.4:18081")), baselineClusterCIDR)
	if !strings.Contains(string(in), "numgen random mod 2 vmap { 0 : goto endpoint-") {
		t.Errorf("two endpoints: want numgen random mod 2:\n%s", in)
	}
}

func TestServiceSpecs(t *testing.T) {
	full, err := Profile(ProfileFull)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range full.Topologies {
		if s.service() {
			names = append(names, s.Name())
			if !s.runs(WorkloadSvcCRR) || s.runs(WorkloadTCPCRR) {
				t.Errorf("%s: want svc-crr only", s.Name())
			}
		} else if s.runs(WorkloadSvcCRR) {
			t.Errorf("%s runs svc-crr", s.Name())
		}
	}
	want := "MEMBRANE-SVC-1 KUBE-PROXY-IPTABLES-1 NFT-VMAP-1 MEMBRANE-SVC-1000 KUBE-PROXY-IPTABLES-1000 NFT-VMAP-1000 " +
		"MEMBRANE-SVC-10000 KUBE-PROXY-IPTABLES-10000 NFT-VMAP-10000 MEMBRANE-SVC-30000 KUBE-PROXY-IPTABLES-30000 NFT-VMAP-30000"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("full profile's service topologies:\n got %s\nwant %s", got, want)
	}
	bad := Config{Profile: "x", Rounds: 1, Duration: 1e9, Topologies: []TopologySpec{{Kind: KindNFTVMap}, {Kind: KindDirect, Services: 3}, {Kind: KindMembraneSvc, Services: maxServices + 1}}}
	err = bad.Validate()
	for _, want := range []string{"NFT-VMAP-0: services 0", "DIRECT: services need kind", "services 32001 out of"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v, want it to mention %q", err, want)
		}
	}
}

// TestQuickProfileRounds: the main single-node comparisons keep 5
// interleaved rounds; only the cross-node part runs fewer.
func TestQuickProfileRounds(t *testing.T) {
	q, err := Profile(ProfileQuick)
	if err != nil {
		t.Fatal(err)
	}
	if q.Rounds < 5 {
		t.Errorf("quick has %d rounds, want at least 5", q.Rounds)
	}
	for _, s := range q.Topologies {
		if !s.crossNode() && s.Rounds != 0 {
			t.Errorf("%s runs in %d rounds only", s.Name(), s.Rounds)
		}
	}
}

func TestCRRReportValues(t *testing.T) {
	v, err := crrReport{Connections: 1000, Errors: 1, Seconds: 0.5, P50us: 100, P90us: 150, P99us: 200}.values()
	if err != nil || v["cps"] != 2000 || v["p99_us"] != 200 {
		t.Errorf("values = %v, %v", v, err)
	}
	if _, err := (crrReport{Connections: 100, Errors: 5, Seconds: 1, FirstError: "connect: refused"}).values(); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("5%% errors: %v, want a failure naming the first error", err)
	}
}

// TestRunCRR runs the connect/request/close loop against a local HTTP
// server that closes after answering, as nginx does with
// `Connection: close`, and against a port nobody listens on.
func TestRunCRR(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 512)
				if _, err := c.Read(buf); err == nil {
					_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"))
				}
			}()
		}
	}()
	addr := netip.MustParseAddrPort(ln.Addr().String())
	rep, err := runCRR(crrJob{Addr: addr, Duration: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Connections < 10 || rep.Errors != 0 || !(rep.P50us > 0 && rep.P50us <= rep.P99us) {
		t.Errorf("report %+v: want connections, no errors, 0 < p50 ≤ p99", rep)
	}
	if _, err := rep.values(); err != nil {
		t.Errorf("values: %v", err)
	}
	ln.Close()
	rep, err = runCRR(crrJob{Addr: addr, Duration: 50 * time.Millisecond})
	if err != nil || rep.Connections != 0 || rep.Errors == 0 || !strings.Contains(rep.FirstError, "connect") {
		t.Errorf("closed port: %+v, %v; want only errors naming the connect", rep, err)
	}
}

// svcResults are results of the service part alone: N = 1 and 30000,
// Membrane's p99 at 30000 being p99at30k over 3 rounds (100 at 1).
func svcResults(p99at30k float64) *Results {
	r := &Results{Version: ResultsVersion, Profile: "full", StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Config:    Config{Rounds: 3, Duration: 2 * time.Second},
		Host:      Host{Kernel: "6.1.0", CPUs: 2},
		Workloads: []WorkloadInfo{{Name: WorkloadSvcCRR, Metrics: (&svcCRR{}).Metrics()}}}
	for _, spec := range serviceTopologies([]int{1, 30000}) {
		r.Topologies = append(r.Topologies, TopologyInfo{Name: spec.Name(), Spec: spec, Description: "d",
			Services: &ServiceInstall{Services: spec.Services, Measured: measuredServiceAddr(spec.Services), MeasuredPosition: spec.Services - 1, How: "h", InstallSeconds: 1}})
	}
	for round := 1; round <= 3; round++ {
		for _, t := range r.Topologies {
			p99 := 100.0
			switch {
			case t.Spec.Kind == KindMembraneSvc && t.Spec.Services == 30000:
				p99 = p99at30k
			case t.Spec.Kind == KindKubeProxyIPTables && t.Spec.Services == 30000:
				p99 = 5000
			}
			r.Measurements = append(r.Measurements, Measurement{Round: round, Topology: t.Name, Workload: WorkloadSvcCRR,
				Values: map[string]float64{"cps": 1e6 / p99, "p50_us": p99 / 2, "p99_us": p99}})
		}
	}
	return r
}

func TestServicesReport(t *testing.T) {
	for _, tc := range []struct {
		p99    float64
		status string
	}{{104, "met"}, {106, "NOT met"}} {
		r := svcResults(tc.p99)
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
		if got := r.serviceTarget(); got.Status != tc.status || !strings.HasPrefix(got.Measured, fmt.Sprintf("%.3f", tc.p99/100)) {
			t.Errorf("p99 %v: target %+v, want %s", tc.p99, got, tc.status)
		}
		md := Render(r, "`x.json`")
		for _, want := range []string{"## Services", "### N = 30000", "| KUBE-PROXY-IPTABLES-30000 | 2500 (2500–2500) | 5000 (5000–5000) | 200.0 (200.0–200.0) |",
			"service 30000 of 30000 (10.96.117.57:80)", "### Installing the services", ChartServices} {
			if !strings.Contains(md, want) {
				t.Errorf("report lacks %q", want)
			}
		}
		if err := ServicesChart(r, t.TempDir()+"/s.png"); err != nil {
			t.Error(err)
		}
	}
	// A run without services shows a separate service run's section.
	q := fakeResults()
	if strings.Contains(Render(q, "`q.json`"), "## Services") || q.serviceTarget().Status != "not measured" {
		t.Error("results without services render a Services section or judge its target")
	}
	q.ServicesFrom, q.ServicesRef = svcResults(100), "`s.json`"
	md := Render(q, "`q.json`")
	if !strings.Contains(md, "## Services\n\n*From a separate run of the service part (`s.json`") || q.serviceTarget().Status != "met" {
		t.Errorf("separate service run not shown:\n%s", md)
	}
}
