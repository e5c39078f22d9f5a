package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-net/membrane/internal/kvstore"
)

// Multi-node timeouts.
const (
	routerReadyTimeout = 10 * time.Second
	etcdReadyTimeout   = 60 * time.Second
	etcdStopGrace      = 10 * time.Second
	birdStopGrace      = 5 * time.Second
	birdcTimeout       = 10 * time.Second
)

// ErrSingleNode: the operation needs a multi-node lab (one created with a
// routing mode).
var ErrSingleNode = errors.New("lab is single-node (created without --mode/--nodes)")

// ---- planning: names and addresses, recorded before anything exists ----

// planCluster fills in the fabric, router, etcd and the first n nodes.
func (st *state) planCluster(n int) error {
	st.FabricNetns = fabricNetnsName(st.Name)
	extIP, err := fabricAddr(st.NodeCIDR, min(extOffset, 1<<(32-st.NodeCIDR.Bits())-2))
	if err != nil {
		return err
	}
	st.Ext = &ExtHost{Netns: extNetnsName(st.Name), IP: extIP}
	if st.CgroupRoot != "" {
		st.Ext.Cgroup = filepath.Join(st.CgroupRoot, cgroupExtDir)
	}
	if st.Mode == ModeNative {
		ip, err := fabricAddr(st.NodeCIDR, routerOffset)
		if err != nil {
			return err
		}
		dir := filepath.Join(st.Dir, "router")
		st.Router = &Router{
			Netns:   routerNetnsName(st.Name),
			IP:      ip,
			ASN:     RouterASN,
			Dir:     dir,
			Config:  filepath.Join(dir, "bird.conf"),
			Socket:  filepath.Join(dir, "bird.ctl"),
			PIDFile: filepath.Join(dir, "bird.pid"),
			LogPath: filepath.Join(dir, "bird.log"),
		}
	}
	switch st.Etcd {
	case EtcdEmbedded:
		dir := filepath.Join(st.Dir, "etcd")
		st.EtcdServer = &EtcdServer{Dir: dir, LogPath: filepath.Join(st.Dir, "etcd.log")}
	case EtcdExternal:
		for i := 1; i <= EtcdMembers; i++ {
			ip, err := fabricAddr(st.NodeCIDR, etcdOffset+i)
			if err != nil {
				return err
			}
			st.EtcdMembers = append(st.EtcdMembers, EtcdMember{
				Index:   i,
				Name:    "m" + strconv.Itoa(i),
				Netns:   etcdNetnsName(st.Name, i),
				IP:      ip,
				DataDir: filepath.Join(st.Dir, "etcd"+strconv.Itoa(i)),
				LogPath: filepath.Join(st.Dir, "etcd"+strconv.Itoa(i)+".log"),
			})
		}
	}
	for i := 1; i <= n; i++ {
		node, err := st.planNode(i)
		if err != nil {
			return err
		}
		st.Nodes = append(st.Nodes, node)
		st.LastNode = i
	}
	return nil
}

// planNode names node i and gives it its fabric address (and AS).
func (st *state) planNode(i int) (Node, error) {
	ip, err := fabricAddr(st.NodeCIDR, nodeOffset+i)
	if err != nil {
		return Node{}, err
	}
	if st.Ext != nil && ip == st.Ext.IP {
		return Node{}, fmt.Errorf("node %d: fabric address %s is the external host's", i, ip)
	}
	name := nodeName(i)
	n := Node{
		Name:      name,
		AgentName: agentNodeName(st.Name, name),
		Netns:     nodeNetnsName(st.Name, name),
		Dir:       filepath.Join(st.Dir, name),
		Index:     i,
		IP:        ip,
		Cgroup:    st.nodeCgroup(name),
	}
	n.Socket = filepath.Join(n.Dir, "agent.sock")
	n.LogPath = filepath.Join(n.Dir, "agent.log")
	n.PinDir = filepath.Join(st.BPFRoot, n.AgentName)
	if st.Mode == ModeNative {
		n.ASN = nodeASN(i)
	}
	return n, nil
}

