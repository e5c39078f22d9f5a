package bench

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
)

// Cross-node topologies: the client pod on node A, the server pod on node
// B. Every one of them joins its two node namespaces the same way the lab
// does (internal/lab/fabric.go): a fabric namespace holding a Linux bridge
// br0, one veth per node whose fabric end is a bridge port and whose node
// end is the node's eth0, node A at .11 and node B at .12 of
// crossFabric(idx). The fabric has no address and no route; nothing in it
// reaches the machine's own interfaces.
//
// Addresses of cross-node topology idx:
//   - fabric 10.214.(100+idx).0/24, clear of the ptp plugin's allocations
//     at the bottom of 10.214.0.0/16 (in a namespace of its own anyway);
//   - kernel baselines: node k's pods in 10.215.(2·idx+k).0/24, the client
//     .2 of node A's block, the server .3 of node B's; pods route
//     10.215.0.0/16 to their node;
//   - Membrane labs: pod CIDRs allocated by the agents from the lab's
//     cluster CIDR (lab.DefaultClusterCIDR).

// crossFabric is the fabric prefix of cross-node topology idx.
func crossFabric(idx int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 214, byte(100 + idx), 0}), 24)
}

// crossNodeAddr is the fabric address of node k (0 = A, 1 = B), numbered
// as the lab numbers node k+1 (.10+i).
func crossNodeAddr(idx, k int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 214, byte(100 + idx), byte(11 + k)})
}

// crossPodCIDR is node k's pod CIDR in the kernel baselines.
func crossPodCIDR(idx, k int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 215, byte(2*idx + k), 0}), 24)
}

// crossClusterCIDR is what the kernel baselines' pods route to their node.
var crossClusterCIDR = netip.MustParsePrefix("10.215.0.0/16")

// addrIn is the address n places into p.
func addrIn(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().As4()
	b[3] += byte(n)
	return netip.AddrFrom4(b)
}

// Kernel VXLAN baseline parameters: flannel's vxlan backend.
const (
	kernelVXLANDev  = "vxlan1"
	kernelVXLANVNI  = 1
	kernelVXLANPort = 8472
	// overlayMTU is the pod MTU over VXLAN (1500 minus 50 bytes of
	// encapsulation), Membrane's and flannel's.
	overlayMTU = 1450
)

// vtepMAC is node k's VXLAN device address in the kernel baseline: fixed,
// locally administered, so that the static neighbour and FDB entries can
// be written before the device exists (flannel publishes the kernel's
// random one through its node annotations instead).
func vtepMAC(idx, k int) string {
	return fmt.Sprintf("02:6d:62:%02x:00:%02x", idx, k+1)
}

// crossSetupTimeout bounds how long the Membrane agents of a cross-node
// lab may take to see each other and carry a ping between the pods.
const crossSetupTimeout = 30 * time.Second

// ---- KERNEL-VXLAN, ROUTED-2NODE ----

// kernelTwoNode builds the two kernel baselines of the cross-node
// comparison. Pods are attached as in ROUTED: a veth to their node, the
// pod address /32, the link-local gateway as next hop, a /32 route on the
// node; ip_forward=1 and rp_filter=0 in the node namespaces only. No BPF.
//   - ROUTED-2NODE: node A routes node B's pod CIDR via B's fabric address
//     and vice versa (what BGP or a static route gives native routing).
//   - KERNEL-VXLAN: flannel's vxlan backend, its per-node state written by
//     hand: a vxlan device (VNI 1, UDP 8472, nolearning, local = node
//     address, MTU 1450) holding the node's pod CIDR's .0/32; for the other
//     node a permanent neighbour entry (its .0 → its VTEP MAC), an FDB
//     entry (VTEP MAC → its fabric address) and a route for its pod CIDR
//     via its .0 onlink through the device. Pod MTU 1450.
type kernelTwoNode struct {
	spec TopologySpec
	idx  int
}

func (k *kernelTwoNode) Describe() string {
	base := "two node namespaces on a fabric bridge (10.214.x.0/24), client pod on node A, server pod on node B, each pod a veth to its node with kernel routing (/32 routes, link-local gateway 169.254.1.1); no BPF"
	if k.spec.Kind == KindKernelVXLAN {
		return base + fmt.Sprintf("; flannel's vxlan model: a kernel vxlan device per node (VNI %d, dstport %d, nolearning, MTU %d) with static FDB and neighbour entries for the other node's VTEP and a route for its pod /24 through the device; pod MTU %d",
			kernelVXLANVNI, kernelVXLANPort, overlayMTU, overlayMTU)
	}
	return base + "; each node has a static route for the other node's pod /24 via that node's fabric address"
}

