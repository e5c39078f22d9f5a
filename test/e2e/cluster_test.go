package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
	"github.com/membrane-net/membrane/internal/testutil"
)

func newClusterLab(t *testing.T, mode, etcd string, nodes int) *lab.Lab {
	return newLab(t, func(c *lab.Config) {
		c.Nodes, c.Mode, c.Etcd = nodes, mode, etcd
		c.NodeLeaseTTL = 6 * time.Second
	})
}

func fullMatrix(t *testing.T, ctx context.Context, l *lab.Lab, when string, specs ...lab.ProbeSpec) {
	t.Helper()
	if len(specs) == 0 {
		specs = []lab.ProbeSpec{{Proto: "tcp", Port: 8080}, {Proto: "udp", Port: 9090}}
	}
	for _, spec := range specs {
		spec.Timeout = time.Second
		m, err := l.Probe(ctx, spec)
		if err != nil {
			t.Fatalf("%s: probe: %v", when, err)
		}
		if !m.Full() {
			var b strings.Builder
			_ = m.Render(&b)
			t.Errorf("%s: %s/%d matrix not full:\n%s", when, spec.Proto, spec.Port, b.String())
		}
	}
}

// reach reports whether src reaches dst on TCP 8080 (the lab server).
func reach(t *testing.T, src lab.Pod, dst netip.Addr) bool {
	t.Helper()
	c, err := tcpDialIn(t, src.Netns, netip.AddrPortFrom(dst, 8080))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func podsOn(t *testing.T, ctx context.Context, l *lab.Lab, names map[string]string) map[string]lab.Pod {
	t.Helper()
	out := map[string]lab.Pod{}
	for name, nodeName := range names {
		p, err := l.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: name, Labels: map[string]string{"app": name}, Node: nodeName})
		if err != nil {
			t.Fatalf("add pod %s on %s: %v", name, nodeName, err)
		}
		out[name] = p
	}
	return out
}

