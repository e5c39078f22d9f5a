package lab

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestClusterConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       Config
		mode     string
		etcd     string
		nodes    int
		nodeCIDR netip.Prefix
	}{
		{"single node stays legacy", Config{}, ModeSingle, "", 1, DefaultNodeCIDR},
		{"nodes imply vxlan", Config{Nodes: 3}, ModeVXLAN, EtcdEmbedded, 3, DefaultNodeCIDR},
		{"etcd implies vxlan", Config{Etcd: EtcdExternal}, ModeVXLAN, EtcdExternal, 1, DefaultNodeCIDR},
		{"native one node", Config{Mode: ModeNative}, ModeNative, EtcdEmbedded, 1, DefaultNodeCIDR},
		{"native external", Config{Nodes: 2, Mode: ModeNative, Etcd: EtcdExternal, NodeCIDR: netip.MustParsePrefix("192.168.7.0/25")}, ModeNative, EtcdExternal, 2, netip.MustParsePrefix("192.168.7.0/25")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.in
			c.Name = "x"
			c = c.withDefaults()
			if err := c.Validate(); err != nil {
				t.Fatal(err)
			}
			if c.Mode != tc.mode || c.Etcd != tc.etcd || c.Nodes != tc.nodes || c.NodeCIDR != tc.nodeCIDR || c.ClusterCIDR != DefaultClusterCIDR {
				t.Errorf("got mode %q etcd %q nodes %d node CIDR %s cluster CIDR %s", c.Mode, c.Etcd, c.Nodes, c.NodeCIDR, c.ClusterCIDR)
			}
		})
	}
}

