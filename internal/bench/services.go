package bench

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/membrane-net/membrane/internal/api"
)

// Service scaling: N ClusterIP services, each with one TCP port (80) whose
// one endpoint is the server pod's svc-crr nginx, installed the way each
// datapath installs them:
//   - MEMBRANE-SVC-N: v1 Services applied to the lab agent (selector
//     app=bench-server, targetPort svcServerPort, cluster IPs given
//     explicitly so that every datapath has the same addresses), realised
//     by the socket-level load balancer (cgroup connect4/sendmsg4 hooks);
//   - KUBE-PROXY-IPTABLES-N: ROUTED plus the nat rules kube-proxy's
//     iptables mode writes (KUBE-SERVICES → KUBE-SVC-… → KUBE-SEP-… →
//     DNAT), loaded with iptables-restore in the node namespace;
//   - NFT-VMAP-N: ROUTED plus the ruleset kube-proxy's nftables mode
//     writes (a service-ips verdict map keyed by address . protocol .
//     port jumping to a chain per service that DNATs), loaded with nft -f.
//
// The measured service is the last one written (index N-1): iptables
// walks KUBE-SERVICES in order, so it is the worst case there (a service
// at a random position walks about N/2 rules); for Membrane and the
// verdict map its position does not matter.

// Service addressing.
const (
	// svcPort is every service's port; svcServerPort the target port, on
	// which the svc-crr workload's nginx listens in the server pod.
	svcPort       = 80
	svcServerPort = 18081
	// servicesPerApply keeps one apply under kvstore.MaxApplyObjects
	// (2048) and the agent API's 1 MiB request body (a test checks it).
	servicesPerApply = 2000
	// maxServices fits the agent's default --lb-map-size (65536 entries,
	// two per single-backend service port: the frontend and its slot) and
	// the first half of 10.96.0.0/16.
	maxServices = 32000
	// serviceInstallPoll is how often the agent's service list is read.
	serviceInstallPoll = 200 * time.Millisecond
)

// serviceCIDR is the agent's default --service-cidr; the baselines use the
// same addresses.
var serviceCIDR = netip.MustParsePrefix("10.96.0.0/16")

// baselineClusterCIDR is the pod range kube-proxy's masquerade rules
// exclude (its --cluster-cidr): every baseline pod is in 10.213.0.0/16.
var baselineClusterCIDR = netip.MustParsePrefix("10.213.0.0/16")

// serviceVIP is the cluster IP of service i: 10.96.0.10 + i.
func serviceVIP(i int) netip.Addr {
	v := 10 + i
	return netip.AddrFrom4([4]byte{10, 96, byte(v >> 8), byte(v)})
}

// serviceName is service i's name (namespace bench).
func serviceName(i int) string { return fmt.Sprintf("svc-%d", i) }

// measuredService is the index of the service the workload connects to.
func measuredService(n int) int { return n - 1 }

// measuredServiceAddr is where the svc-crr client connects with n services.
func measuredServiceAddr(n int) netip.AddrPort {
	return netip.AddrPortFrom(serviceVIP(measuredService(n)), svcPort)
}

// ServiceInstall is what installing a topology's services took.
type ServiceInstall struct {
	// Services is N.
	Services int `json:"services"`
	// Measured is the service the workload connects to and its position
	// in the order the services were written (0-based).
	Measured         netip.AddrPort `json:"measured"`
	MeasuredPosition int            `json:"measuredPosition"`
	// How: the command or API that installed them.
	How string `json:"how"`
	// InstallSeconds: iptables-restore or nft -f from start to exit; for
	// Membrane from the first apply to the agent's service list showing
	// all N with their backend active.
	InstallSeconds float64 `json:"installSeconds"`
	// ApplySeconds is the part of a Membrane install spent in the apply
	// calls (storing in etcd, cluster IP claims), Applies their number.
	ApplySeconds float64 `json:"applySeconds,omitempty"`
	Applies      int     `json:"applies,omitempty"`
	// LBMapServices is the number of service ports in the agent's
	// load-balancing map after the install (GET /v1/bpf/lb).
	LBMapServices int `json:"lbMapServices,omitempty"`
	// Rules is the size of the baseline's input (lines of the
	// iptables-restore file, or of the nft file).
	Rules int `json:"rules,omitempty"`
}