func nodeClient(t *testing.T, l *lab.Lab, name string) *api.Client {
	t.Helper()
	n, err := l.NodeByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(n.Socket)
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestClusterVXLAN: three nodes on the overlay with the lab's etcd. Covers
// cross-node traffic, a forged VXLAN packet claiming the host identity, an
// agent restart that interrupts no connection on any node, an etcd outage
// (forwarding continues, the agents resynchronise), and nodes leaving and
// joining.
func TestClusterVXLAN(t *testing.T) {
	l := newClusterLab(t, lab.ModeVXLAN, lab.EtcdEmbedded, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pods := podsOn(t, ctx, l, map[string]string{"a": "node1", "b": "node2", "c": "node3"})
	fullMatrix(t, ctx, l, "three nodes")

	t.Run("forged VNI of the host identity is dropped", func(t *testing.T) {
		n2, err := l.NodeByName("node2")
		if err != nil {
			t.Fatal(err)
		}
		attacker := attachToFabric(t, l, "172.30.0.240/24")
		b := pods["b"]
		// A plain VXLAN device with VNI 1 (reserved:host) pointed at node2,
		// and a route to pod b through it.
		for _, args := range [][]string{
			{"link", "add", "vx0", "type", "vxlan", "id", "1", "remote", n2.IP.String(), "dstport", "8472", "dev", "eth0"},
			{"link", "set", "vx0", "up"},
			{"addr", "add", "10.99.99.1/32", "dev", "vx0"},
			{"neigh", "add", b.IP.String(), "lladdr", "02:00:00:00:00:02", "dev", "vx0"},
			{"route", "add", b.IP.String() + "/32", "dev", "vx0"},
		} {
			if out, err := exec.Command("ip", append([]string{"-n", attacker}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
		err = inNetns(t, attacker, func() error {
			c, err := net.Dial("udp", netip.AddrPortFrom(b.IP, 9090).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
			for range 3 {
				_, _ = c.Write([]byte("forged"))
			}
			buf := make([]byte, 64)
			if n, err := c.Read(buf); err == nil {
				return fmt.Errorf("pod b answered a forged packet: %q", buf[:n])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		c2 := api.NewClient(n2.Socket)
		var found bool
		_ = c2.Flows(ctx, api.FlowQuery{Verdict: "DROPPED", To: []string{b.IP.String()}}, func(f api.Flow) error {
			if f.DropReason == "INVALID_IDENTITY" {
				found = true
			}
			return nil
		})
		if !found {
			t.Error("node2 shows no INVALID_IDENTITY drop for the forged packets")
		}
	})

	t.Run("agent restart interrupts no connection", func(t *testing.T) {
		// Two live connections: a→b crosses node2, a→c does not.
		type conn struct {
			c net.Conn
			r *bufio.Reader
		}
		var conns []conn
		for _, dst := range []string{"b", "c"} {
			var ln net.Listener
			if err := inNetns(t, pods[dst].Netns, func() error {
				var err error
				ln, err = net.Listen("tcp", netip.AddrPortFrom(pods[dst].IP, 7300).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go echo(ln)
			c, err := tcpDialIn(t, pods["a"].Netns, netip.AddrPortFrom(pods[dst].IP, 7300))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conns = append(conns, conn{c, bufio.NewReader(c)})
		}
		stop := make(chan struct{})
		errc := make(chan error, 1)
		go func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					errc <- nil
					return
				case <-time.After(20 * time.Millisecond):
				}
				for j, c := range conns {
					if err := roundTrip(c.c, c.r, fmt.Sprintf("msg %d", i)); err != nil {
						errc <- fmt.Errorf("connection %d: %w", j, err)
						return
					}
				}
			}
		}()
		if err := l.RestartAgent(ctx, "node2"); err != nil {
			close(stop)
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		close(stop)
		if err := <-errc; err != nil {
			t.Fatalf("traffic interrupted by node2's agent restart: %v", err)
		}
	})

	t.Run("etcd outage", func(t *testing.T) {
		if err := l.StopEtcd(ctx); err != nil {
			t.Fatal(err)
		}
		// The datapath keeps forwarding with the last known state.
		fullMatrix(t, ctx, l, "etcd down", lab.ProbeSpec{Proto: "tcp", Port: 8080})
		if err := l.StartEtcd(ctx); err != nil {
			t.Fatal(err)
		}
		// The agents reconnect and resynchronise: a policy applied now is
		// enforced by every node.
		c1 := nodeClient(t, l, "node1")
		var out api.ApplyResponse
		eventually(t, 60*time.Second, "apply after etcd recovery", func() bool {
			var err error
			out, err = c1.Apply(ctx, api.ApplyRequest{Manifest: `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-isolated}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
`})
			return err == nil
		})
		for _, n := range []string{"node1", "node2", "node3"} {
			waitRealized(t, ctx, nodeClient(t, l, n), out.Revision)
			_, _ = nodeClient(t, l, n).BPFCTFlush(ctx)
		}
		if reach(t, pods["a"], pods["c"].IP) {
			t.Error("a reaches c although c is isolated (policy applied after the outage)")
		}
		if !reach(t, pods["a"], pods["b"].IP) {
			t.Error("a no longer reaches b")
		}
		del, err := c1.DeleteResources(ctx, api.ApplyRequest{Manifest: `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-isolated}
spec: {podSelector: {}}
`, Wait: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"node1", "node2", "node3"} {
			waitRealized(t, ctx, nodeClient(t, l, n), del.Revision)
		}
	})

	t.Run("node leaves and joins", func(t *testing.T) {
		n3, err := l.NodeByName("node3")
		if err != nil {
			t.Fatal(err)
		}
		c1 := nodeClient(t, l, "node1")
		if err := l.RemoveNode(ctx, "node3"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node3 gone from node1's view", func() bool {
			nodes, err := c1.Nodes(ctx)
			if err != nil {
				return false
			}
			tunnels, err := c1.BPFTunnels(ctx)
			if err != nil {
				return false
			}
			ipc, err := c1.BPFIPCache(ctx)
			if err != nil {
				return false
			}
			for _, n := range nodes {
				if n.Name == n3.AgentName {
					return false
				}
			}
			for _, tn := range tunnels {
				if tn.PodCIDR == n3.PodCIDR {
					return false
				}
			}
			for _, e := range ipc {
				if e.Prefix.Addr() == pods["c"].IP || e.Prefix.Addr() == n3.IP {
					return false
				}
			}
			return true
		})
		n4, err := l.AddNode(ctx)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node1 tunnels to the new node", func() bool {
			tunnels, err := c1.BPFTunnels(ctx)
			if err != nil {
				return false
			}
			for _, tn := range tunnels {
				if tn.PodCIDR == n4.PodCIDR && tn.NodeIP == n4.IP {
					return true
				}
			}
			return false
		})
		d := podsOn(t, ctx, l, map[string]string{"d": n4.Name})["d"]
		eventually(t, 15*time.Second, "a reaches the pod on the new node", func() bool { return reach(t, pods["a"], d.IP) })
	})
}

// attachToFabric creates a namespace on the lab's fabric bridge with addr
// and removes it at cleanup.
func attachToFabric(t *testing.T, l *lab.Lab, addr string) string {
	t.Helper()
	name := "mbr-atk-" + testutil.UniqueSuffix()
	fabric := "mbr-" + l.Name() + "-fabric"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	fh, err := netns.GetFromName(fabric)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	h, err := netlink.NewHandleAt(fh)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ah, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ah.Close()
	peer := "atk" + testutil.UniqueSuffix()[:4]
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: peer}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ah))}); err != nil {
		t.Fatalf("veth into fabric: %v", err)
	}
	br, err := h.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	l0, err := h.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetMaster(l0, br); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l0); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"link", "set", "eth0", "up"}, {"addr", "add", addr, "dev", "eth0"}} {
		if out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	time.Sleep(time.Second) // a new bridge port needs a moment to forward
	return name
}

// TestClusterNativeBGP: three nodes routed natively through a bird2 router
// with three external etcd members. Covers the router's learned routes,
// traffic stopping when a BGP session is torn down, and the loss of one
// etcd member changing nothing.
func TestClusterNativeBGP(t *testing.T) {
	l := newClusterLab(t, lab.ModeNative, lab.EtcdExternal, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	pods := podsOn(t, ctx, l, map[string]string{"a": "node1", "b": "node2", "c": "node3"})

	// The router learns every node's pod CIDR (sessions take a few
	// seconds to come up), asked from bird's own CLI.
	var routes string
	eventually(t, 45*time.Second, "the router learns every node's pod CIDR", func() bool {
		var err error
		if routes, err = l.RouterCommand(ctx, "show", "route"); err != nil {
			return false
		}
		for _, n := range l.Nodes() {
			if !strings.Contains(routes, n.PodCIDR.String()) || !strings.Contains(routes, "via "+n.IP.String()) {
				return false
			}
		}
		return true
	})
	t.Logf("router table:\n%s", routes)
	fullMatrix(t, ctx, l, "native, three nodes")
	if peers, err := nodeClient(t, l, "node1").BGPPeers(ctx); err != nil || len(peers) != 1 || peers[0].State != "established" {
		t.Errorf("node1 BGP peers = %+v, %v", peers, err)
	}

	t.Run("BGP session down stops traffic", func(t *testing.T) {
		n2, _ := l.NodeByName("node2")
		if _, err := l.RouterCommand(ctx, "disable", "node2"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "router withdraws node2's route", func() bool {
			out, err := l.RouterCommand(ctx, "show", "route")
			return err == nil && !strings.Contains(out, n2.PodCIDR.String())
		})
		if reach(t, pods["a"], pods["b"].IP) {
			t.Error("a still reaches b on node2 without node2's route")
		}
		if !reach(t, pods["a"], pods["c"].IP) {
			t.Error("a lost c on node3")
		}
		if _, err := l.RouterCommand(ctx, "enable", "node2"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "traffic to node2 again", func() bool { return reach(t, pods["a"], pods["b"].IP) })
	})

	t.Run("an agent restart keeps its routes at the router (graceful restart)", func(t *testing.T) {
		n3, _ := l.NodeByName("node3")
		if err := l.StopAgent(ctx, "node3"); err != nil {
			t.Fatal(err)
		}
		// The session is gone, the route stays (stale) and traffic flows.
		time.Sleep(2 * time.Second)
		out, err := l.RouterCommand(ctx, "show", "route")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, n3.PodCIDR.String()) {
			t.Errorf("with node3's agent stopped the router dropped its pod CIDR:\n%s", out)
		}
		if !reach(t, pods["a"], pods["c"].IP) {
			t.Error("a lost c while node3's agent was down")
		}
		if err := l.StartAgent(ctx, "node3"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node3's session is back", func() bool {
			peers, err := nodeClient(t, l, "node3").BGPPeers(ctx)
			return err == nil && len(peers) == 1 && peers[0].State == "established"
		})
		if !reach(t, pods["a"], pods["c"].IP) {
			t.Error("a does not reach c after node3's agent restarted")
		}
	})

	t.Run("losing one of three etcd members changes nothing", func(t *testing.T) {
		if err := l.StopEtcdMember(ctx, 1); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := l.StartEtcdMember(ctx, 1); err != nil {
				t.Error(err)
			}
		}()
		c1 := nodeClient(t, l, "node1")
		out, err := c1.Apply(ctx, api.ApplyRequest{Manifest: `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-isolated}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
`, Wait: true})
		if err != nil {
			t.Fatalf("apply with one etcd member down: %v", err)
		}
		for _, n := range []string{"node1", "node2", "node3"} {
			waitRealized(t, ctx, nodeClient(t, l, n), out.Revision)
			_, _ = nodeClient(t, l, n).BPFCTFlush(ctx)
		}
		if reach(t, pods["a"], pods["b"].IP) {
			t.Error("b is isolated but a reaches it")
		}
		p, err := l.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: "e", Node: "node3"})
		if err != nil {
			t.Fatalf("CNI ADD with one etcd member down: %v", err)
		}
		if !reach(t, pods["a"], p.IP) {
			t.Error("a does not reach the new pod e")
		}
	})
}

// TestClusterPolicyMatrices runs the policy sequence with its nine pods
// spread over three nodes, in both routing modes: the results must be the
// same as on one node.
func TestClusterPolicyMatrices(t *testing.T) {
	for _, mode := range []string{lab.ModeVXLAN, lab.ModeNative} {
		t.Run(mode, func(t *testing.T) {
			etcd := lab.EtcdEmbedded
			if mode == lab.ModeNative {
				etcd = lab.EtcdExternal
			}
			l := newClusterLab(t, mode, etcd, 3)
			runPolicyMatrices(t, l, func(i int) string { return fmt.Sprintf("node%d", i%3+1) })
		})
	}
}
