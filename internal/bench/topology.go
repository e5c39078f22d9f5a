package bench

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Endpoint is one side of a benchmark: a network namespace and the address
// its server binds to (or its client sends from).
type Endpoint struct {
	Netns string     `json:"netns"`
	Addr  netip.Addr `json:"addr"`
	// Cgroup is the cgroup v2 directory the endpoint's processes must run
	// in ("" = wherever the harness runs): a Membrane pod's, for the
	// service topologies, whose translation happens in cgroup hooks.
	Cgroup string `json:"cgroup,omitempty"`
}

// Pair is what a topology hands to workloads: a client and a server.
type Pair struct {
	Client Endpoint `json:"client"`
	Server Endpoint `json:"server"`
	// Service, when set, is the address clients of the service workload
	// connect to instead of the server's (a cluster IP and port that the
	// datapath translates to the server).
	Service netip.AddrPort `json:"service,omitzero"`
}

// Topology is a datapath under test. Setup builds it inside namespaces the
// run owns, registers its own teardown with env.Defer (so teardown also runs
// when Setup fails half-way) and returns the pair of pods to measure.
type Topology interface {
	Setup(ctx context.Context, env *Env) (Pair, error)
	// Describe says in one line what was built, for the report.
	Describe() string
}

// topologyKinds builds a topology from its spec; idx is its position in
// the run (it picks the address block 10.213.<idx>.0/24).
var topologyKinds = map[string]func(spec TopologySpec, idx int) Topology{
	KindDirect:   func(s TopologySpec, i int) Topology { return &direct{spec: s, idx: i} },
	KindRouted:   func(s TopologySpec, i int) Topology { return &routed{spec: s, idx: i} },
	KindIPTables: func(s TopologySpec, i int) Topology { return &routed{spec: s, idx: i} },
	KindNFTSet:   func(s TopologySpec, i int) Topology { return &routed{spec: s, idx: i} },
	// Services (services.go).
	KindKubeProxyIPTables: func(s TopologySpec, i int) Topology { return &routed{spec: s, idx: i} },
	KindNFTVMap:           func(s TopologySpec, i int) Topology { return &routed{spec: s, idx: i} },
	KindMembraneSvc:       func(s TopologySpec, i int) Topology { return &membrane{spec: s, idx: i} },
	KindBridge:            func(s TopologySpec, i int) Topology { return &bridge{spec: s, idx: i} },
	KindMembrane:          func(s TopologySpec, i int) Topology { return &membrane{spec: s, idx: i} },
	KindMembranePolicy:    func(s TopologySpec, i int) Topology { return &membrane{spec: s, idx: i} },
	// Cross-node (topo_crossnode.go).
	KindKernelVXLAN:         func(s TopologySpec, i int) Topology { return &kernelTwoNode{spec: s, idx: i} },
	KindRouted2Node:         func(s TopologySpec, i int) Topology { return &kernelTwoNode{spec: s, idx: i} },
	KindMembraneVXLAN2Node:  func(s TopologySpec, i int) Topology { return &membraneTwoNode{spec: s, idx: i} },
	KindMembraneNative2Node: func(s TopologySpec, i int) Topology { return &membraneTwoNode{spec: s, idx: i} },
}

// labTopology is a topology built on Membrane labs: it takes the run's
// extra agent flags before Setup and reports what Setup found out.
type labTopology interface {
	Topology
	setAgentArgs([]string)
	labInfo() MembraneInfo
}

// roleName is the namespace role prefix of a topology: "direct",
// "iptables-10000".
func roleName(s TopologySpec) string { return strings.ToLower(s.Name()) }

// podAddr is the address of pod n (2 = client, 3 = server) of topology idx.
func podAddr(idx, n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 213, byte(idx), byte(n)})
}

func podPrefix(idx int) netip.Prefix {
	return netip.PrefixFrom(podAddr(idx, 0), 24)
}

// gatewayAddr is the link-local router address of the ROUTED topologies,
// like Membrane's router IP: on every node-side veth, the pods' next hop.
var gatewayAddr = netip.MustParseAddr("169.254.1.1")

// ---- DIRECT ----

// direct joins the client and server namespaces with one veth pair: the
// physical limit of a pod-to-pod path on this kernel.
type direct struct {
	spec TopologySpec
	idx  int
}

func (d *direct) Describe() string {
	return "client and server namespaces joined by one veth pair, one /24"
}