func TestClusterConfigValidate(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name string
		c    Config
		want string // substring of the error
	}{
		{"negative nodes", Config{Nodes: -1}, "nodes -1"},
		{"too many nodes", Config{Nodes: MaxNodes + 1}, "nodes 65"},
		{"bad mode", Config{Mode: "ipip"}, `mode "ipip"`},
		{"bad etcd", Config{Nodes: 2, Etcd: "remote"}, `etcd "remote"`},
		{"node cidr v6", Config{Nodes: 2, NodeCIDR: p("fd00::/64")}, "want an IPv4 prefix"},
		{"node cidr host bits", Config{Nodes: 2, NodeCIDR: p("172.30.0.1/24")}, "host bits"},
		{"node cidr too small", Config{Nodes: 2, NodeCIDR: p("172.30.0.0/26")}, "between /8 and /25"},
		{"cluster cidr too small", Config{Nodes: 2, ClusterCIDR: p("10.200.0.0/24")}, "between /8 and /23"},
		{"overlap", Config{Nodes: 2, NodeCIDR: p("10.200.5.0/24")}, "overlaps"},
		{"negative lease", Config{Nodes: 2, NodeLeaseTTL: -time.Second}, "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			c.Name = "x"
			err := c.withDefaults().Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestPlanCluster checks names and addresses: node i at .10+i, router .1,
// etcd members .2-.4, node i AS 64600+i.
func TestPlanCluster(t *testing.T) {
	st := state{Name: "blue", Dir: "/var/lib/membrane-lab/blue", BPFRoot: "/sys/fs/bpf/membrane", Mode: ModeNative, Etcd: EtcdExternal,
		NodeCIDR: DefaultNodeCIDR, ClusterCIDR: DefaultClusterCIDR}
	if err := st.planCluster(3); err != nil {
		t.Fatal(err)
	}
	var got []string
	got = append(got, "fabric "+st.FabricNetns)
	got = append(got, "router "+st.Router.Netns+" "+st.Router.IP.String()+" "+st.Router.Socket)
	for _, m := range st.EtcdMembers {
		got = append(got, "etcd "+m.Name+" "+m.Netns+" "+m.ClientURL()+" "+m.PeerURL()+" "+m.DataDir)
	}
	for _, n := range st.Nodes {
		got = append(got, strings.Join([]string{"node", n.Name, n.AgentName, n.Netns, n.IP.String(), n.PinDir, n.Socket}, " ")+" "+strconv.Itoa(int(n.ASN)))
	}
	want := []string{
		"fabric mbr-blue-fabric",
		"router mbr-blue-router 172.30.0.1 /var/lib/membrane-lab/blue/router/bird.ctl",
		"etcd m1 mbr-blue-etcd1 http://172.30.0.2:2379 http://172.30.0.2:2380 /var/lib/membrane-lab/blue/etcd1",
		"etcd m2 mbr-blue-etcd2 http://172.30.0.3:2379 http://172.30.0.3:2380 /var/lib/membrane-lab/blue/etcd2",
		"etcd m3 mbr-blue-etcd3 http://172.30.0.4:2379 http://172.30.0.4:2380 /var/lib/membrane-lab/blue/etcd3",
		"node node1 blue-node1 mbr-blue-node1 172.30.0.11 /sys/fs/bpf/membrane/blue-node1 /var/lib/membrane-lab/blue/node1/agent.sock 64601",
		"node node2 blue-node2 mbr-blue-node2 172.30.0.12 /sys/fs/bpf/membrane/blue-node2 /var/lib/membrane-lab/blue/node2/agent.sock 64602",
		"node node3 blue-node3 mbr-blue-node3 172.30.0.13 /sys/fs/bpf/membrane/blue-node3 /var/lib/membrane-lab/blue/node3/agent.sock 64603",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
	if st.LastNode != 3 {
		t.Errorf("LastNode = %d", st.LastNode)
	}
	if diff := cmp.Diff([]string{"http://172.30.0.2:2379", "http://172.30.0.3:2379", "http://172.30.0.4:2379"}, st.etcdEndpoints()); diff != "" {
		t.Error(diff)
	}

	// A /25 fabric has room for node 116 (.126) but not node 117 (.127,
	// the broadcast address).
	small := state{Name: "s", NodeCIDR: netip.MustParsePrefix("172.30.0.0/25"), Mode: ModeVXLAN}
	if _, err := small.planNode(116); err != nil {
		t.Errorf("node 116 in a /25: %v", err)
	}
	if _, err := small.planNode(117); err == nil {
		t.Error("node 117 in a /25: want an error")
	}
}

// TestAgentArgv: the single-node command line is unchanged; multi-node
// agents get the cluster flags (golden).
func TestAgentArgv(t *testing.T) {
	single := state{Name: "demo", Dir: "/l", AgentBin: "/bin/membrane-agent", BPFRoot: "/sys/fs/bpf/membrane", PodCIDR: DefaultPodCIDR}
	n := Node{Name: "node1", AgentName: "demo-node1", Dir: "/l/node1", Socket: "/l/node1/agent.sock", PodCIDR: DefaultPodCIDR}
	want := []string{"/bin/membrane-agent", "--node-name", "demo-node1", "--state-dir", "/l/node1/state", "--socket", "/l/node1/agent.sock",
		"--pod-cidr", "10.200.1.0/24", "--bpf-root", "/sys/fs/bpf/membrane", "--prometheus-serve-addr", "127.0.0.1:9962"}
	if diff := cmp.Diff(want, single.agentArgv(n)); diff != "" {
		t.Errorf("single-node argv changed:\n%s", diff)
	}

	var b strings.Builder
	for _, tc := range []struct{ mode, etcd string }{{ModeVXLAN, EtcdEmbedded}, {ModeNative, EtcdExternal}} {
		st := state{Name: "multi", Dir: "/l", AgentBin: "/bin/membrane-agent", BPFRoot: "/sys/fs/bpf/membrane", Mode: tc.mode, Etcd: tc.etcd,
			NodeCIDR: DefaultNodeCIDR, ClusterCIDR: DefaultClusterCIDR, NodeLeaseTTL: 5 * time.Second, AgentArgs: []string{"--monitor-level=all"}}
		if err := st.planCluster(2); err != nil {
			t.Fatal(err)
		}
		b.WriteString("# " + tc.mode + " " + tc.etcd + "\n")
		b.WriteString(renderArgv(st.agentArgv(st.Nodes[1])))
	}
	golden(t, "agent_argv.golden", []byte(b.String()))
}

// renderArgv prints a command line one flag (with its value) per line.
func renderArgv(argv []string) string {
	var b strings.Builder
	b.WriteString(argv[0])
	for i := 1; i < len(argv); i++ {
		b.WriteString(" \\\n  " + argv[i])
		if strings.HasPrefix(argv[i], "--") && !strings.Contains(argv[i], "=") && i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "--") {
			b.WriteString(" " + argv[i+1])
			i++
		}
	}
	return b.String() + "\n"
}

func TestBirdConf(t *testing.T) {
	peers := []birdPeer{
		{Name: "node10", IP: netip.MustParseAddr("172.30.0.20"), ASN: 64610},
		{Name: "node2", IP: netip.MustParseAddr("172.30.0.12"), ASN: 64602},
		{Name: "node1", IP: netip.MustParseAddr("172.30.0.11"), ASN: 64601},
	}
	got := renderBirdConf("blue", netip.MustParseAddr("172.30.0.1"), RouterASN, peers)
	golden(t, "bird.conf.golden", []byte(got))
	// bird itself accepts it (parse only), if installed.
	if bird, err := findSystemBinary("bird", "bird2"); err == nil {
		path := filepath.Join(t.TempDir(), "bird.conf")
		if err := os.WriteFile(path, []byte(got), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bird, "-p", "-c", path).CombinedOutput(); err != nil {
			t.Errorf("bird -p rejects the configuration: %v\n%s", err, out)
		}
	}
	// Only nodes with an address and an AS become peers.
	ps := birdPeers([]Node{{Name: "node1", IP: netip.MustParseAddr("172.30.0.11"), ASN: 64601}, {Name: "node2"}})
	if len(ps) != 1 || ps[0].Name != "node1" {
		t.Errorf("birdPeers = %+v", ps)
	}
}

func TestDerivedNames(t *testing.T) {
	re := derivedNetnsRE("a")
	for name, want := range map[string]bool{
		"mbr-a-fabric":        true,
		"mbr-a-router":        true,
		"mbr-a-etcd2":         true,
		"mbr-a-node1":         true,
		"mbr-a-node12":        true,
		"mbr-a-b-node1":       false, // lab "a-b"
		"mbr-a-node1-node1":   false, // lab "a-node1"
		"mbr-a-default-web":   false, // a pod
		"mbr-a-fabric-x":      false,
		"mbr-ab-fabric":       false,
		"mbr-a-node":          false,
		"mbr-a-default-node1": false,
	} {
		if got := re.MatchString(name); got != want {
			t.Errorf("%s: match %v, want %v", name, got, want)
		}
	}
	pre := derivedPinRE("a")
	for name, want := range map[string]bool{"a-node1": true, "a-node3": true, "a-b-node1": false, "a-node1-node1": false, "ab-node1": false} {
		if got := pre.MatchString(name); got != want {
			t.Errorf("pin %s: match %v, want %v", name, got, want)
		}
	}
}

func TestRouteLearned(t *testing.T) {
	out := "BIRD 2.0.12 ready.\nTable master4:\n10.200.1.0/24        unicast [node1 17:20:01.123] * (100) [AS64601i]\n\tvia 172.30.0.11 on eth0\n10.200.2.0/24        unicast [node2 17:20:02.456] * (100) [AS64602i]\n\tvia 172.30.0.12 on eth0\n"
	for _, tc := range []struct {
		prefix, via string
		want        bool
	}{
		{"10.200.1.0/24", "172.30.0.11", true},
		{"10.200.2.0/24", "172.30.0.12", true},
		{"10.200.2.0/24", "172.30.0.11", false},
		{"10.200.1.0/24", "172.30.0.1", false},
		{"10.200.3.0/24", "172.30.0.13", false},
	} {
		if got := routeLearned(out, tc.prefix, tc.via); got != tc.want {
			t.Errorf("routeLearned(%s via %s) = %v", tc.prefix, tc.via, got)
		}
	}
}
