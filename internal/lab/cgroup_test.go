package lab

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/internal/testutil"
)

func TestParseCgroup2(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"0::/membrane-lab-x/node1/pods/default_a\n", "/membrane-lab-x/node1/pods/default_a"},
		{"9:name=systemd:/\n4:memory:/foo\n0::/membrane-lab-x/ext\n", "/membrane-lab-x/ext"},
	} {
		got, err := ParseCgroup2(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseCgroup2(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if _, err := ParseCgroup2("4:memory:/foo\n"); err == nil {
		t.Error("v1 only: want an error")
	}
}

// TestCgroupPlan: node, pod and ext cgroups are below the lab's root, the
// agent gets its node's as --cgroup-root, and nothing outside the root
// passes the path check.
func TestCgroupPlan(t *testing.T) {
	st := state{Name: "cgp", Dir: "/l", AgentBin: "/bin/membrane-agent", BPFRoot: "/sys/fs/bpf/membrane",
		Mode: ModeVXLAN, Etcd: EtcdEmbedded, NodeCIDR: DefaultNodeCIDR, ClusterCIDR: DefaultClusterCIDR,
		CgroupMount: "/run/membrane-lab/cgp/cgroup2", CgroupMounted: true, CgroupRoot: "/run/membrane-lab/cgp/cgroup2/membrane-lab-cgp"}
	if err := st.planCluster(2); err != nil {
		t.Fatal(err)
	}
	n := st.Nodes[1]
	if n.Cgroup != st.CgroupRoot+"/node2" {
		t.Errorf("node2 cgroup %q", n.Cgroup)
	}
	argv := st.agentArgv(n)
	if i := slices.Index(argv, "--cgroup-root"); i < 0 || argv[i+1] != n.Cgroup {
		t.Errorf("agent argv has no --cgroup-root %s: %q", n.Cgroup, argv)
	}
	if st.Ext == nil || st.Ext.IP != netip.MustParseAddr("172.30.0.250") || st.Ext.Cgroup != st.CgroupRoot+"/ext" || st.Ext.Netns != "mbr-cgp-ext" {
		t.Errorf("ext %+v", st.Ext)
	}
	if !slices.Contains(st.ownedNetns(), "mbr-cgp-ext") {
		t.Error("ext namespace not owned")
	}
	if !derivedNetnsRE("cgp").MatchString("mbr-cgp-ext") || derivedNetnsRE("cgp").MatchString("mbr-cgp-ext-x") {
		t.Error("derived namespace pattern and ext disagree")
	}
	for _, ok := range []string{st.CgroupRoot, n.Cgroup + "/pods/default_a"} {
		if err := st.checkCgroupPath(ok); err != nil {
			t.Errorf("checkCgroupPath(%s): %v", ok, err)
		}
	}
	for _, bad := range []string{"/run/membrane-lab/cgp/cgroup2", st.CgroupRoot + "/../other", "/sys/fs/cgroup"} {
		if err := st.checkCgroupPath(bad); err == nil {
			t.Errorf("checkCgroupPath(%s): want an error", bad)
		}
	}
	if got := podCgroupName("default", strings.Repeat("a", 200)); len(got) > 100 || !strings.HasPrefix(got, "default_aaa") {
		t.Errorf("long pod cgroup name %q", got)
	}

	// In a /25 the external host takes the last address, so no node may.
	small := state{Name: "s", NodeCIDR: netip.MustParsePrefix("172.30.0.0/25"), Mode: ModeVXLAN, Etcd: EtcdEmbedded}
	if err := small.planCluster(1); err != nil {
		t.Fatal(err)
	}
	if small.Ext.IP != netip.MustParseAddr("172.30.0.126") {
		t.Errorf("ext in a /25 at %s", small.Ext.IP)
	}
	if _, err := small.planNode(116); err == nil {
		t.Error("node 116 on the external host's address: want an error")
	}
}

// TestLabCgroups runs labs with the real agent and checks the cgroup
// layout: agents, pod servers and `lab exec` commands in their node's and
// pod's cgroups, the external host (cluster), lab dial, and a teardown that
// leaves no cgroup and no mount, also without a state file.
func TestLabCgroups(t *testing.T) {
	testutil.Privileged(t)
	if testing.Short() {
		t.Skip("builds the binaries and runs agents")
	}
	bin := buildBinaries(t)
	t.Run("single", func(t *testing.T) { testCgroupsSingle(t, bin) })
	t.Run("cluster", func(t *testing.T) { testCgroupsCluster(t, bin) })
}

func cgroupTestLab(t *testing.T, bin, prefix string, nodes int) (Config, *Lab) {
	t.Helper()
	cfg := Config{
		Name:   prefix + testutil.UniqueSuffix(),
		Dir:    filepath.Join(t.TempDir(), "lab"),
		BinDir: bin,
		Nodes:  nodes,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	t.Cleanup(func() {
		if err := Reclaim(context.Background(), cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		assertNoCgroups(t, cfg.Name)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	return cfg, l
}

// execCgroup runs cat /proc/self/cgroup in target and returns the v2 path.
func execCgroup(t *testing.T, ctx context.Context, l *Lab, target string) string {
	t.Helper()
	out, err := l.Exec(ctx, target, "cat", "/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseCgroup2(string(out))
	if err != nil {
		t.Fatalf("exec in %s: %v", target, err)
	}
	return p
}

func wantProcCgroup(t *testing.T, l *Lab, what string, pid int, dir string) {
	t.Helper()
	got, err := procCgroup2(pid)
	if err != nil {
		t.Fatalf("%s (pid %d): %v", what, pid, err)
	}
	if want := l.CgroupPath(dir); got != want {
		t.Errorf("%s (pid %d) is in cgroup %s, want %s", what, pid, got, want)
	}
}

// dialIn runs `membrane lab dial` in target and parses its output; failed
// attempts are in the report, not in the error.
func dialIn(t *testing.T, ctx context.Context, l *Lab, bin, target string, args ...string) DialReport {
	t.Helper()
	out, err := l.Exec(ctx, target, append([]string{filepath.Join(bin, "membrane"), "lab", "dial"}, args...)...)
	rep, perr := ParseDialReport(string(out))
	if perr != nil {
		t.Fatalf("dial in %s: %v (exec: %v)\n%s", target, perr, err, out)
	}
	if (err != nil) != (rep.Failed > 0) {
		t.Errorf("dial in %s: exec error %v with %d failed attempts", target, err, rep.Failed)
	}
	return rep
}

func testCgroupsSingle(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cfg, l := cgroupTestLab(t, bin, "cg", 1)
	node := l.Nodes()[0]
	if node.Cgroup == "" || !isCgroup2(node.Cgroup) {
		t.Fatalf("node cgroup %q is not a cgroup2 directory", node.Cgroup)
	}
	wantProcCgroup(t, l, "agent", node.Agent.PID, filepath.Join(node.Cgroup, cgroupAgentDir))
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(node.Agent.PID) + "/cmdline")
	if !strings.Contains(string(cmdline), "\x00--cgroup-root\x00"+node.Cgroup+"\x00") {
		t.Errorf("agent command line has no --cgroup-root %s: %q", node.Cgroup, cmdline)
	}

	p, err := l.AddPod(ctx, PodSpec{Name: "a"})
	if err != nil {
		t.Fatalf("add pod: %v", err)
	}
	if want := filepath.Join(node.Cgroup, "pods", "default_a"); p.Cgroup != want {
		t.Errorf("pod cgroup %q, want %q", p.Cgroup, want)
	}
	wantProcCgroup(t, l, "pod server", p.ServerPID, p.Cgroup)
	if got, want := execCgroup(t, ctx, l, "a"), l.CgroupPath(p.Cgroup); got != want {
		t.Errorf("exec in pod: cgroup %s, want %s", got, want)
	}
	if got, want := execCgroup(t, ctx, l, "node1"), l.CgroupPath(node.Cgroup); got != want {
		t.Errorf("exec in node: cgroup %s, want %s", got, want)
	}
	if _, err := l.Exec(ctx, "ext", "true"); !errors.Is(err, ErrNotFound) {
		t.Errorf("exec in ext of a single-node lab: %v, want ErrNotFound", err)
	}
	_, err = l.Exec(ctx, "default/a", "sh", "-c", "echo boom; exit 3")
	if err == nil || !strings.Contains(err.Error(), "pod default/a") || !strings.Contains(err.Error(), "sh -c") ||
		!strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "boom") {
		t.Errorf("failing exec: %v; want target, command, status and output", err)
	}

	// The pod's server says who it is over TCP and UDP.
	rep := dialIn(t, ctx, l, bin, "a", "--count", "3", "--peer", netip.AddrPortFrom(p.IP, 8080).String())
	if rep.OK != 3 || rep.Answers["default/a"] != 3 || rep.Attempts[0].Peer != netip.AddrPortFrom(p.IP, 8080) {
		t.Errorf("tcp dial: %+v", rep)
	}
	rep = dialIn(t, ctx, l, bin, "a", "--proto", "udp", "--reuse-udp", "--count", "3", netip.AddrPortFrom(p.IP, 9090).String())
	if rep.OK != 3 || rep.Answers["default/a"] != 3 || rep.Attempts[2].From != netip.AddrPortFrom(p.IP, 9090) {
		t.Errorf("udp dial: %+v", rep)
	}

	// A stray process keeps the node's cgroup busy; the teardown kills it.
	if _, err := l.Exec(ctx, "node1", "sh", "-c", "sleep 600 >/dev/null 2>&1 &"); err != nil {
		t.Fatal(err)
	}
	if pids := cgroupProcs(node.Cgroup); len(pids) == 0 {
		t.Errorf("the stray sleep is not in %s", node.Cgroup)
	}

	// Teardown without the state file: derived names only. (Pod
	// namespaces are not derived from the lab's name alone; the pod goes
	// first.)
	if err := l.DelPod(ctx, "default", "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p.Cgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup of deleted pod: %v, want gone", err)
	}
	if err := os.Remove(statePath(cfg.Dir)); err != nil {
		t.Fatal(err)
	}
	if err := Reclaim(ctx, cfg); err != nil {
		t.Fatalf("reclaim: %v", err)
	}
	assertNoLeftovers(t, cfg.Name, cfg.Dir, node.PinDir)
	assertNoCgroups(t, cfg.Name)
}

func testCgroupsCluster(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg, l := cgroupTestLab(t, bin, "cgm", 2)
	addPods(t, ctx, l,
		PodSpec{Namespace: "default", Name: "a", Node: "node1"},
		PodSpec{Namespace: "default", Name: "b", Node: "node2"})
	expectFullMatrices(t, ctx, l, "after up")
	nodes := l.Nodes()
	a, _ := l.findPod("default/a")
	b, _ := l.findPod("default/b")
	ext, ok := l.Ext()
	if !ok || ext.Cgroup == "" {
		t.Fatalf("cluster lab has no external host with a cgroup: %+v", ext)
	}
	for _, n := range nodes {
		wantProcCgroup(t, l, "agent of "+n.Name, n.Agent.PID, filepath.Join(n.Cgroup, cgroupAgentDir))
		if got, want := execCgroup(t, ctx, l, n.Name), l.CgroupPath(n.Cgroup); got != want {
			t.Errorf("exec in %s: cgroup %s, want %s", n.Name, got, want)
		}
	}
	if want := filepath.Join(nodes[1].Cgroup, "pods", "default_b"); b.Cgroup != want {
		t.Errorf("pod b's cgroup %s, want %s (below its node)", b.Cgroup, want)
	}
	for _, p := range []Pod{a, b} {
		wantProcCgroup(t, l, "server of "+p.Key(), p.ServerPID, p.Cgroup)
		if got, want := execCgroup(t, ctx, l, "pod:"+p.Key()), l.CgroupPath(p.Cgroup); got != want {
			t.Errorf("exec in %s: cgroup %s, want %s", p.Key(), got, want)
		}
	}
	if got, want := execCgroup(t, ctx, l, "ext"), l.CgroupPath(ext.Cgroup); got != want {
		t.Errorf("exec in ext: cgroup %s, want %s", got, want)
	}

	// The external host reaches the node IPs, and no pod.
	for _, n := range nodes {
		if _, err := l.Exec(ctx, "ext", "ping", "-c1", "-W2", n.IP.String()); err != nil {
			t.Errorf("ext → %s: %v", n.IP, err)
		}
	}
	rep := dialIn(t, ctx, l, bin, "ext", "--timeout", "500ms", netip.AddrPortFrom(a.IP, 8080).String())
	if rep.Failed != 1 || !strings.Contains(rep.FirstError(), "network is unreachable") {
		t.Errorf("ext → pod %s: %+v, want network is unreachable", a.IP, rep)
	}

	// Cross-node dial: pod b answers, from its own address.
	rep = dialIn(t, ctx, l, bin, "a", "--count", "3", "--peer", netip.AddrPortFrom(b.IP, 8080).String())
	if rep.OK != 3 || rep.Answers["default/b"] != 3 || rep.Attempts[0].Peer != netip.AddrPortFrom(b.IP, 8080) {
		t.Errorf("tcp a → b: %+v", rep)
	}
	rep = dialIn(t, ctx, l, bin, "a", "--proto", "udp", "--reuse-udp", "--count", "3", netip.AddrPortFrom(b.IP, 9090).String())
	if rep.OK != 3 || rep.Answers["default/b"] != 3 || rep.Attempts[1].From != netip.AddrPortFrom(b.IP, 9090) {
		t.Errorf("udp a → b: %+v", rep)
	}

	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Ext == nil || st.Ext.IP != ext.IP || !st.Ext.NetnsPresent || st.CgroupRoot == "" {
		t.Errorf("status: ext %+v, cgroup root %q", st.Ext, st.CgroupRoot)
	}

	// Removing a node removes its cgroup subtree.
	if err := l.RemoveNode(ctx, "node2"); err != nil {
		t.Fatalf("remove node2: %v", err)
	}
	if _, err := os.Stat(nodes[1].Cgroup); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup of removed node2: %v, want gone", err)
	}
	if err := l.Down(ctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	assertNoLeftovers(t, cfg.Name, cfg.Dir, nodes[0].PinDir)
	assertNoCgroups(t, cfg.Name)
}

// assertNoCgroups checks that the lab's cgroup2 mount point is gone and,
// through a private cgroup2 mount, that no membrane-lab-<name> cgroup
// remains in the hierarchy.
func assertNoCgroups(t *testing.T, name string) {
	t.Helper()
	if m, err := isMountPoint(labCgroupMount(name)); m || err != nil {
		t.Errorf("%s is still mounted (%v)", labCgroupMount(name), err)
	}
	if _, err := os.Stat(filepath.Join(DefaultRunDir, name)); err == nil {
		t.Errorf("%s remains", filepath.Join(DefaultRunDir, name))
	}
	// Not in t.TempDir: its recursive removal must never meet a cgroup
	// mount. Only rmdir touches this directory.
	mp, err := os.MkdirTemp("/run", "membrane-lab-test-cg-")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Rmdir(mp) }()
	if err := unix.Mount("none", mp, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Errorf("mount cgroup2 to look: %v", err)
		return
	}
	defer func() {
		if err := unix.Unmount(mp, 0); err != nil {
			t.Errorf("unmount %s: %v", mp, err)
		}
	}()
	if _, err := os.Stat(filepath.Join(mp, cgroupRootPrefix+name)); err == nil {
		t.Errorf("cgroup %s%s remains", cgroupRootPrefix, name)
	}
}