func (d *direct) Setup(ctx context.Context, env *Env) (Pair, error) {
	role := roleName(d.spec)
	c, s := env.NetnsName(role+"-c"), env.NetnsName(role+"-s")
	for _, ns := range []string{c, s} {
		if err := env.CreateNetns(ctx, ns); err != nil {
			return Pair{}, err
		}
	}
	ca, sa := podAddr(d.idx, 2), podAddr(d.idx, 3)
	steps := [][]string{
		// Created directly inside the two namespaces: nothing ever appears
		// in the machine's own namespace.
		{"ip", "link", "add", "name", "eth0", "netns", c, "type", "veth", "peer", "name", "eth0", "netns", s},
		{"ip", "-n", c, "addr", "add", prefixOf(ca, 24), "dev", "eth0"},
		{"ip", "-n", s, "addr", "add", prefixOf(sa, 24), "dev", "eth0"},
		{"ip", "-n", c, "link", "set", "eth0", "up"},
		{"ip", "-n", s, "link", "set", "eth0", "up"},
	}
	if err := runSteps(ctx, steps); err != nil {
		return Pair{}, fmt.Errorf("set up %s: %w", d.spec.Name(), err)
	}
	return Pair{Client: Endpoint{Netns: c, Addr: ca}, Server: Endpoint{Netns: s, Addr: sa}}, nil
}

func prefixOf(a netip.Addr, bits int) string { return a.String() + "/" + strconv.Itoa(bits) }