// ownedNetns lists the namespaces of the lab's infrastructure and nodes.
func (st *state) ownedNetns() []string {
	var out []string
	if st.FabricNetns != "" {
		out = append(out, st.FabricNetns)
	}
	if st.Router != nil {
		out = append(out, st.Router.Netns)
	}
	for _, m := range st.EtcdMembers {
		out = append(out, m.Netns)
	}
	if st.Ext != nil {
		out = append(out, st.Ext.Netns)
	}
	for _, n := range st.Nodes {
		out = append(out, n.Netns)
	}
	return out
}

// leftover names the first namespace or pin directory that exists already
// although the lab is about to create it; "" if none.
func (st *state) leftover() string {
	for _, ns := range st.ownedNetns() {
		if netnsExists(ns) {
			return netnsPath(ns)
		}
	}
	for _, n := range st.Nodes {
		if _, err := os.Stat(n.PinDir); err == nil {
			return n.PinDir
		}
	}
	return st.cgroupLeftover()
}

// etcdEndpoints are the client URLs the agents get.
func (st *state) etcdEndpoints() []string {
	if st.EtcdServer != nil {
		return []string{st.EtcdServer.ClientURL()}
	}
	out := make([]string, 0, len(st.EtcdMembers))
	for _, m := range st.EtcdMembers {
		out = append(out, m.ClientURL())
	}
	return out
}

// ---- building ----

