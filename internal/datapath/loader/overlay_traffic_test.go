package loader

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	dplink "github.com/membrane-net/membrane/internal/datapath/link"
	"github.com/membrane-net/membrane/internal/testutil"
)

// The two-node cluster of TestOverlayTraffic.
var (
	clusterCIDR = netip.MustParsePrefix("10.210.0.0/16")
	attackerIP  = netip.MustParseAddr("172.30.0.99")
)

const (
	vxlanPort   = 8472
	overlayMTU  = 1450 // pod MTU in vxlan mode: 1500 on the fabric - 50 of VXLAN over IPv4
	idPod1      = 70001
	idPod2      = 70002
	idOtherPod  = 70003
	idRemote    = 6 // remote-node
	overlayName = "mbr_vxlan"
)

// testNode is one node of a multi-node test: a network namespace on the
// fabric with its own datapath, host devices, overlay device and one pod.
type testNode struct {
	name     string
	ns       netns.NsHandle
	nodeIP   netip.Addr
	podCIDR  netip.Prefix
	router   netip.Addr
	fabric   string // the node's fabric interface
	dp       *Datapath
	pod      testPod
	identity uint32 // the pod's
	vxlan    int    // mbr_vxlan ifindex
	events   *EventReader
}

// newNamedNetns creates a uniquely named network namespace, deleted when
// the test ends, and leaves the calling (locked) thread where it was.
func newNamedNetns(t *testing.T, prefix string) netns.NsHandle {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	name := prefix + testutil.UniqueSuffix()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	if err := netns.Set(cur); err != nil {
		t.Fatalf("return from netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	return ns
}

// inNode runs fn on the test's locked thread inside ns, then returns the
// thread to the namespace it was in. fn may call t.Fatal.
func inNode(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := netns.Set(cur); err != nil {
			panic(fmt.Sprintf("return to netns: %v", err)) // never leave the thread astray
		}
	}()
	fn()
}

// sysctl writes a sysctl such as "net/ipv4/ip_forward" inside ns.
func sysctl(t *testing.T, ns netns.NsHandle, key, val string) {
	t.Helper()
	inNetns(t, ns, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(val), 0o644)
	})
}

func nodeHandle(t *testing.T, ns netns.NsHandle) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// joinFabric connects ns to the fabric bridge (in the calling thread's
// netns) with a veth whose node end gets addr/24. It returns the node end's
// name.
func joinFabric(t *testing.T, bridge *netlink.Bridge, ns netns.NsHandle, addr netip.Addr) string {
	t.Helper()
	sfx := testutil.UniqueSuffix()
	name, peer := "fab"+sfx, "fabn"+sfx
	la := netlink.NewLinkAttrs()
	la.Name, la.MasterIndex = name, bridge.Index
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer,
		PeerNamespace: netlink.NsFd(int(ns))}); err != nil {
		t.Fatalf("add fabric veth %s: %v", name, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	h := nodeHandle(t, ns)
	pl, err := h.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return h.LinkSetUp(lo) },
		func() error { return h.LinkSetUp(pl) },
		func() error { return h.AddrAdd(pl, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, 24))}) },
	} {
		if err := step(); err != nil {
			t.Fatalf("configure fabric end %s: %v", peer, err)
		}
	}
	// Carrier changes reach the bridge port (and the qdiscs) through the
	// kernel's linkwatch, up to a second later: until then frames are lost.
	waitOperUp(t, netlink.LinkByName, name)
	waitOperUp(t, h.LinkByName, peer)
	return peer
}

// waitOperUp waits until ifname (looked up with byName) is operationally up.
func waitOperUp(t *testing.T, byName func(string) (netlink.Link, error), ifname string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		l, err := byName(ifname)
		if err != nil {
			t.Fatal(err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not up after 5s (operstate %s)", ifname, l.Attrs().OperState)
		}
	}
}