// serviceTopology is a topology that installs services.
type serviceTopology interface {
	serviceInstall() *ServiceInstall
}

// kubeChainHash is kube-proxy's way of naming a chain after what it
// serves: the first 16 characters of the base32 SHA-256 of the text.
func kubeChainHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// svcPortName is kube-proxy's "namespace/name:port" of service i.
func svcPortName(i int) string { return benchPodNamespace + "/" + serviceName(i) + ":http" }

// kubeProxyIPTables renders an iptables-restore input for the nat table
// as kube-proxy's iptables mode writes it for n single-port TCP services,
// each with the given endpoints:
//
//	PREROUTING, OUTPUT → KUBE-SERVICES
//	KUBE-SERVICES: one "-d VIP/32 -p tcp --dport 80 -j KUBE-SVC-…" per service, in index order
//	KUBE-SVC-…: mark for masquerade traffic from outside the cluster CIDR,
//	            then one jump per endpoint (statistic random 1/k when more than one is left)
//	KUBE-SEP-…: mark hairpin traffic for masquerade, DNAT to the endpoint
//	POSTROUTING → KUBE-POSTROUTING: masquerade what was marked (0x4000)
//
// kube-proxy's filter table rules (KUBE-FORWARD, firewall chains) and the
// nodeport jump are left out: the benchmark traffic is none of that. It
// returns the input and its number of lines.
func kubeProxyIPTables(n int, endpoints []netip.AddrPort, clusterCIDR netip.Prefix) ([]byte, int) {
	var b strings.Builder
	b.Grow(n * 900)
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	b.WriteString(":KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n")
	svc := make([]string, n)
	sep := make([][]string, n)
	for i := range n {
		name := svcPortName(i)
		svc[i] = "KUBE-SVC-" + kubeChainHash(name+"tcp")
		fmt.Fprintf(&b, ":%s - [0:0]\n", svc[i])
		for _, ep := range endpoints {
			c := "KUBE-SEP-" + kubeChainHash(name+"tcp"+ep.String())
			sep[i] = append(sep[i], c)
			fmt.Fprintf(&b, ":%s - [0:0]\n", c)
		}
	}
	b.WriteString(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
`)
	for i := range n {
		fmt.Fprintf(&b, "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport %d -j %s\n",
			serviceVIP(i), svcPortName(i), svcPort, svc[i])
	}
	for i := range n {
		name, vip := svcPortName(i), serviceVIP(i)
		fmt.Fprintf(&b, "-A %s ! -s %s -d %s/32 -p tcp -m comment --comment \"%s cluster IP\" -m tcp --dport %d -j KUBE-MARK-MASQ\n",
			svc[i], clusterCIDR, vip, name, svcPort)
		for j, ep := range endpoints {
			stat := ""
			if left := len(endpoints) - j; left > 1 {
				stat = fmt.Sprintf(" -m statistic --mode random --probability %.10f", 1/float64(left))
			}
			fmt.Fprintf(&b, "-A %s -m comment --comment \"%s -> %s\"%s -j %s\n", svc[i], name, ep, stat, sep[i][j])
			fmt.Fprintf(&b, "-A %s -s %s/32 -m comment --comment \"%s\" -j KUBE-MARK-MASQ\n", sep[i][j], ep.Addr(), name)
			fmt.Fprintf(&b, "-A %s -p tcp -m comment --comment \"%s\" -m tcp -j DNAT --to-destination %s\n", sep[i][j], name, ep)
		}
	}
	b.WriteString("COMMIT\n")
	s := b.String()
	return []byte(s), strings.Count(s, "\n")
}

// nftVMap renders an nft -f input as kube-proxy's nftables mode writes it
// for n single-port TCP services: the service-ips verdict map (cluster IP
// . protocol . port → goto the service's chain) looked up once from the
// nat prerouting and output hooks; a service chain marks traffic from
// outside the cluster CIDR for masquerade, then goes to its endpoint's
// chain (through `numgen random mod k` when it has k > 1 endpoints); an
// endpoint chain marks hairpin traffic and DNATs. Chain names follow
// kube-proxy's (hash, then a readable tail) with "-" for "/". It returns
// the input and its number of lines.
func nftVMap(n int, endpoints []netip.AddrPort, clusterCIDR netip.Prefix) ([]byte, int) {
	var b strings.Builder
	b.Grow(n * 700)
	b.WriteString("table ip kube-proxy {\n")
	b.WriteString("\tchain mark-for-masquerade {\n\t\tmeta mark set meta mark | 0x4000\n\t}\n")
	b.WriteString("\tchain masquerading {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n" +
		"\t\tmeta mark & 0x4000 == 0 return\n\t\tmeta mark set meta mark ^ 0x4000\n\t\tmasquerade fully-random\n\t}\n")
	b.WriteString("\tchain nat-prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services\n\t}\n")
	b.WriteString("\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}\n")
	svc := make([]string, n)
	for i := range n {
		tail := benchPodNamespace + "-" + serviceName(i) + "-tcp-http"
		svc[i] = "service-" + kubeChainHash(svcPortName(i) + "tcp")[:8] + "-" + tail
		var eps []string
		for _, ep := range endpoints {
			c := "endpoint-" + kubeChainHash(svcPortName(i) + "tcp" + ep.String())[:8] + "-" + tail + "__" +
				strings.ReplaceAll(ep.Addr().String(), ".", "-") + "-" + fmt.Sprint(ep.Port())
			eps = append(eps, c)
			fmt.Fprintf(&b, "\tchain %s {\n\t\tip saddr %s jump mark-for-masquerade\n\t\tmeta l4proto tcp dnat to %s\n\t}\n", c, ep.Addr(), ep)
		}
		fmt.Fprintf(&b, "\tchain %s {\n\t\tip daddr %s tcp dport %d ip saddr != %s jump mark-for-masquerade\n", svc[i], serviceVIP(i), svcPort, clusterCIDR)
		if len(eps) == 1 {
			fmt.Fprintf(&b, "\t\tgoto %s\n\t}\n", eps[0])
		} else {
			fmt.Fprintf(&b, "\t\tnumgen random mod %d vmap { ", len(eps))
			for j, c := range eps {
				if j > 0 {
					b.WriteString(", ")
				}
				fmt.Fprintf(&b, "%d : goto %s", j, c)
			}
			b.WriteString(" }\n\t}\n")
		}
	}
	b.WriteString("\tmap service-ips {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n")
	if n > 0 {
		b.WriteString("\t\telements = {\n")
		for i := range n {
			sep := ",\n"
			if i == n-1 {
				sep = "\n"
			}
			fmt.Fprintf(&b, "\t\t\t%s . tcp . %d : goto %s%s", serviceVIP(i), svcPort, svc[i], sep)
		}
		b.WriteString("\t\t}\n")
	}
	b.WriteString("\t}\n")
	b.WriteString("\tchain services {\n\t\tip daddr . meta l4proto . th dport vmap @service-ips\n\t}\n}\n")
	s := b.String()
	return []byte(s), strings.Count(s, "\n")
}

// serviceManifests renders n v1 Services selecting the bench server pod,
// as "kind: List" JSON manifests of at most servicesPerApply items.
func serviceManifests(n int) []string {
	var out []string
	for first := 0; first < n; first += servicesPerApply {
		var items []any
		for i := first; i < min(n, first+servicesPerApply); i++ {
			items = append(items, map[string]any{
				"apiVersion": "v1",
				"kind":       "Service",
				"metadata":   map[string]string{"name": serviceName(i), "namespace": benchPodNamespace},
				"spec": map[string]any{
					"clusterIP": serviceVIP(i).String(),
					"selector":  map[string]string{"app": "bench-server"},
					"ports":     []any{map[string]any{"name": "http", "protocol": "TCP", "port": svcPort, "targetPort": svcServerPort}},
				},
			})
		}
		b, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
		if err != nil {
			panic(err) // maps of strings and numbers always marshal
		}
		out = append(out, string(b))
	}
	return out
}

// serviceAPI is the part of the agent API installing services uses.
type serviceAPI interface {
	Apply(ctx context.Context, r api.ApplyRequest) (api.ApplyResponse, error)
	Status(ctx context.Context) (api.Status, error)
	Services(ctx context.Context) ([]api.Service, error)
	BPFLB(ctx context.Context) (api.BPFLB, error)
}

// serviceInstallTimeout bounds installing n services (every one claims
// its cluster IP in an etcd transaction, and the agent recomputes every
// service on each change).
func serviceInstallTimeout(n int) time.Duration {
	return time.Minute + time.Duration(n)*20*time.Millisecond
}

// installServices applies n services in batches without waiting (the
// agent coalesces what it has not computed yet), then waits until the
// agent realises the last revision and its service list shows all n with
// the measured one's backend, server, active.
func installServices(ctx context.Context, c serviceAPI, n int, server netip.Addr) (*ServiceInstall, error) {
	si := &ServiceInstall{Services: n, Measured: measuredServiceAddr(n), MeasuredPosition: measuredService(n),
		How: "membrane apply (v1 Services, kind: List of at most 2000, without waiting), until the agent's service list shows all of them"}
	t0 := time.Now()
	var last int64
	for i, m := range serviceManifests(n) {
		resp, err := c.Apply(ctx, api.ApplyRequest{Manifest: m})
		if err != nil {
			return nil, fmt.Errorf("apply services (batch %d of %d services): %w", i+1, n, err)
		}
		last = max(last, resp.Revision)
		si.Applies++
	}
	si.ApplySeconds = time.Since(t0).Seconds()
	timeout := serviceInstallTimeout(n)
	if err := waitRealized(ctx, c, last, timeout); err != nil {
		return nil, fmt.Errorf("install %d services: %w", n, err)
	}
	want := netip.AddrPortFrom(server, svcServerPort)
	deadline := t0.Add(timeout)
	for {
		svcs, err := c.Services(ctx)
		got, ok := 0, false
		if err == nil {
			got, ok = countServices(svcs, si.Measured, want)
		}
		if err == nil && got == n && ok {
			break
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("install %d services: after %s the agent lists %d with a backend (measured %s → %s active: %v; err %v)",
				n, timeout, got, si.Measured, want, ok, err)
		}
		sleepCtx(ctx, serviceInstallPoll)
	}
	si.InstallSeconds = time.Since(t0).Seconds()
	lb, err := c.BPFLB(ctx)
	if err != nil {
		return nil, fmt.Errorf("dump load-balancing maps: %w", err)
	}
	si.LBMapServices = len(lb.Services)
	if si.LBMapServices < n {
		return nil, fmt.Errorf("install %d services: the load-balancing map holds %d service ports", n, si.LBMapServices)
	}
	return si, nil
}

// countServices counts the bench services that have a ClusterIP frontend
// with at least one active backend, and reports whether the measured
// frontend's backend is want.
func countServices(svcs []api.Service, measured, want netip.AddrPort) (int, bool) {
	n, ok := 0, false
	for _, s := range svcs {
		if !strings.HasPrefix(s.Name, benchPodNamespace+"/") {
			continue
		}
		for _, fe := range s.Frontends {
			if fe.Kind != "ClusterIP" || len(fe.Backends) == 0 || fe.Backends[0].State != "active" {
				continue
			}
			n++
			if fe.Address == measured && fe.Backends[0].Address == want {
				ok = true
			}
		}
	}
	return n, ok
}