// buildCluster creates the fabric, the router, etcd and the nodes, in that
// order. The caller rolls back on error.
func (l *Lab) buildCluster(ctx context.Context) error {
	l.log.Info("creating fabric", "netns", l.st.FabricNetns, "prefix", l.st.NodeCIDR)
	if err := createFabric(ctx, l.st.FabricNetns); err != nil {
		return err
	}
	if err := l.createExt(ctx); err != nil {
		return err
	}
	if l.st.Router != nil {
		if err := l.createRouter(ctx); err != nil {
			return err
		}
	}
	if err := l.createEtcd(ctx); err != nil {
		return err
	}
	for i := range l.st.Nodes {
		if err := l.createNode(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// createNode builds node i's namespace on the fabric and starts its agent.
func (l *Lab) createNode(ctx context.Context, i int) error {
	if err := l.createNodeNetwork(ctx, i); err != nil {
		return err
	}
	return l.startAgent(ctx, i)
}

// createNodeNetwork creates node i's namespace, its fabric port and
// address, its default route to the router (native mode) and its
// directory.
func (l *Lab) createNodeNetwork(ctx context.Context, i int) error {
	n := l.st.Nodes[i]
	l.log.Info("creating node", "node", n.Name, "netns", n.Netns, "ip", n.IP)
	if err := createNetns(ctx, n.Netns); err != nil {
		return err
	}
	if err := attachToFabric(l.st.FabricNetns, n.Name, n.Netns, netip.PrefixFrom(n.IP, l.st.NodeCIDR.Bits())); err != nil {
		return err
	}
	if l.st.Mode == ModeNative && l.st.Router != nil {
		if err := addDefaultRoute(n.Netns, l.st.Router.IP); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(n.Dir, "state"), 0o700); err != nil {
		return fmt.Errorf("create node dir: %w", err)
	}
	return l.st.mkNodeCgroups(n)
}

// createExt creates the external host: a namespace on the fabric with an
// address there and no other route (in particular none to the pod CIDRs:
// like a machine outside the cluster it reaches the node IPs only), and
// its cgroup.
func (l *Lab) createExt(ctx context.Context) error {
	e := l.st.Ext
	if e == nil {
		return nil
	}
	l.log.Info("creating external host", "netns", e.Netns, "ip", e.IP)
	if err := createNetns(ctx, e.Netns); err != nil {
		return err
	}
	if err := attachToFabric(l.st.FabricNetns, "ext", e.Netns, netip.PrefixFrom(e.IP, l.st.NodeCIDR.Bits())); err != nil {
		return err
	}
	return l.st.mkCgroups(e.Cgroup)
}

// Ext is the lab's external host; false for single-node labs, which have
// no fabric.
func (l *Lab) Ext() (ExtHost, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, err := loadState(l.st.Dir); err == nil {
		l.st = st
	}
	if l.st.Ext == nil {
		return ExtHost{}, false
	}
	return *l.st.Ext, true
}

// ---- router (native mode) ----

func (l *Lab) createRouter(ctx context.Context) error {
	r := l.st.Router
	l.log.Info("creating router", "netns", r.Netns, "ip", r.IP)
	if err := createNetns(ctx, r.Netns); err != nil {
		return err
	}
	if err := attachToFabric(l.st.FabricNetns, "router", r.Netns, netip.PrefixFrom(r.IP, l.st.NodeCIDR.Bits())); err != nil {
		return err
	}
	// Forward between nodes, in this namespace only. No ICMP redirects, so
	// that cross-node pod traffic keeps going through the router.
	for _, kv := range [][2]string{
		{"net/ipv4/ip_forward", "1"},
		{"net/ipv4/conf/all/send_redirects", "0"},
		{"net/ipv4/conf/" + fabricVethName + "/send_redirects", "0"},
	} {
		if err := setSysctl(r.Netns, kv[0], kv[1]); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(r.Dir, 0o700); err != nil {
		return fmt.Errorf("create router dir: %w", err)
	}
	if err := l.writeBirdConf(); err != nil {
		return err
	}
	return l.startBird(ctx)
}

// writeBirdConf renders bird.conf for the current nodes, atomically.
func (l *Lab) writeBirdConf() error {
	r := l.st.Router
	conf := renderBirdConf(l.st.Name, r.IP, r.ASN, birdPeers(l.st.Nodes))
	tmp := r.Config + ".tmp"
	if err := os.WriteFile(tmp, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write bird.conf: %w", err)
	}
	if err := os.Rename(tmp, r.Config); err != nil {
		return fmt.Errorf("write bird.conf: %w", err)
	}
	return nil
}

// startBird runs bird in the foreground (-f) inside the router namespace,
// detached from the caller, and waits for its control socket.
func (l *Lab) startBird(ctx context.Context) error {
	r := l.st.Router
	bird, err := findSystemBinary("bird", "bird2")
	if err != nil {
		return err
	}
	argv := []string{"ip", "netns", "exec", r.Netns, bird, "-f", "-c", r.Config, "-s", r.Socket, "-P", r.PIDFile}
	p, err := startDetached(argv, nil, r.LogPath, "")
	if err != nil {
		return fmt.Errorf("start bird: %w", err)
	}
	r.Bird = p
	if err := l.st.save(); err != nil {
		return err
	}
	deadline := time.Now().Add(routerReadyTimeout)
	for {
		_, err := l.birdc(ctx, "show", "status")
		if err == nil {
			return nil
		}
		if !r.Bird.Alive() {
			return fmt.Errorf("bird exited during start-up; last lines of %s:\n%s", r.LogPath, tailFile(r.LogPath, 20))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("bird not answering on %s after %s (%v); last lines of %s:\n%s", r.Socket, routerReadyTimeout, err, r.LogPath, tailFile(r.LogPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// birdc runs one birdc command against the router's control socket.
func (l *Lab) birdc(ctx context.Context, args ...string) (string, error) {
	r := l.st.Router
	if r == nil {
		return "", fmt.Errorf("lab %s has no router (routing mode %q)", l.st.Name, l.st.Mode)
	}
	birdc, err := findSystemBinary("birdc", "bird2")
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, birdcTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, birdc, append([]string{"-s", r.Socket}, args...)...)
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// reconfigureRouter rewrites bird.conf for the current nodes and tells
// bird to reload it.
func (l *Lab) reconfigureRouter(ctx context.Context) error {
	if l.st.Router == nil {
		return nil
	}
	if err := l.writeBirdConf(); err != nil {
		return err
	}
	out, err := l.birdc(ctx, "configure")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "Reconfigur") {
		return fmt.Errorf("birdc configure: %s", strings.TrimSpace(out))
	}
	return nil
}

// RouterCommand runs birdc with args against the router's control socket
// (native mode) and returns its output, e.g. RouterCommand(ctx, "show",
// "route") or ("disable", "node1").
func (l *Lab) RouterCommand(ctx context.Context, args ...string) (string, error) {
	l.mu.Lock()
	if st, err := loadState(l.st.Dir); err == nil {
		l.st = st
	}
	l.mu.Unlock()
	if len(args) == 0 {
		return "", errors.New("router command: no arguments")
	}
	return l.birdc(ctx, args...)
}

// findSystemBinary finds a Debian-packaged tool in $PATH or /usr/sbin,
// /usr/bin.
func findSystemBinary(name, pkg string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/usr/bin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("find %s: not installed (Debian package %s)", name, pkg)
}

// ---- etcd ----

func (l *Lab) createEtcd(ctx context.Context) error {
	if l.st.EtcdServer != nil {
		return l.startEtcdServer(ctx)
	}
	for i := range l.st.EtcdMembers {
		m := &l.st.EtcdMembers[i]
		l.log.Info("creating etcd member", "member", m.Name, "netns", m.Netns, "ip", m.IP)
		if err := createNetns(ctx, m.Netns); err != nil {
			return err
		}
		if err := attachToFabric(l.st.FabricNetns, "etcd"+strconv.Itoa(m.Index), m.Netns, netip.PrefixFrom(m.IP, l.st.NodeCIDR.Bits())); err != nil {
			return err
		}
		if err := l.startEtcdMemberProc(m); err != nil {
			return err
		}
	}
	return l.waitEtcdHealthy(ctx)
}

// startEtcdServer starts `membrane lab etcd-serve` inside the fabric
// namespace (so name-based cleanup finds it) and waits until it is healthy.
func (l *Lab) startEtcdServer(ctx context.Context) error {
	e := l.st.EtcdServer
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	if err := os.MkdirAll(e.Dir, 0o700); err != nil {
		return fmt.Errorf("create etcd dir: %w", err)
	}
	argv := []string{nsenter, "--net=" + netnsPath(l.st.FabricNetns), "--", l.st.MembraneBin, "lab", "etcd-serve", "--dir", e.Dir}
	l.log.Info("starting lab etcd", "dir", e.Dir)
	p, err := startDetached(argv, nil, e.LogPath, "")
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	e.Proc = p
	if err := l.st.save(); err != nil {
		return err
	}
	return l.waitEtcdHealthy(ctx)
}

// etcdMemberArgv is member m's command line inside its namespace.
func (st *state) etcdMemberArgv(etcdBin string, m EtcdMember) []string {
	var initial []string
	for _, o := range st.EtcdMembers {
		initial = append(initial, o.Name+"="+o.PeerURL())
	}
	return []string{"ip", "netns", "exec", m.Netns, etcdBin,
		"--name", m.Name,
		"--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL(),
		"--advertise-client-urls", m.ClientURL(),
		"--listen-peer-urls", m.PeerURL(),
		"--initial-advertise-peer-urls", m.PeerURL(),
		"--initial-cluster", strings.Join(initial, ","),
		"--initial-cluster-state", "new",
		"--initial-cluster-token", "mbr-" + st.Name,
		// One `membrane apply` is one transaction (kvstore.MaxApplyObjects).
		"--max-txn-ops", strconv.Itoa(2 * kvstore.MaxApplyObjects),
		"--max-request-bytes", strconv.Itoa(8 << 20),
		"--logger", "zap",
		"--log-level", "warn",
	}
}

// startEtcdMemberProc starts member m (without waiting).
func (l *Lab) startEtcdMemberProc(m *EtcdMember) error {
	etcdBin, err := findSystemBinary("etcd", "etcd-server")
	if err != nil {
		return err
	}
	p, err := startDetached(l.st.etcdMemberArgv(etcdBin, *m), nil, m.LogPath, "")
	if err != nil {
		return fmt.Errorf("start etcd member %s: %w", m.Name, err)
	}
	m.Proc = p
	return l.st.save()
}

// waitEtcdHealthy waits until the embedded server, or every external
// member, reports healthy (has a leader).
func (l *Lab) waitEtcdHealthy(ctx context.Context) error {
	type target struct {
		name, ns, url, log string
		proc               Proc
	}
	var targets []target
	if e := l.st.EtcdServer; e != nil {
		targets = append(targets, target{"etcd", "", e.ClientURL(), e.LogPath, e.Proc})
	}
	for _, m := range l.st.EtcdMembers {
		targets = append(targets, target{"etcd member " + m.Name, m.Netns, m.ClientURL(), m.LogPath, m.Proc})
	}
	deadline := time.Now().Add(etcdReadyTimeout)
	for _, t := range targets {
		nsPath := ""
		if t.ns != "" {
			nsPath = netnsPath(t.ns)
		}
		for {
			err := etcdHealthy(ctx, nsPath, t.url)
			if err == nil {
				break
			}
			if !t.proc.Alive() {
				return fmt.Errorf("%s exited; last lines of %s:\n%s", t.name, t.log, tailFile(t.log, 20))
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				return fmt.Errorf("%s not healthy after %s (%v); last lines of %s:\n%s", t.name, etcdReadyTimeout, err, t.log, tailFile(t.log, 20))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

// EtcdEndpoints are the client URLs of the lab's etcd (what the agents
// get); nil for a single-node lab, whose agent runs its own.
func (l *Lab) EtcdEndpoints() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, err := loadState(l.st.Dir); err == nil {
		l.st = st
	}
	if l.st.Mode == ModeSingle {
		return nil
	}
	return l.st.etcdEndpoints()
}

// StopEtcdMember stops external member i (1-based) with SIGTERM.
func (l *Lab) StopEtcdMember(ctx context.Context, i int) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := l.etcdMember(i)
	if err != nil {
		return err
	}
	if err := m.Proc.stop(ctx, etcdStopGrace); err != nil {
		return fmt.Errorf("stop etcd member %s: %w", m.Name, err)
	}
	m.Proc = Proc{}
	return l.st.save()
}

// StartEtcdMember starts external member i (1-based) again with its data
// and waits until it accepts client connections (being healthy needs a
// quorum, which one member alone may not have). Starting a running
// member is a no-op.
func (l *Lab) StartEtcdMember(ctx context.Context, i int) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	m, err := l.etcdMember(i)
	if err != nil {
		return err
	}
	if m.Proc.Alive() {
		return nil
	}
	if err := l.startEtcdMemberProc(m); err != nil {
		return err
	}
	p := m.Proc
	if err := waitTCP(ctx, m.Netns, netip.AddrPortFrom(m.IP, 2379), etcdReadyTimeout, p.Alive); err != nil {
		return fmt.Errorf("etcd member %s: %w; last lines of %s:\n%s", m.Name, err, m.LogPath, tailFile(m.LogPath, 20))
	}
	return nil
}

func (l *Lab) etcdMember(i int) (*EtcdMember, error) {
	if l.st.Mode == ModeSingle {
		return nil, ErrSingleNode
	}
	if l.st.Etcd != EtcdExternal {
		return nil, fmt.Errorf("etcd member %d: lab %s runs the embedded etcd, not external members", i, l.st.Name)
	}
	for j := range l.st.EtcdMembers {
		if l.st.EtcdMembers[j].Index == i {
			return &l.st.EtcdMembers[j], nil
		}
	}
	return nil, fmt.Errorf("etcd member %d: %w", i, ErrNotFound)
}

// StopEtcd stops the embedded server or every external member.
func (l *Lab) StopEtcd(ctx context.Context) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if l.st.Mode == ModeSingle {
		return ErrSingleNode
	}
	var errs []error
	if e := l.st.EtcdServer; e != nil {
		if err := e.Proc.stop(ctx, etcdStopGrace); err != nil {
			errs = append(errs, fmt.Errorf("stop etcd: %w", err))
		}
		e.Proc = Proc{}
	}
	for i := range l.st.EtcdMembers {
		m := &l.st.EtcdMembers[i]
		if err := m.Proc.stop(ctx, etcdStopGrace); err != nil {
			errs = append(errs, fmt.Errorf("stop etcd member %s: %w", m.Name, err))
		}
		m.Proc = Proc{}
	}
	errs = append(errs, l.st.save())
	return errors.Join(errs...)
}

// StartEtcd starts the embedded server or every stopped external member
// and waits until etcd is healthy.
func (l *Lab) StartEtcd(ctx context.Context) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if l.st.Mode == ModeSingle {
		return ErrSingleNode
	}
	if e := l.st.EtcdServer; e != nil {
		if e.Proc.Alive() {
			return l.waitEtcdHealthy(ctx)
		}
		return l.startEtcdServer(ctx)
	}
	for i := range l.st.EtcdMembers {
		m := &l.st.EtcdMembers[i]
		if !m.Proc.Alive() {
			if err := l.startEtcdMemberProc(m); err != nil {
				return err
			}
		}
	}
	return l.waitEtcdHealthy(ctx)
}

// ---- nodes at run time ----

// NodeByName returns a node ("" means node1).
func (l *Lab) NodeByName(name string) (Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, err := loadState(l.st.Dir); err == nil {
		l.st = st
	}
	n, ok := l.node(name)
	if !ok {
		return Node{}, fmt.Errorf("node %q: %w", name, ErrNotFound)
	}
	return *n, nil
}

// AddNode joins a new node (the next index, never a reused one) to a
// multi-node lab: namespace on the fabric, router peer (native mode),
// agent. On failure the node is removed again.
func (l *Lab) AddNode(ctx context.Context) (_ Node, retErr error) {
	unlock, err := l.lock(ctx)
	if err != nil {
		return Node{}, err
	}
	defer unlock()
	if l.st.Mode == ModeSingle {
		return Node{}, ErrSingleNode
	}
	n, err := l.st.planNode(l.st.LastNode + 1)
	if err != nil {
		return Node{}, err
	}
	if netnsExists(n.Netns) {
		return Node{}, fmt.Errorf("node %s: %s is left over; run `membrane lab down --name %s` first", n.Name, netnsPath(n.Netns), l.st.Name)
	}
	if _, err := os.Stat(n.PinDir); err == nil {
		return Node{}, fmt.Errorf("node %s: %s is left over; run `membrane lab down --name %s` first", n.Name, n.PinDir, l.st.Name)
	}
	l.st.LastNode = n.Index
	l.st.Nodes = append(l.st.Nodes, n)
	if err := l.st.save(); err != nil {
		return Node{}, err
	}
	defer func() {
		if retErr == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		l.log.Warn("node add failed; rolling back", "node", n.Name, "err", retErr)
		if err := l.removeNode(rctx, n.Name); err != nil {
			retErr = fmt.Errorf("%w (rollback: %v)", retErr, err)
		}
	}()
	if l.st.Router != nil {
		if err := l.reconfigureRouter(ctx); err != nil {
			return Node{}, err
		}
	}
	if err := l.createNode(ctx, len(l.st.Nodes)-1); err != nil {
		return Node{}, err
	}
	out, _ := l.node(n.Name)
	return *out, nil
}

// RemoveNode removes a node: its pods (server, CNI DEL, namespace), its
// agent (SIGTERM, then SIGKILL after 15 s), its namespace, pin directory
// and files, and its router peer. The cluster forgets the node when its
// lease in etcd expires.
func (l *Lab) RemoveNode(ctx context.Context, name string) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	if l.st.Mode == ModeSingle {
		return ErrSingleNode
	}
	if _, ok := l.node(name); !ok {
		return fmt.Errorf("node %q: %w", name, ErrNotFound)
	}
	return l.removeNode(ctx, name)
}

// removeNode does RemoveNode's work with the lock held; best effort.
func (l *Lab) removeNode(ctx context.Context, name string) error {
	n, ok := l.node(name)
	if !ok {
		return nil
	}
	node := *n
	var errs []error
	for _, p := range slices.Clone(l.st.Pods) {
		if p.Node != node.Name {
			continue
		}
		if err := l.removePod(ctx, &p, true); err != nil {
			errs = append(errs, err)
		}
		l.dropPod(p.Namespace, p.Name)
	}
	if err := node.Agent.stop(ctx, agentStopGrace); err != nil {
		errs = append(errs, fmt.Errorf("stop agent of %s: %w", node.Name, err))
	}
	if err := deleteNetns(ctx, node.Netns); err != nil {
		errs = append(errs, err)
	}
	if err := l.removePins(node); err != nil {
		errs = append(errs, err)
	}
	if err := l.st.removeCgroup(ctx, node.Cgroup); err != nil {
		errs = append(errs, fmt.Errorf("remove cgroup of %s: %w", node.Name, err))
	}
	if node.Dir != "" && filepath.Dir(node.Dir) == l.st.Dir {
		if err := os.RemoveAll(node.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove node dir: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		// Keep the node recorded so that a retry or Down finishes the job.
		_ = l.st.save()
		return fmt.Errorf("remove node %s: %w", node.Name, err)
	}
	if i := slices.IndexFunc(l.st.Nodes, func(x Node) bool { return x.Name == node.Name }); i >= 0 {
		l.st.Nodes = slices.Delete(l.st.Nodes, i, i+1)
	}
	if err := l.st.save(); err != nil {
		return err
	}
	if l.st.Router != nil && l.st.Router.Bird.Alive() {
		if err := l.reconfigureRouter(ctx); err != nil {
			return fmt.Errorf("remove node %s: %w", node.Name, err)
		}
	}
	l.log.Info("node removed", "node", node.Name)
	return nil
}

// StopAgent stops a node's agent (SIGTERM; SIGKILL after 15 s). Its BPF
// pins stay, so established pod traffic on the node keeps flowing.
func (l *Lab) StopAgent(ctx context.Context, node string) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	n, ok := l.node(node)
	if !ok {
		return fmt.Errorf("node %q: %w", node, ErrNotFound)
	}
	if err := n.Agent.stop(ctx, agentStopGrace); err != nil {
		return fmt.Errorf("stop agent of %s: %w", n.Name, err)
	}
	n.Agent = Proc{}
	return l.st.save()
}

// StartAgent starts a node's agent if it is not running and waits until
// its API answers.
func (l *Lab) StartAgent(ctx context.Context, node string) error {
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	n, ok := l.node(node)
	if !ok {
		return fmt.Errorf("node %q: %w", node, ErrNotFound)
	}
	if n.Agent.Alive() {
		return nil
	}
	return l.startAgent(ctx, slices.IndexFunc(l.st.Nodes, func(x Node) bool { return x.Name == n.Name }))
}

// ---- teardown ----

// downCluster stops bird and etcd and deletes the router, etcd and fabric
// namespaces; best effort. Nodes are gone already.
func (l *Lab) downCluster(ctx context.Context) error {
	var errs []error
	if r := l.st.Router; r != nil {
		if err := r.Bird.stop(ctx, birdStopGrace); err != nil {
			errs = append(errs, fmt.Errorf("stop bird: %w", err))
		}
		errs = append(errs, deleteNetns(ctx, r.Netns))
	}
	if e := l.st.EtcdServer; e != nil {
		if err := e.Proc.stop(ctx, etcdStopGrace); err != nil {
			errs = append(errs, fmt.Errorf("stop etcd: %w", err))
		}
	}
	for _, m := range l.st.EtcdMembers {
		if err := m.Proc.stop(ctx, etcdStopGrace); err != nil {
			errs = append(errs, fmt.Errorf("stop etcd member %s: %w", m.Name, err))
		}
		errs = append(errs, deleteNetns(ctx, m.Netns))
	}
	if e := l.st.Ext; e != nil {
		errs = append(errs, deleteNetns(ctx, e.Netns))
	}
	if l.st.FabricNetns != "" {
		errs = append(errs, deleteNetns(ctx, l.st.FabricNetns))
	}
	return errors.Join(errs...)
}

// forgetCluster clears process records after a successful Down.
func (l *Lab) forgetCluster() {
	if l.st.Router != nil {
		l.st.Router.Bird = Proc{}
	}
	if l.st.EtcdServer != nil {
		l.st.EtcdServer.Proc = Proc{}
	}
	for i := range l.st.EtcdMembers {
		l.st.EtcdMembers[i].Proc = Proc{}
	}
}

// derivedNetnsRE matches the infrastructure and node namespaces of a lab
// by exact shape, so that it never matches another lab's ("a" and "a-b")
// or a pod's namespace.
func derivedNetnsRE(lab string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(netnsPrefix+lab) + `-(fabric|router|ext|etcd[0-9]+|node[0-9]+)$`)
}

func derivedPinRE(lab string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(lab) + `-node[0-9]+$`)
}

// sweepDerived removes the lab's node, router, etcd and fabric namespaces
// (and every process in them: agents, bird, etcd) and node pin
// directories found by name. Nodes go first, the fabric last.
func (l *Lab) sweepDerived(ctx context.Context) error {
	var errs []error
	re := derivedNetnsRE(l.st.Name)
	ents, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list %s: %w", netnsDir, err))
	}
	var names []string
	for _, e := range ents {
		if re.MatchString(e.Name()) {
			names = append(names, e.Name())
		}
	}
	rank := func(s string) int {
		switch {
		case strings.Contains(s, "-node"):
			return 0
		case strings.HasSuffix(s, "-fabric"):
			return 2
		}
		return 1
	}
	slices.SortFunc(names, func(a, b string) int { return rank(a) - rank(b) })
	for _, n := range names {
		l.log.Info("removing left-over namespace", "netns", n)
		errs = append(errs, deleteNetns(ctx, n))
	}
	if root := filepath.Clean(l.st.BPFRoot); l.st.BPFRoot != "" && root != "/" {
		pre := derivedPinRE(l.st.Name)
		ents, _ := os.ReadDir(root)
		for _, e := range ents {
			if e.IsDir() && pre.MatchString(e.Name()) {
				errs = append(errs, l.removePins(Node{PinDir: filepath.Join(root, e.Name())}))
			}
		}
	}
	return errors.Join(errs...)
}

// clusterStatus reports etcd and the router.
func clusterStatus(ctx context.Context, st state) ([]ProcessStatus, *ProcessStatus) {
	health := func(ps *ProcessStatus, nsPath, url string) {
		if !ps.Alive {
			return
		}
		hctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		err := etcdHealthy(hctx, nsPath, url)
		ok := err == nil
		ps.Healthy = &ok
		if err != nil {
			ps.Message = err.Error()
		}
	}
	var etcd []ProcessStatus
	if e := st.EtcdServer; e != nil {
		ps := ProcessStatus{Name: "etcd", Netns: st.FabricNetns, Address: e.ClientURL(), PID: e.Proc.PID, Alive: e.Proc.Alive()}
		health(&ps, "", e.ClientURL())
		etcd = append(etcd, ps)
	}
	for _, m := range st.EtcdMembers {
		ps := ProcessStatus{Name: m.Name, Netns: m.Netns, Address: m.ClientURL(), PID: m.Proc.PID, Alive: m.Proc.Alive()}
		health(&ps, netnsPath(m.Netns), m.ClientURL())
		etcd = append(etcd, ps)
	}
	var router *ProcessStatus
	if r := st.Router; r != nil {
		router = &ProcessStatus{Name: "bird", Netns: r.Netns, Address: r.IP.String(), PID: r.Bird.PID, Alive: r.Bird.Alive()}
	}
	return etcd, router
}