func (k *kernelTwoNode) Setup(ctx context.Context, env *Env) (Pair, error) {
	role := roleName(k.spec)
	fabric := env.NetnsName(role + "-f")
	nodes := [2]string{env.NetnsName(role + "-a"), env.NetnsName(role + "-b")}
	pods := [2]string{env.NetnsName(role + "-c"), env.NetnsName(role + "-s")}
	for _, ns := range []string{fabric, nodes[0], nodes[1], pods[0], pods[1]} {
		if err := env.CreateNetns(ctx, ns); err != nil {
			return Pair{}, err
		}
	}
	steps, pair := k.plan(fabric, nodes, pods)
	if err := runSteps(ctx, steps); err != nil {
		return Pair{}, fmt.Errorf("set up %s: %w", k.spec.Name(), err)
	}
	return pair, nil
}

// plan lists the commands that build the topology in existing namespaces
// (the fabric, nodes A and B, the client and server pods) and the pair
// they make; it touches nothing.
func (k *kernelTwoNode) plan(fabric string, nodes, pods [2]string) ([][]string, Pair) {
	vxlan := k.spec.Kind == KindKernelVXLAN
	podMTU := 1500
	if vxlan {
		podMTU = overlayMTU
	}
	steps := fabricSteps(fabric, nodes, crossFabric(k.idx).Bits(), func(i int) netip.Addr { return crossNodeAddr(k.idx, i) })
	gw := gatewayAddr.String()
	mtu := strconv.Itoa(podMTU)
	// The client (pod host part .2) on node A, the server (.3) on node B.
	podIP := [2]netip.Addr{addrIn(crossPodCIDR(k.idx, 0), 2), addrIn(crossPodCIDR(k.idx, 1), 3)}
	hostSide := [2]string{"vc", "vs"}
	for i := range 2 {
		n, p := nodes[i], pods[i]
		steps = append(steps,
			[]string{"ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
			[]string{"ip", "netns", "exec", n, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"},
			[]string{"ip", "link", "add", "name", "eth0", "netns", p, "type", "veth", "peer", "name", hostSide[i], "netns", n},
			[]string{"ip", "-n", p, "link", "set", "eth0", "mtu", mtu},
			[]string{"ip", "-n", n, "link", "set", hostSide[i], "mtu", mtu},
			[]string{"ip", "-n", p, "addr", "add", prefixOf(podIP[i], 32), "dev", "eth0"},
			[]string{"ip", "-n", p, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", p, "route", "add", gw, "dev", "eth0", "scope", "link"},
			// Only the cluster's pod block goes to the node: no default route.
			[]string{"ip", "-n", p, "route", "add", crossClusterCIDR.String(), "via", gw, "dev", "eth0"},
			[]string{"ip", "-n", n, "addr", "add", gw + "/32", "dev", hostSide[i]},
			[]string{"ip", "-n", n, "link", "set", hostSide[i], "up"},
			[]string{"ip", "-n", n, "route", "add", prefixOf(podIP[i], 32), "dev", hostSide[i]},
		)
	}
	for i := range 2 {
		o := 1 - i
		n := nodes[i]
		remote := crossPodCIDR(k.idx, o)
		if !vxlan {
			steps = append(steps, []string{"ip", "-n", n, "route", "add", remote.String(), "via", crossNodeAddr(k.idx, o).String(), "dev", "eth0"})
			continue
		}
		remoteVTEP := remote.Addr().String() // the other node's .0, on its vxlan device
		steps = append(steps,
			[]string{"ip", "-n", n, "link", "add", kernelVXLANDev, "type", "vxlan", "id", strconv.Itoa(kernelVXLANVNI),
				"dstport", strconv.Itoa(kernelVXLANPort), "local", crossNodeAddr(k.idx, i).String(), "dev", "eth0", "nolearning"},
			[]string{"ip", "-n", n, "link", "set", kernelVXLANDev, "address", vtepMAC(k.idx, i), "mtu", strconv.Itoa(overlayMTU)},
			[]string{"ip", "-n", n, "addr", "add", prefixOf(crossPodCIDR(k.idx, i).Addr(), 32), "dev", kernelVXLANDev},
			[]string{"ip", "-n", n, "link", "set", kernelVXLANDev, "up"},
			[]string{"ip", "-n", n, "neigh", "add", remoteVTEP, "lladdr", vtepMAC(k.idx, o), "dev", kernelVXLANDev, "nud", "permanent"},
			[]string{"ip", "netns", "exec", n, "bridge", "fdb", "append", vtepMAC(k.idx, o), "dev", kernelVXLANDev,
				"dst", crossNodeAddr(k.idx, o).String(), "self", "permanent"},
			[]string{"ip", "-n", n, "route", "add", remote.String(), "via", remoteVTEP, "dev", kernelVXLANDev, "onlink"},
		)
	}
	return steps, Pair{Client: Endpoint{Netns: pods[0], Addr: podIP[0]}, Server: Endpoint{Netns: pods[1], Addr: podIP[1]}}
}

// fabricSteps joins two node namespaces through a bridge in the fabric
// namespace, as the lab joins its nodes: veth "node<i+1>" in the fabric,
// enslaved to br0, its peer eth0 in the node with addr(i)/bits.
func fabricSteps(fabric string, nodes [2]string, bits int, addr func(int) netip.Addr) [][]string {
	steps := [][]string{
		{"ip", "-n", fabric, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", fabric, "link", "set", "br0", "up"},
	}
	for i, n := range nodes {
		port := "node" + strconv.Itoa(i+1)
		steps = append(steps,
			[]string{"ip", "link", "add", "name", port, "netns", fabric, "type", "veth", "peer", "name", "eth0", "netns", n},
			[]string{"ip", "-n", fabric, "link", "set", port, "master", "br0"},
			[]string{"ip", "-n", fabric, "link", "set", port, "up"},
			[]string{"ip", "-n", n, "addr", "add", prefixOf(addr(i), bits), "dev", "eth0"},
			[]string{"ip", "-n", n, "link", "set", "eth0", "up"},
		)
	}
	return steps
}

// ---- MEMBRANE-VXLAN-2NODE, MEMBRANE-NATIVE-2NODE ----

// membraneTwoNode is a two-node Membrane lab (internal/lab in vxlan mode:
// a fabric, a lab-wide etcd, an agent per node, pod CIDRs allocated
// through etcd), the client pod on node1 and the server pod on node2, both
// attached by membrane-cni.
//   - MEMBRANE-VXLAN-2NODE: the agents in --routing-mode vxlan (mbr_vxlan,
//     collect_md, encapsulation in BPF).
//   - MEMBRANE-NATIVE-2NODE: the agents in --routing-mode native (passed
//     after the lab's own flags, so it wins) without BGP: each node gets a
//     static route for the other node's pod CIDR via its fabric address,
//     as in ROUTED-2NODE. (The lab's native mode would put a bird router
//     between the nodes: one more hop than the baseline.)
type membraneTwoNode struct {
	spec      TopologySpec
	idx       int
	agentArgs []string // the run's extra agent flags
	lab       *lab.Lab
	info      MembraneInfo
}

func (m *membraneTwoNode) mode() string {
	if m.spec.Kind == KindMembraneNative2Node {
		return lab.ModeNative
	}
	return lab.ModeVXLAN
}

func (m *membraneTwoNode) Describe() string {
	d := "two-node Membrane lab: node namespaces on a fabric bridge (10.214.x.0/24), a lab etcd, membrane-agent per node, client pod on node1 and server pod on node2 attached by membrane-cni"
	if m.mode() == lab.ModeNative {
		return d + "; agents in `--routing-mode native` without BGP, a static route per node for the other node's pod /24 via its fabric address; pod MTU 1500"
	}
	return d + fmt.Sprintf("; agents in `--routing-mode vxlan` (external-mode vxlan device on UDP %d, encapsulation and identity in the VNI by BPF); pod MTU %d", kernelVXLANPort, overlayMTU)
}

func (m *membraneTwoNode) setAgentArgs(args []string) { m.agentArgs = args }
func (m *membraneTwoNode) labInfo() MembraneInfo      { return m.info }

func (m *membraneTwoNode) Setup(ctx context.Context, env *Env) (Pair, error) {
	name := fmt.Sprintf("bt%d-%s", m.idx, env.ID)
	args := slices.Clone(m.agentArgs)
	if m.mode() == lab.ModeNative {
		args = append(args, "--routing-mode="+lab.ModeNative)
	}
	m.info = MembraneInfo{Lab: name, AgentArgs: args}
	l, err := upLab(ctx, env, labSpec{name: name, nodes: 2, mode: lab.ModeVXLAN, nodeCIDR: crossFabric(m.idx), agentArgs: args})
	if err != nil {
		return Pair{}, err
	}
	m.lab = l
	nodes := l.Nodes()
	if len(nodes) != 2 {
		return Pair{}, fmt.Errorf("set up %s: lab %s has %d nodes, want 2", m.spec.Name(), name, len(nodes))
	}
	for _, n := range nodes {
		if !n.PodCIDR.IsValid() || !n.IP.IsValid() {
			return Pair{}, fmt.Errorf("set up %s: node %s has IP %v, pod CIDR %v", m.spec.Name(), n.Name, n.IP, n.PodCIDR)
		}
		m.info.Nodes = append(m.info.Nodes, LabNode{Name: n.Name, IP: n.IP, PodCIDR: n.PodCIDR})
	}
	if m.mode() == lab.ModeNative {
		for i, n := range nodes {
			o := nodes[1-i]
			if err := run(ctx, "ip", "-n", n.Netns, "route", "add", o.PodCIDR.String(), "via", o.IP.String(), "dev", "eth0"); err != nil {
				return Pair{}, fmt.Errorf("set up %s: %w", m.spec.Name(), err)
			}
		}
	}
	if err := m.waitCluster(ctx, nodes); err != nil {
		return Pair{}, fmt.Errorf("set up %s: %w", m.spec.Name(), err)
	}
	var pair Pair
	for i, pod := range []string{"client", "server"} {
		p, err := l.AddPod(ctx, lab.PodSpec{Namespace: benchPodNamespace, Name: pod, Node: nodes[i].Name,
			Labels: map[string]string{"app": "bench-" + pod}})
		if err != nil {
			return Pair{}, fmt.Errorf("set up %s: add %s pod on %s: %w", m.spec.Name(), pod, nodes[i].Name, err)
		}
		ep := Endpoint{Netns: p.Netns, Addr: p.IP}
		if i == 0 {
			pair.Client = ep
		} else {
			pair.Server = ep
		}
	}
	// The agents learn the other node's pods through etcd: wait until the
	// path carries a ping before the harness's own warm-up.
	if err := waitPath(ctx, env, pair, crossSetupTimeout); err != nil {
		return Pair{}, fmt.Errorf("set up %s: %w", m.spec.Name(), err)
	}
	st, err := api.NewClient(nodes[0].Socket).Status(ctx)
	if err != nil {
		return Pair{}, fmt.Errorf("set up %s: agent status: %w", m.spec.Name(), err)
	}
	m.info.MonitorLevel = st.Datapath.MonitorLevel
	return pair, nil
}

// waitCluster waits until every node's agent lists both nodes in the
// expected routing mode (each agent registers itself in etcd and watches
// the others), or crossSetupTimeout passes.
func (m *membraneTwoNode) waitCluster(ctx context.Context, nodes []lab.Node) error {
	want := m.mode()
	deadline := time.Now().Add(crossSetupTimeout)
	for _, n := range nodes {
		c := api.NewClient(n.Socket)
		for {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			seen, err := c.Nodes(sctx)
			cancel()
			if err == nil {
				got := 0
				for _, s := range seen {
					if s.RoutingMode != want {
						return fmt.Errorf("agent of %s lists node %s in routing mode %q, want %q", n.Name, s.Name, s.RoutingMode, want)
					}
					got++
				}
				if got == len(nodes) {
					if i := slices.IndexFunc(m.info.Nodes, func(x LabNode) bool { return x.Name == n.Name }); i >= 0 {
						m.info.Nodes[i].RoutingMode = want
					}
					break
				}
				err = fmt.Errorf("lists %d of %d nodes", got, len(nodes))
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("agent of %s does not see the cluster after %s: %w", n.Name, crossSetupTimeout, err)
			}
			sleepCtx(ctx, 200*time.Millisecond)
		}
	}
	return nil
}

// waitPath pings the server from the client until one ping is answered,
// ctx ends or timeout passes.
func waitPath(ctx context.Context, env *Env, pair Pair, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := env.ExecIn(ctx, pair.Client.Netns, 5*time.Second, "ping", "-c", "1", "-W", "1", pair.Server.Addr.String())
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no path from %s to %s after %s: %w", pair.Client.Addr, pair.Server.Addr, timeout, err)
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// LabNode is one node of a multi-node Membrane topology.
type LabNode struct {
	Name        string       `json:"name"`
	IP          netip.Addr   `json:"ip"`
	PodCIDR     netip.Prefix `json:"podCIDR"`
	RoutingMode string       `json:"routingMode,omitempty"` // as the agents list it
}