// newTestNode builds node i (1, 2) as the agent would in vxlan mode: the
// fabric link, mbr_host/mbr_net (internal/datapath/link) with the cluster
// CIDR routed out of mbr_host too, mbr_vxlan (external, dstport 8472,
// local node IP), a datapath with from_host and from_overlay attached and
// the overlay device set, and one pod with MTU 1450 as an endpoint.
func newTestNode(t *testing.T, bridge *netlink.Bridge, i int, identity uint32) *testNode {
	t.Helper()
	n := &testNode{
		name:     fmt.Sprintf("node%d", i),
		ns:       newNamedNetns(t, fmt.Sprintf("mbr-test-n%d-", i)),
		nodeIP:   netip.AddrFrom4([4]byte{172, 30, 0, byte(10 + i)}),
		podCIDR:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 210, byte(i), 0}), 24),
		router:   netip.AddrFrom4([4]byte{10, 210, byte(i), 1}),
		identity: identity,
	}
	// Before any device exists, so that every device inherits it: replies
	// from remote pods arrive on mbr_vxlan or the fabric, while their
	// routes point at mbr_host (the agent sets this too, or loose mode).
	sysctl(t, n.ns, "net/ipv4/conf/all/rp_filter", "0")
	sysctl(t, n.ns, "net/ipv4/conf/default/rp_filter", "0")
	sysctl(t, n.ns, "net/ipv4/ip_forward", "0") // vxlan mode needs no forwarding
	n.fabric = joinFabric(t, bridge, n.ns, n.nodeIP)

	h := nodeHandle(t, n.ns)
	var host dplink.HostDevices
	inNode(t, n.ns, func() {
		var err error
		host, err = dplink.EnsureHostDevices(dplink.HostConfig{RouterIP: n.router, PodCIDR: n.podCIDR})
		if err != nil {
			t.Fatal(err)
		}
	})
	if err := h.RouteAdd(&netlink.Route{LinkIndex: host.HostIfIndex, Dst: ipNet(clusterCIDR),
		Src: n.router.AsSlice(), Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatalf("route %s dev mbr_host: %v", clusterCIDR, err)
	}
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: overlayName}, FlowBased: true,
		Port: vxlanPort, SrcAddr: n.nodeIP.AsSlice(), Learning: false}
	if err := h.LinkAdd(vx); err != nil {
		t.Fatalf("add %s: %v", overlayName, err)
	}
	vl, err := h.LinkByName(overlayName)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(vl); err != nil {
		t.Fatal(err)
	}
	n.vxlan = vl.Attrs().Index

	pinDir := fmt.Sprintf("/sys/fs/bpf/membrane-test-%s-n%d", testutil.UniqueSuffix(), i)
	t.Cleanup(func() {
		if err := Unpin(pinDir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	n.dp = load(t, Config{PinDir: pinDir, RouterIPv4: n.router,
		EndpointMapSize: 64, RoutingMode: RoutingVXLAN})
	n.events = openEvents(t, n.dp)
	inNode(t, n.ns, func() {
		n.pod = addPodVia(t, n.ns, netip.AddrFrom4([4]byte{10, 210, byte(i), 10}), n.router)
		if err := n.dp.AttachHost(dplink.NetDevice, host.NetIfIndex); err != nil {
			t.Fatal(err)
		}
		if err := n.dp.AttachOverlay(overlayName, n.vxlan); err != nil {
			t.Fatal(err)
		}
		if err := n.dp.AttachEndpoint(n.pod.lxc.name, n.pod.lxc.index); err != nil {
			t.Fatal(err)
		}
	})
	if err := n.dp.SetOverlayDevice(n.vxlan); err != nil {
		t.Fatal(err)
	}
	// The agent's pod MTU in vxlan mode.
	for _, hh := range []*netlink.Handle{h, nodeHandle(t, n.pod.ns)} {
		name := n.pod.lxc.name
		if hh != h {
			name = "eth0"
		}
		l, err := hh.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if err := hh.LinkSetMTU(l, overlayMTU); err != nil {
			t.Fatal(err)
		}
	}
	n.setPodPolicy(t, 0, nil)
	if err := n.dp.UpsertIPCache(IPCacheEntry{Prefix: netip.PrefixFrom(n.pod.ip, 32), Identity: identity}); err != nil {
		t.Fatal(err)
	}
	return n
}

// setPodPolicy sets the pod's endpoint flags and policy map (nil: none) and
// flushes conntrack.
func (n *testNode) setPodPolicy(t *testing.T, flags uint16, pol map[PolicyKey]PolicyValue) {
	t.Helper()
	if err := n.dp.DeleteEndpointPolicy(1); err != nil {
		t.Fatal(err)
	}
	if pol != nil {
		if err := n.dp.SetEndpointPolicy(1, pol); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.dp.UpsertEndpoint(n.pod.ip, EndpointInfo{IfIndex: uint32(n.pod.lxc.index),
		PodMAC: n.pod.lxc.peerMAC, HostMAC: n.pod.lxc.mac, EndpointID: 1, Identity: n.identity,
		Flags: flags}); err != nil {
		t.Fatal(err)
	}
	if _, err := n.dp.FlushCT(); err != nil {
		t.Fatal(err)
	}
}

// peer makes n know o: its pod CIDR behind o's node IP, its pod's identity.
func (n *testNode) peer(t *testing.T, o *testNode) {
	t.Helper()
	if err := n.dp.UpsertTunnel(TunnelEntry{PodCIDR: o.podCIDR, NodeIP: o.nodeIP}); err != nil {
		t.Fatal(err)
	}
	if err := n.dp.UpsertIPCache(IPCacheEntry{Prefix: netip.PrefixFrom(o.pod.ip, 32), Identity: o.identity}); err != nil {
		t.Fatal(err)
	}
}

// linkStats returns the statistics of ifname in ns.
func linkStats(t *testing.T, ns netns.NsHandle, ifname string) netlink.LinkStatistics {
	t.Helper()
	h := nodeHandle(t, ns)
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	return *l.Attrs().Statistics
}

func (n *testNode) metrics(t *testing.T) map[MetricsKey]Counter {
	t.Helper()
	m, err := n.dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// wantEvent fails unless evs holds an event matching match.
func wantEvent(t *testing.T, where, what string, evs []Event, match func(Event) bool) {
	t.Helper()
	if slices.ContainsFunc(evs, match) {
		return
	}
	t.Errorf("%s: no event %s; got %d events:", where, what, len(evs))
	for _, e := range evs {
		t.Logf("  %v", e)
	}
}

// tcpBulk sends size bytes over one TCP connection from ns to an echo
// server and reads them back: segments of full MTU size, in both directions.
func tcpBulk(t *testing.T, ns netns.NsHandle, server netip.AddrPort, size int) {
	t.Helper()
	var conn net.Conn
	inNetns(t, ns, func() (err error) {
		conn, err = net.DialTimeout("tcp4", server.String(), 3*time.Second)
		return err
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte(strings.Repeat("membrane overlay ", size/17+1))[:size]
	errc := make(chan error, 1)
	go func() {
		_, err := conn.Write(msg)
		errc <- err
	}()
	buf := make([]byte, size)
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("read %d bytes of echo from %s: %v", size, server, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write to %s: %v", server, err)
	}
	if string(buf) != string(msg) {
		t.Fatalf("echo of %d bytes from %s differs", size, server)
	}
}

// udpReceived opens a UDP socket on addr:port in ns and returns a function
// that reports how many datagrams it has received so far.
func udpReceived(t *testing.T, ns netns.NsHandle, ap netip.AddrPort) func() int {
	t.Helper()
	var conn *net.UDPConn
	inNetns(t, ns, func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
		return err
	})
	t.Cleanup(func() { conn.Close() })
	got := make(chan struct{}, 1024)
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, _, err := conn.ReadFromUDPAddrPort(buf); err != nil {
				return
			}
			got <- struct{}{}
		}
	}()
	return func() int { return len(got) }
}

// TestOverlayTraffic runs real traffic between pods of two nodes: through
// the VXLAN overlay with the source identity in the VNI, then in native
// routing mode through the nodes' routes.
func TestOverlayTraffic(t *testing.T) {
	testutil.Privileged(t)
	// The test's thread stays in the fabric namespace: a bridge joining the
	// nodes and the attacker.
	fabric := inTestNetns(t)
	la := netlink.NewLinkAttrs()
	la.Name = "br0"
	bridge := &netlink.Bridge{LinkAttrs: la}
	if err := netlink.LinkAdd(bridge); err != nil {
		t.Fatalf("add bridge: %v", err)
	}
	if err := netlink.LinkSetUp(bridge); err != nil {
		t.Fatal(err)
	}

	n1 := newTestNode(t, bridge, 1, idPod1)
	n2 := newTestNode(t, bridge, 2, idPod2)
	n1.peer(t, n2)
	n2.peer(t, n1)

	echoUDP := udpEcho(t, n2.pod.ns, n2.pod.ip)
	echoTCP := tcpEcho(t, n2.pod.ns, n2.pod.ip, 8080)

	t.Run("vxlan: pod to pod", func(t *testing.T) {
		drainEvents(t, n1.events)
		drainEvents(t, n2.events)
		fab1, vx1, vx2 := linkStats(t, n1.ns, n1.fabric), linkStats(t, n1.ns, overlayName), linkStats(t, n2.ns, overlayName)

		udpRoundTrip(t, n1.pod.ns, echoUDP)
		tcpRoundTrip(t, n1.pod.ns, echoTCP)
		tcpBulk(t, n1.pod.ns, echoTCP, 1<<20)

		fab1b, vx1b, vx2b := linkStats(t, n1.ns, n1.fabric), linkStats(t, n1.ns, overlayName), linkStats(t, n2.ns, overlayName)
		if vx1b.TxPackets == vx1.TxPackets || vx2b.RxPackets == vx2.RxPackets || fab1b.TxPackets == fab1.TxPackets {
			t.Errorf("overlay counters did not move: node1 %s tx %d -> %d, node2 %s rx %d -> %d, node1 fabric tx %d -> %d",
				overlayName, vx1.TxPackets, vx1b.TxPackets, overlayName, vx2.RxPackets, vx2b.RxPackets,
				fab1.TxPackets, fab1b.TxPackets)
		}
		ev1, ev2 := drainEvents(t, n1.events), drainEvents(t, n2.events)
		wantEvent(t, "node1", "TO_OVERLAY of the SYN with pod1's identity", ev1, func(e Event) bool {
			return e.Type == EventTrace && e.ObsPoint == ObsToOverlay && e.Egress && e.Dst == echoTCP &&
				e.SrcIdentity == idPod1 && e.TCPFlags == tcpSYN && e.CTState == CTStateNew
		})
		wantEvent(t, "node2", "FROM_OVERLAY of the SYN with the VNI's identity", ev2, func(e Event) bool {
			return e.Type == EventTrace && e.ObsPoint == ObsFromOverlay && e.Dst == echoTCP &&
				e.SrcIdentity == idPod1 && e.TCPFlags == tcpSYN && e.CTState == CTStateNew && e.DstEP == 1
		})
		wantEvent(t, "node2", "TO_OVERLAY of the SYN-ACK with pod2's identity", ev2, func(e Event) bool {
			return e.Type == EventTrace && e.ObsPoint == ObsToOverlay && e.Src == echoTCP &&
				e.SrcIdentity == idPod2 && e.CTState == CTStateReply
		})
		wantEvent(t, "node1", "FROM_OVERLAY of the SYN-ACK", ev1, func(e Event) bool {
			return e.Type == EventTrace && e.ObsPoint == ObsFromOverlay && e.Src == echoTCP &&
				e.SrcIdentity == idPod2 && e.CTState == CTStateReply
		})
		ct, err := n2.dp.ListCT()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(ct, func(e CTEntry) bool { return e.Dst == echoTCP && e.SrcIdentity == idPod1 && e.SeenReply }) {
			t.Errorf("node2: no replied conntrack entry with source identity %d: %+v", idPod1, ct)
		}
	})

	t.Run("vxlan: ingress policy by the VNI identity", func(t *testing.T) {
		n1.setPodPolicy(t, 0, nil)
		n2.setPodPolicy(t, FlagIngressEnforced, map[PolicyKey]PolicyValue{
			{Identity: idPod1, Proto: protoUDP, Port: 5201, PortPrefixLen: 16}: {Cookie: 11},
		})
		drainEvents(t, n2.events)
		udpRoundTrip(t, n1.pod.ns, echoUDP)
		wantEvent(t, "node2", "allowing verdict for pod1's identity", drainEvents(t, n2.events), func(e Event) bool {
			return e.Type == EventPolicyVerdict && !e.Dropped && e.ObsPoint == ObsFromOverlay &&
				e.SrcIdentity == idPod1 && e.Cookie == 11
		})

		n1.setPodPolicy(t, 0, nil)
		n2.setPodPolicy(t, FlagIngressEnforced, map[PolicyKey]PolicyValue{
			{Identity: idOtherPod, Proto: protoUDP, Port: 5201, PortPrefixLen: 16}: {Cookie: 12},
		})
		before := n2.metrics(t)
		if udpEchoes(t, n1.pod.ns, echoUDP, 2) {
			t.Errorf("pod1 reached pod2 although only identity %d may", idOtherPod)
		}
		if d := metricsDelta(before, n2.metrics(t))[MetricsKey{Reason: DropPolicyNoRule}]; d.Packets == 0 {
			t.Errorf("node2: no ingress policy drop counted: %v", metricsDelta(before, n2.metrics(t)))
		}
		n2.setPodPolicy(t, 0, nil)
	})

	t.Run("vxlan: host to remote pod is remote-node", func(t *testing.T) {
		n2.setPodPolicy(t, 0, nil)
		udpRoundTrip(t, n1.ns, echoUDP)
		ct, err := n2.dp.ListCT()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(ct, func(e CTEntry) bool {
			return e.Src.Addr() == n1.router && e.Dst == echoUDP && e.SrcIdentity == idRemote && e.SeenReply
		}) {
			t.Errorf("node2: no replied conntrack entry from %s with identity remote-node: %+v", n1.router, ct)
		}
	})

	t.Run("vxlan: forged host identity from the fabric is dropped", func(t *testing.T) {
		enterNetns(t, fabric) // joinFabric adds to the bridge from here
		atk := newNamedNetns(t, "mbr-test-atk-")
		joinFabric(t, bridge, atk, attackerIP)
		h := nodeHandle(t, atk)
		// A plain VXLAN device with VNI 1 (host) towards node2.
		if err := h.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vx0"}, VxlanId: 1,
			Group: n2.nodeIP.AsSlice(), SrcAddr: attackerIP.AsSlice(), Port: vxlanPort, Learning: false}); err != nil {
			t.Fatalf("add attacker vxlan: %v", err)
		}
		vx, err := h.LinkByName("vx0")
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range []func() error{
			func() error { return h.LinkSetUp(vx) },
			func() error {
				return h.AddrAdd(vx, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.99.0.1/24"))})
			},
			func() error {
				return h.RouteAdd(&netlink.Route{LinkIndex: vx.Attrs().Index, Dst: ipNet(n2.podCIDR), Scope: netlink.SCOPE_LINK})
			},
			// No ARP across the overlay: address the frame by hand.
			func() error {
				return h.NeighAdd(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: netlink.FAMILY_V4,
					State: netlink.NUD_PERMANENT, IP: n2.pod.ip.AsSlice(), HardwareAddr: overlayMAC})
			},
		} {
			if err := step(); err != nil {
				t.Fatalf("configure attacker: %v", err)
			}
		}
		target := netip.AddrPortFrom(n2.pod.ip, 6000)
		received := udpReceived(t, n2.pod.ns, target)
		before := n2.metrics(t)
		rx := linkStats(t, n2.ns, overlayName)
		inNetns(t, atk, func() error {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(target))
			if err != nil {
				return err
			}
			defer c.Close()
			for range 3 {
				if _, err := c.Write([]byte("forged")); err != nil {
					return err
				}
			}
			return nil
		})
		// The datagrams wait for ARP of node2's address; give them time.
		var after map[MetricsKey]Counter
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			after = n2.metrics(t)
			if metricsDelta(before, after)[MetricsKey{Reason: DropInvalidIdentity}].Packets >= 3 {
				break
			}
		}
		time.Sleep(100 * time.Millisecond) // anything delivered would be read by now
		if d := metricsDelta(before, after)[MetricsKey{Reason: DropInvalidIdentity}]; d.Packets != 3 {
			t.Errorf("node2: INVALID_IDENTITY drops = %d, want 3 (overlay rx %d -> %d); delta %v", d.Packets,
				rx.RxPackets, linkStats(t, n2.ns, overlayName).RxPackets, metricsDelta(before, after))
		}
		if n := received(); n != 0 {
			t.Errorf("pod2 received %d forged datagrams", n)
		}
	})

	t.Run("native: pod to pod through the nodes' routes", func(t *testing.T) {
		vx1 := linkStats(t, n1.ns, overlayName)
		for _, p := range [][2]*testNode{{n1, n2}, {n2, n1}} {
			n, o := p[0], p[1]
			if err := n.dp.SetRoutingMode(RoutingNative); err != nil {
				t.Fatal(err)
			}
			n.setPodPolicy(t, 0, nil)
			h := nodeHandle(t, n.ns)
			// What the agent does in native mode: no cluster route to
			// mbr_host, the other pod CIDRs via their nodes (here static,
			// BGP in the lab), forwarding on. The tunnel entries stay and
			// are ignored in this mode.
			mbrHost, err := h.LinkByName(dplink.HostDevice)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.RouteDel(&netlink.Route{LinkIndex: mbrHost.Attrs().Index, Dst: ipNet(clusterCIDR),
				Scope: netlink.SCOPE_LINK}); err != nil {
				t.Fatalf("%s: delete cluster route: %v", n.name, err)
			}
			if err := h.RouteAdd(&netlink.Route{Dst: ipNet(o.podCIDR), Gw: o.nodeIP.AsSlice()}); err != nil {
				t.Fatalf("%s: route %s via %s: %v", n.name, o.podCIDR, o.nodeIP, err)
			}
			sysctl(t, n.ns, "net/ipv4/ip_forward", "1")
		}
		drainEvents(t, n2.events)
		udpRoundTrip(t, n1.pod.ns, echoUDP)
		tcpRoundTrip(t, n1.pod.ns, echoTCP)
		tcpBulk(t, n1.pod.ns, echoTCP, 256<<10)
		if vx1b := linkStats(t, n1.ns, overlayName); vx1b.TxPackets != vx1.TxPackets {
			t.Errorf("node1 %s sent %d packets in native mode", overlayName, vx1b.TxPackets-vx1.TxPackets)
		}
		wantEvent(t, "node2", "FROM_HOST of pod1's SYN with its identity from the ipcache", drainEvents(t, n2.events),
			func(e Event) bool {
				return e.Type == EventTrace && e.ObsPoint == ObsFromHost && e.Dst == echoTCP &&
					e.SrcIdentity == idPod1 && e.TCPFlags == tcpSYN && e.CTState == CTStateNew
			})

		n2.setPodPolicy(t, FlagIngressEnforced, map[PolicyKey]PolicyValue{
			{Identity: idPod1, Proto: protoUDP, Port: 5201, PortPrefixLen: 16}: {Cookie: 21},
		})
		n1.setPodPolicy(t, 0, nil)
		udpRoundTrip(t, n1.pod.ns, echoUDP)

		n2.setPodPolicy(t, FlagIngressEnforced, map[PolicyKey]PolicyValue{
			{Identity: idOtherPod, Proto: protoUDP, Port: 5201, PortPrefixLen: 16}: {Cookie: 22},
		})
		n1.setPodPolicy(t, 0, nil)
		before := n2.metrics(t)
		if udpEchoes(t, n1.pod.ns, echoUDP, 2) {
			t.Errorf("pod1 reached pod2 in native mode although only identity %d may", idOtherPod)
		}
		if d := metricsDelta(before, n2.metrics(t))[MetricsKey{Reason: DropPolicyNoRule}]; d.Packets == 0 {
			t.Errorf("node2: no ingress policy drop counted in native mode: %v", metricsDelta(before, n2.metrics(t)))
		}
	})
}
