package lab

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/membrane-net/membrane/internal/testutil"
)

// upInfra builds a multi-node lab's infrastructure — fabric, router (native
// mode), etcd, and the node namespaces on the fabric — without agents. The
// embedded etcd server is this test binary (see TestMain).
func upInfra(t *testing.T, ctx context.Context, cfg Config, nodes int) *Lab {
	t.Helper()
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	st := state{
		Version: stateVersion, Name: cfg.Name, Dir: cfg.Dir, BPFRoot: cfg.BPFRoot, MembraneBin: exe,
		Mode: cfg.Mode, Etcd: cfg.Etcd, NodeCIDR: cfg.NodeCIDR, ClusterCIDR: cfg.ClusterCIDR, CreatedAt: time.Now().UTC(),
	}
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := st.planCluster(nodes); err != nil {
		t.Fatal(err)
	}
	if l := st.leftover(); l != "" {
		t.Fatalf("left over: %s", l)
	}
	l := &Lab{st: st, log: cfg.Logger}
	if err := l.st.save(); err != nil {
		t.Fatal(err)
	}
	if err := createFabric(ctx, l.st.FabricNetns); err != nil {
		t.Fatal(err)
	}
	if l.st.Router != nil {
		if err := l.createRouter(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if l.st.Etcd != "" {
		if err := l.createEtcd(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i := range l.st.Nodes {
		if err := l.createNodeNetwork(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func routesIn(t *testing.T, ns string) []string {
	t.Helper()
	var out []string
	err := withNetlink(ns, func(h *netlink.Handle) error {
		rs, err := h.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range rs {
			dst := "default"
			if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
				dst = r.Dst.String()
			}
			if r.Gw != nil {
				dst += " via " + r.Gw.String()
			}
			out = append(out, dst)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLabFabric brings up the fabric, a bird router, three external etcd
// members and two node namespaces without agents: bird runs and lists the
// nodes as peers, nodes reach each other and the router over the fabric,
// nodes route only to the router, etcd survives the loss of a member, and
// Reclaim removes everything.
func TestLabFabric(t *testing.T) {
	testutil.Privileged(t)
	_, errBird := findSystemBinary("bird", "bird2")
	_, errEtcd := findSystemBinary("etcd", "etcd-server")
	testutil.RequireOrFail(t, errBird == nil && errEtcd == nil, "needs bird2 and etcd-server: %v %v", errBird, errEtcd)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	hostForward, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")

	cfg := Config{
		Name: "fab" + testutil.UniqueSuffix(), Dir: filepath.Join(t.TempDir(), "lab"),
		Mode: ModeNative, Etcd: EtcdExternal, Nodes: 2,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	t.Cleanup(func() { _ = Reclaim(context.Background(), cfg) })
	l := upInfra(t, ctx, cfg, 2)
	n1, n2, r := l.st.Nodes[0], l.st.Nodes[1], l.st.Router

	// bird lists both nodes as configured peers.
	out, err := l.RouterCommand(ctx, "show", "protocols")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"node1", "node2", "BGP", "device1", "kernel1"} {
		if !strings.Contains(out, want) {
			t.Errorf("show protocols lacks %q:\n%s", want, out)
		}
	}
	out, err = l.RouterCommand(ctx, "show", "protocols", "all", "node2")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Neighbor address: 172.30.0.12", "Neighbor AS:      64602", "Local AS:         64512"} {
		if !strings.Contains(out, want) {
			t.Errorf("show protocols all node2 lacks %q:\n%s", want, out)
		}
	}
	if _, err := l.RouterCommand(ctx, "disable", "node1"); err != nil {
		t.Error(err)
	}
	if out, _ := l.RouterCommand(ctx, "show", "protocols", "node1"); !strings.Contains(out, "down") {
		t.Errorf("node1 not down after disable:\n%s", out)
	}
	if _, err := l.RouterCommand(ctx, "enable", "node1"); err != nil {
		t.Error(err)
	}

	// Fabric connectivity.
	for _, c := range []struct {
		from string
		to   netip.Addr
	}{{n1.Netns, n2.IP}, {n2.Netns, n1.IP}, {n1.Netns, r.IP}, {r.Netns, n2.IP}} {
		if err := probeOne(netnsPath(c.from), c.to, 0, "icmp", "", 2*time.Second); err != nil {
			t.Errorf("ping %s from %s: %v", c.to, c.from, err)
		}
	}
	// Routes: nodes know the fabric and the router; the router only the
	// fabric; forwarding is on in the router namespace only.
	if got, want := strings.Join(routesIn(t, n1.Netns), ","), "default via 172.30.0.1,172.30.0.0/24"; got != want {
		t.Errorf("node1 routes %q, want %q", got, want)
	}
	if got, want := strings.Join(routesIn(t, r.Netns), ","), "172.30.0.0/24"; got != want {
		t.Errorf("router routes %q, want %q", got, want)
	}
	if now, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); string(now) != string(hostForward) {
		t.Errorf("host ip_forward changed: %q → %q", hostForward, now)
	}

	// etcd: three healthy members; one may stop and come back.
	if got := len(l.EtcdEndpoints()); got != 3 {
		t.Errorf("EtcdEndpoints: %d", got)
	}
	if err := l.StopEtcdMember(ctx, 1); err != nil {
		t.Fatal(err)
	}
	m2 := l.st.EtcdMembers[1]
	if err := etcdHealthy(ctx, netnsPath(m2.Netns), m2.ClientURL()); err != nil {
		t.Errorf("member 2 after member 1 stopped: %v", err)
	}
	if err := l.StartEtcdMember(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := l.waitEtcdHealthy(ctx); err != nil {
		t.Error(err)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Router == nil || !st.Router.Alive || len(st.Etcd) != 3 {
		t.Errorf("status: router %+v etcd %+v", st.Router, st.Etcd)
	}
	for _, e := range st.Etcd {
		if e.Healthy == nil || !*e.Healthy {
			t.Errorf("status: etcd %+v", e)
		}
	}

	procs := []Proc{r.Bird}
	for _, m := range l.st.EtcdMembers {
		procs = append(procs, m.Proc)
	}
	if err := Reclaim(ctx, cfg); err != nil {
		t.Fatalf("reclaim: %v", err)
	}
	assertNoLeftovers(t, cfg.Name, cfg.Dir, n1.PinDir)
	for _, p := range procs {
		if p.Alive() {
			t.Errorf("pid %d survives reclaim", p.PID)
		}
	}
}

// TestLabFabricReclaimWithoutState: a vxlan lab with the embedded etcd
// whose state.json is gone is still removed by name.
func TestLabFabricReclaimWithoutState(t *testing.T) {
	testutil.Privileged(t)
	t.Setenv(etcdServeEnv, "1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := Config{
		Name: "fab" + testutil.UniqueSuffix(), Dir: filepath.Join(t.TempDir(), "lab"), Nodes: 3,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	t.Cleanup(func() { _ = Reclaim(context.Background(), cfg) })
	l := upInfra(t, ctx, cfg, 3)
	if l.st.Mode != ModeVXLAN || l.st.Router != nil || l.st.EtcdServer == nil {
		t.Fatalf("mode %q router %v etcd server %v", l.st.Mode, l.st.Router, l.st.EtcdServer)
	}
	if got := l.EtcdEndpoints(); len(got) != 1 || !strings.HasPrefix(got[0], "unix://") {
		t.Errorf("EtcdEndpoints = %v", got)
	}
	n1, n3 := l.st.Nodes[0], l.st.Nodes[2]
	if err := probeOne(netnsPath(n3.Netns), n1.IP, 0, "icmp", "", 2*time.Second); err != nil {
		t.Errorf("ping node1 from node3: %v", err)
	}
	if got := strings.Join(routesIn(t, n1.Netns), ","); got != "172.30.0.0/24" {
		t.Errorf("vxlan node routes %q, want only the fabric", got)
	}
	// The etcd server restarts with its data.
	if err := l.StopEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	etcdProc := l.st.EtcdServer.Proc
	// A pin directory as an agent would leave it.
	if err := os.MkdirAll(n1.PinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(statePath(cfg.Dir)); err != nil {
		t.Fatal(err)
	}
	if err := Reclaim(ctx, cfg); err != nil {
		t.Fatalf("reclaim: %v", err)
	}
	assertNoLeftovers(t, cfg.Name, cfg.Dir, n1.PinDir)
	if etcdProc.Alive() {
		t.Errorf("etcd server pid %d survives reclaim", etcdProc.PID)
	}
}