func runSteps(ctx context.Context, steps [][]string) error {
	for _, st := range steps {
		if err := run(ctx, st[0], st[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// ---- ROUTED, IPTABLES-N, NFT-SET-N ----

// routed gives each pod a veth to a node namespace that routes between them
// with the kernel: pod address /32 on eth0, the link-local gateway as next
// hop for the pod block, /32 routes on the node, ip_forward=1 in the node
// namespace only. No BPF, no bridge. The iptables and nftables variants add
// N never-matching policy entries in the node's forward path.
type routed struct {
	spec TopologySpec
	idx  int
	svc  *ServiceInstall // the service kinds
}

func (r *routed) serviceInstall() *ServiceInstall { return r.svc }

func (r *routed) Describe() string {
	base := "pods with a veth each to a node namespace; kernel routing (/32 routes, link-local gateway 169.254.1.1), no BPF"
	switch r.spec.Kind {
	case KindIPTables:
		return base + fmt.Sprintf("; iptables FORWARD chain with %d non-matching `-s 10.99.x.y/32 -p tcp --dport P -j DROP` rules before the ACCEPT", r.spec.PolicyEntries)
	case KindNFTSet:
		return base + fmt.Sprintf("; one nftables forward rule looking `ip saddr . meta l4proto . th dport` up in a %d-element hash set (never matching)", r.spec.PolicyEntries)
	case KindKubeProxyIPTables:
		return base + fmt.Sprintf("; %d services as kube-proxy's iptables mode writes them in the node's nat table "+
			"(PREROUTING/OUTPUT → KUBE-SERVICES, one `-d VIP/32 -p tcp --dport 80 -j KUBE-SVC-…` rule per service, KUBE-SVC-… → KUBE-SEP-… → DNAT, "+
			"KUBE-MARK-MASQ/KUBE-POSTROUTING masquerade marking), loaded with iptables-restore; the measured service's rule is the last of KUBE-SERVICES", r.spec.Services)
	case KindNFTVMap:
		return base + fmt.Sprintf("; %d services as kube-proxy's nftables mode writes them "+
			"(one `ip daddr . meta l4proto . th dport vmap @service-ips` lookup from the nat prerouting/output hooks, a chain per service and per endpoint that DNATs, masquerade marking), loaded with nft -f", r.spec.Services)
	}
	return base
}

func (r *routed) Setup(ctx context.Context, env *Env) (Pair, error) {
	role := roleName(r.spec)
	c, s, n := env.NetnsName(role+"-c"), env.NetnsName(role+"-s"), env.NetnsName(role+"-n")
	for _, ns := range []string{n, c, s} {
		if err := env.CreateNetns(ctx, ns); err != nil {
			return Pair{}, err
		}
	}
	ca, sa := podAddr(r.idx, 2), podAddr(r.idx, 3)
	gw := gatewayAddr.String()
	block := podPrefix(r.idx).String()
	steps := [][]string{
		{"ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
		{"ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"},
	}
	for _, p := range []struct {
		ns, host string
		addr     netip.Addr
	}{{c, "vc", ca}, {s, "vs", sa}} {
		steps = append(steps,
			[]string{"ip", "link", "add", "name", "eth0", "netns", p.ns, "type", "veth", "peer", "name", p.host, "netns", n},
			[]string{"ip", "-n", p.ns, "addr", "add", prefixOf(p.addr, 32), "dev", "eth0"},
			[]string{"ip", "-n", p.ns, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", p.ns, "route", "add", gw, "dev", "eth0", "scope", "link"},
			// Only the pod block goes to the node: no default route.
			[]string{"ip", "-n", p.ns, "route", "add", block, "via", gw, "dev", "eth0"},
			[]string{"ip", "-n", n, "addr", "add", gw + "/32", "dev", p.host},
			[]string{"ip", "-n", n, "link", "set", p.host, "up"},
			[]string{"ip", "-n", n, "route", "add", prefixOf(p.addr, 32), "dev", p.host},
		)
	}
	if r.spec.service() {
		// Services are reached through the node, as pods reach them with
		// kube-proxy (their default route).
		for _, ns := range []string{c, s} {
			steps = append(steps, []string{"ip", "-n", ns, "route", "add", serviceCIDR.String(), "via", gw, "dev", "eth0"})
		}
	}
	if err := runSteps(ctx, steps); err != nil {
		return Pair{}, fmt.Errorf("set up %s: %w", r.spec.Name(), err)
	}
	pair := Pair{Client: Endpoint{Netns: c, Addr: ca}, Server: Endpoint{Netns: s, Addr: sa}}
	switch r.spec.Kind {
	case KindKubeProxyIPTables, KindNFTVMap:
		node, n := n, r.spec.Services
		eps := []netip.AddrPort{netip.AddrPortFrom(sa, svcServerPort)}
		si := &ServiceInstall{Services: n, Measured: measuredServiceAddr(n), MeasuredPosition: measuredService(n)}
		var input []byte
		argv := []string{"ip", "netns", "exec", node, "iptables-restore"}
		if r.spec.Kind == KindKubeProxyIPTables {
			input, si.Rules = kubeProxyIPTables(n, eps, baselineClusterCIDR)
			si.How = "iptables-restore of the nat table (one file)"
		} else {
			input, si.Rules = nftVMap(n, eps, baselineClusterCIDR)
			argv = []string{"ip", "netns", "exec", node, "nft", "-f", "-"}
			si.How = "nft -f (one file)"
		}
		t0 := time.Now()
		if _, err := outputIn(ctx, 10*cmdTimeout, input, argv[0], argv[1:]...); err != nil {
			return Pair{}, fmt.Errorf("set up %s: load %d services: %w", r.spec.Name(), n, err)
		}
		si.InstallSeconds = time.Since(t0).Seconds()
		r.svc = si
		pair.Service = si.Measured
	}
	switch r.spec.Kind {
	case KindIPTables:
		if _, err := outputIn(ctx, 2*cmdTimeout, iptablesRules(r.spec.PolicyEntries, podPrefix(r.idx)), "ip", "netns", "exec", n, "iptables-restore"); err != nil {
			return Pair{}, fmt.Errorf("set up %s: load rules: %w", r.spec.Name(), err)
		}
	case KindNFTSet:
		if _, err := outputIn(ctx, 2*cmdTimeout, nftRuleset(r.spec.PolicyEntries, podPrefix(r.idx)), "ip", "netns", "exec", n, "nft", "-f", "-"); err != nil {
			return Pair{}, fmt.Errorf("set up %s: load ruleset: %w", r.spec.Name(), err)
		}
	}
	return pair, nil
}

// denyEntry is the i-th never-matching policy entry: a source in
// 10.99.0.0/16 (never used by any pod) and a TCP port; entries are
// distinct for every i below maxPolicyEntries.
func denyEntry(i int) (netip.Addr, int) {
	return netip.AddrFrom4([4]byte{10, 99, byte(i / 256 % 256), byte(i % 256)}), 1000 + i%50000
}

// iptablesRules is an iptables-restore input: N DROP rules that never match,
// then the ACCEPT for the pod block, so every forwarded packet walks all N.
func iptablesRules(n int, block netip.Prefix) []byte {
	var b strings.Builder
	b.WriteString("*filter\n:FORWARD ACCEPT [0:0]\n")
	for i := range n {
		src, port := denyEntry(i)
		fmt.Fprintf(&b, "-A FORWARD -s %s/32 -p tcp --dport %d -j DROP\n", src, port)
	}
	fmt.Fprintf(&b, "-A FORWARD -s %s -d %s -j ACCEPT\nCOMMIT\n", block, block)
	return []byte(b.String())
}

// nftRuleset is an nft -f input: one set of N (source, protocol, port)
// elements, one rule that looks every forwarded packet up in it.
func nftRuleset(n int, block netip.Prefix) []byte {
	var b strings.Builder
	b.WriteString("table inet mbb_bench {\n\tset deny {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tsize ")
	fmt.Fprintf(&b, "%d\n\t\telements = {\n", max(n, 1)*2)
	for i := range n {
		src, port := denyEntry(i)
		sep := ",\n"
		if i == n-1 {
			sep = "\n"
		}
		fmt.Fprintf(&b, "\t\t\t%s . tcp . %d%s", src, port, sep)
	}
	b.WriteString("\t\t}\n\t}\n")
	fmt.Fprintf(&b, "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n"+
		"\t\tip saddr . meta l4proto . th dport @deny drop\n\t\tip saddr %s ip daddr %s accept\n\t}\n}\n", block, block)
	return []byte(b.String())
}
