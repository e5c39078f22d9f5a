package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
)

// Errors.
var (
	// ErrNotFound: no such lab, node or pod.
	ErrNotFound = errors.New("not found")
	// ErrExists: the lab or pod exists already.
	ErrExists = errors.New("already exists")
)

// Timeouts.
const (
	agentReadyTimeout = 30 * time.Second
	agentStopGrace    = 15 * time.Second
	serverStopGrace   = 3 * time.Second
	cniTimeout        = 30 * time.Second
	rollbackTimeout   = 2 * time.Minute
)

// Lab is a handle on a lab's state. Its methods are safe for concurrent use
// and coordinate with other processes through a lock on the lab directory.
type Lab struct {
	mu  sync.Mutex
	st  state
	log *slog.Logger
}

// Up creates a lab: the node namespace (lo up) and the node's agent, and
// waits for the agent's API. On failure everything it made is removed.
func Up(ctx context.Context, cfg Config) (_ *Lab, retErr error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	st := state{
		Version:    stateVersion,
		Name:       cfg.Name,
		Dir:        filepath.Clean(cfg.Dir),
		BinDir:     cfg.BinDir,
		PodCIDR:    cfg.PodCIDR,
		ServePorts: cfg.ServePorts,
		BPFRoot:    filepath.Clean(cfg.BPFRoot),
		AgentArgs:  append([]string(nil), cfg.AgentArgs...),
		CreatedAt:  time.Now().UTC().Truncate(time.Second),
	}
	st.planCgroups()
	var err error
	if st.AgentBin, err = findBinary(cfg.BinDir, "membrane-agent"); err != nil {
		return nil, err
	}
	cniBin, err := findBinary(cfg.BinDir, "membrane-cni")
	if err != nil {
		return nil, err
	}
	st.CNIBinDir = filepath.Dir(cniBin)
	if st.MembraneBin, err = findBinary(cfg.BinDir, "membrane"); err != nil {
		return nil, err
	}

	_, statErr := os.Stat(st.Dir)
	if err := os.MkdirAll(st.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create lab dir: %w", err)
	}
	unlock, err := lockDir(ctx, st.Dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(statePath(st.Dir)); err == nil {
		return nil, fmt.Errorf("lab %q: %w (state in %s; run `membrane lab down --name %s` first)", st.Name, ErrExists, st.Dir, st.Name)
	}

	if cfg.Mode != ModeSingle {
		st.Mode, st.Etcd = cfg.Mode, cfg.Etcd
		st.NodeCIDR, st.ClusterCIDR, st.NodeLeaseTTL = cfg.NodeCIDR, cfg.ClusterCIDR, cfg.NodeLeaseTTL
		st.PodCIDR = netip.Prefix{} // allocated by the agents
		if err := st.planCluster(cfg.Nodes); err != nil {
			return nil, err
		}
	} else {
		node := Node{
			Name:      DefaultNode,
			AgentName: agentNodeName(st.Name, DefaultNode),
			Netns:     nodeNetnsName(st.Name, DefaultNode),
			Dir:       filepath.Join(st.Dir, DefaultNode),
			PodCIDR:   st.PodCIDR,
			Cgroup:    st.nodeCgroup(DefaultNode),
		}
		node.Socket = filepath.Join(node.Dir, "agent.sock")
		node.LogPath = filepath.Join(node.Dir, "agent.log")
		node.PinDir = filepath.Join(st.BPFRoot, node.AgentName)
		st.Nodes = []Node{node}
	}
	if leftover := st.leftover(); leftover != "" {
		if errors.Is(statErr, fs.ErrNotExist) {
			_ = os.RemoveAll(st.Dir)
		}
		return nil, fmt.Errorf("lab %q: %s is left over from an earlier run; run `membrane lab down --name %s` first", st.Name, leftover, st.Name)
	}

	l := &Lab{st: st, log: cfg.Logger}
	if err := l.st.save(); err != nil {
		_ = os.RemoveAll(st.Dir)
		return nil, err
	}
	defer func() {
		if retErr != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			l.log.Warn("lab up failed; rolling back", "lab", st.Name, "err", retErr)
			if err := l.downLocked(rctx); err != nil {
				retErr = fmt.Errorf("%w (rollback: %v)", retErr, err)
			}
		}
	}()

	if err := l.setupCgroups(); err != nil {
		return nil, err
	}
	if l.st.Mode != ModeSingle {
		if err := l.buildCluster(ctx); err != nil {
			return nil, err
		}
		return l, nil
	}
	node := l.st.Nodes[0]
	l.log.Info("creating node namespace", "node", node.Name, "netns", node.Netns)
	if err := createNetns(ctx, node.Netns); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(node.Dir, "state"), 0o700); err != nil {
		return nil, fmt.Errorf("create node dir: %w", err)
	}
	if err := l.st.mkNodeCgroups(node); err != nil {
		return nil, err
	}
	if err := l.startAgent(ctx, 0); err != nil {
		return nil, err
	}
	return l, nil
}

// Open loads the lab with the given name from its default directory.
func Open(name string) (*Lab, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	return OpenDir(filepath.Join(DefaultBaseDir, name))
}

// OpenDir loads the lab whose state is in dir.
func OpenDir(dir string) (*Lab, error) {
	st, err := loadState(dir)
	if err != nil {
		return nil, err
	}
	return &Lab{st: st, log: slog.New(slog.DiscardHandler)}, nil
}

// SetLogger sets where progress messages go.
func (l *Lab) SetLogger(lg *slog.Logger) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	l.log = lg
}

// Reclaim removes whatever a lab with this config left behind, with or
// without its state file: it is Down for labs whose state is gone (a crash
// during Up before the state was written, a deleted directory). Objects
// whose names are derived from the lab name alone (node namespace, pin
// directory, lab directory) are always removed.
func Reclaim(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	l, err := OpenDir(cfg.Dir)
	if err != nil && !errors.Is(err, ErrNotFound) {
		// Unreadable state: fall back to the derived names below.
		cfg.Logger.Warn("lab state unreadable; removing derived objects only", "err", err)
	}
	if l == nil || err != nil {
		node := Node{
			Name:      DefaultNode,
			AgentName: agentNodeName(cfg.Name, DefaultNode),
			Netns:     nodeNetnsName(cfg.Name, DefaultNode),
			PinDir:    filepath.Join(cfg.BPFRoot, agentNodeName(cfg.Name, DefaultNode)),
		}
		l = &Lab{st: state{Name: cfg.Name, Dir: cfg.Dir, BPFRoot: cfg.BPFRoot, Nodes: []Node{node}}}
	}
	l.log = cfg.Logger
	return l.Down(ctx)
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.st.Name }

// Dir is the lab's directory.
func (l *Lab) Dir() string { return l.st.Dir }

// Nodes lists the lab's nodes.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.st.Nodes)
}

// NodeSocket is the agent API socket of a node ("" means node1); "" if
// there is no such node.
func (l *Lab) NodeSocket(node string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.node(node); ok {
		return n.Socket
	}
	return ""
}

func (l *Lab) node(name string) (*Node, bool) {
	if name == "" {
		name = DefaultNode
	}
	for i := range l.st.Nodes {
		if l.st.Nodes[i].Name == name {
			return &l.st.Nodes[i], true
		}
	}
	return nil, false
}

// lock serialises mutations with other goroutines and processes and
// reloads the state, which another process may have changed.
func (l *Lab) lock(ctx context.Context) (unlock func(), err error) {
	l.mu.Lock()
	fu, err := lockDir(ctx, l.st.Dir)
	if err != nil {
		l.mu.Unlock()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("lab %q: %w (no directory %s)", l.st.Name, ErrNotFound, l.st.Dir)
		}
		return nil, err
	}
	st, err := loadState(l.st.Dir)
	if err != nil {
		fu()
		l.mu.Unlock()
		return nil, err
	}
	l.st = st
	return func() { fu(); l.mu.Unlock() }, nil
}

// Down removes the lab: servers, CNI attachments, agents, namespaces, BPF
// pins and the lab directory. It is best effort (every step is tried, the
// errors are joined) and idempotent.
func (l *Lab) Down(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := os.Stat(l.st.Dir); err == nil {
		if fu, err := lockDir(ctx, l.st.Dir); err == nil {
			defer fu()
			if st, err := loadState(l.st.Dir); err == nil {
				l.st = st
			}
		}
	}
	return l.downLocked(ctx)
}

func (l *Lab) downLocked(ctx context.Context) error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range l.st.Pods {
		add(p.server().stop(ctx, serverStopGrace))
	}
	for i := range l.st.Pods {
		p := &l.st.Pods[i]
		add(l.cniDel(ctx, p, true))
	}
	if len(l.st.Pods) > 0 {
		l.cniGC(ctx)
	}
	for _, n := range l.st.Nodes {
		if err := n.Agent.stop(ctx, agentStopGrace); err != nil {
			add(fmt.Errorf("stop agent of %s: %w", n.Name, err))
		}
	}
	for _, p := range l.st.Pods {
		add(deleteNetns(ctx, p.Netns))
	}
	for _, n := range l.st.Nodes {
		add(deleteNetns(ctx, n.Netns))
		add(l.removePins(n))
	}
	add(l.downCluster(ctx))
	// Whatever the state says, remove every object whose name derives from
	// the lab's name alone: a crash may have left more than was recorded.
	add(l.sweepDerived(ctx))
	// Cgroups last: every process the lab started is gone by now; the
	// subtree is removed (stray `lab exec` commands are killed) and the
	// lab's cgroup2 mount is unmounted.
	add(l.downCgroups(ctx))
	if l.st.Dir != "" {
		if err := os.RemoveAll(l.st.Dir); err != nil {
			add(fmt.Errorf("remove lab dir: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s down: %w", l.st.Name, err)
	}
	// Forget what is gone, so that another Down is a quick no-op.
	l.st.Pods = nil
	for i := range l.st.Nodes {
		l.st.Nodes[i].Agent = Proc{}
	}
	l.forgetCluster()
	l.log.Info("lab removed", "lab", l.st.Name)
	return nil
}

// removePins removes the node's BPF pin directory. Removing the pins of
// links detaches them: their pin was the last reference once the agent has
// stopped.
func (l *Lab) removePins(n Node) error {
	if n.PinDir == "" {
		return nil
	}
	root := filepath.Clean(l.st.BPFRoot)
	if filepath.Dir(filepath.Clean(n.PinDir)) != root || root == "/" {
		return fmt.Errorf("refusing to remove pin dir %s: not directly under bpf root %s", n.PinDir, root)
	}
	if err := os.RemoveAll(n.PinDir); err != nil {
		return fmt.Errorf("remove pin dir %s: %w", n.PinDir, err)
	}
	// The bpf root itself is shared with other labs and agents; it stays.
	return nil
}

// startAgent starts node i's agent and waits for its API.
func (l *Lab) startAgent(ctx context.Context, i int) error {
	n := &l.st.Nodes[i]
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	// nsenter switches only the network namespace: the agent keeps the
	// host's mount namespace and so sees bpffs at /sys/fs/bpf (`ip netns
	// exec` would remount /sys).
	argv := append([]string{nsenter, "--net=" + netnsPath(n.Netns), "--"}, l.st.agentArgv(*n)...)
	l.log.Info("starting agent", "node", n.Name, "log", n.LogPath, "cgroup", n.Cgroup)
	cg := ""
	if n.Cgroup != "" {
		cg = filepath.Join(n.Cgroup, cgroupAgentDir)
	}
	p, err := startDetached(argv, nil, n.LogPath, cg)
	if err != nil {
		return fmt.Errorf("start agent of %s: %w", n.Name, err)
	}
	n.Agent = p
	if err := l.st.save(); err != nil {
		return err
	}
	st, err := waitAgent(ctx, *n, l.st.Mode != ModeSingle)
	if err != nil {
		return err
	}
	if l.st.Mode != ModeSingle && n.PodCIDR != st.PodCIDR {
		n.PodCIDR = st.PodCIDR
		l.log.Info("agent ready", "node", n.Name, "ip", n.IP, "podCIDR", n.PodCIDR)
		return l.st.save()
	}
	return nil
}

// agentArgv is the agent's command line (without nsenter).
func (st *state) agentArgv(n Node) []string {
	argv := []string{st.AgentBin,
		"--node-name", n.AgentName,
		"--state-dir", filepath.Join(n.Dir, "state"),
		"--socket", n.Socket,
	}
	if st.Mode == ModeSingle {
		argv = append(argv, "--pod-cidr", n.PodCIDR.String())
	}
	argv = append(argv,
		"--bpf-root", st.BPFRoot,
		"--prometheus-serve-addr", "127.0.0.1:"+MetricsPort,
	)
	if n.Cgroup != "" {
		// The node's own subtree: its programs act on its processes only.
		argv = append(argv, "--cgroup-root", n.Cgroup)
	}
	if st.Mode != ModeSingle {
		argv = append(argv,
			"--node-ip", n.IP.String(),
			"--cluster-cidr", st.ClusterCIDR.String(),
			"--pod-cidr=", // allocated from the cluster CIDR through etcd
			"--routing-mode", st.Mode,
			"--kvstore-endpoints", strings.Join(st.etcdEndpoints(), ","),
		)
		if st.Mode == ModeNative && st.Router != nil {
			argv = append(argv,
				"--bgp-asn", strconv.FormatUint(uint64(n.ASN), 10),
				"--bgp-peers", st.Router.IP.String()+":"+strconv.FormatUint(uint64(st.Router.ASN), 10),
			)
		}
		if st.NodeLeaseTTL > 0 {
			argv = append(argv, "--node-lease-ttl", st.NodeLeaseTTL.String())
		}
	}
	return append(argv, st.AgentArgs...)
}

// waitAgent polls the agent's status API until it answers (and, with
// needCIDR, reports a pod CIDR), the agent exits or agentReadyTimeout
// passes.
func waitAgent(ctx context.Context, n Node, needCIDR bool) (api.Status, error) {
	c := api.NewClient(n.Socket)
	deadline := time.Now().Add(agentReadyTimeout)
	var lastErr error
	for {
		if !n.Agent.Alive() {
			return api.Status{}, fmt.Errorf("agent of %s exited during start-up; last lines of %s:\n%s", n.Name, n.LogPath, tailFile(n.LogPath, 20))
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.Status(sctx)
		cancel()
		if err == nil && needCIDR && !st.PodCIDR.IsValid() {
			err = errors.New("agent reports no pod CIDR yet")
		}
		if err == nil {
			return st, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			return api.Status{}, fmt.Errorf("wait for agent of %s: %w", n.Name, ctx.Err())
		}
		if time.Now().After(deadline) {
			return api.Status{}, fmt.Errorf("agent of %s not ready after %s (%v); last lines of %s:\n%s", n.Name, agentReadyTimeout, lastErr, n.LogPath, tailFile(n.LogPath, 20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// RestartAgent stops a node's agent (SIGTERM; SIGKILL after 15 s), starts
// it again and waits until its API answers. BPF pins stay in place, so pod
// traffic is expected to continue across the restart.
func (l *Lab) RestartAgent(ctx context.Context, node string) error {
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
		l.log.Warn("agent did not stop cleanly", "node", n.Name, "err", err)
	}
	return l.startAgent(ctx, slices.IndexFunc(l.st.Nodes, func(x Node) bool { return x.Name == n.Name }))
}

// findBinary locates a lab binary: in binDir if given, else next to the
// running executable, else in $PATH. The running executable itself counts
// for "membrane".
func findBinary(binDir, name string) (string, error) {
	isExec := func(p string) bool {
		fi, err := os.Stat(p)
		return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
	}
	if binDir != "" {
		if p := filepath.Join(binDir, name); isExec(p) {
			return p, nil
		}
	}
	if exe, err := os.Executable(); err == nil {
		if filepath.Base(exe) == name && isExec(exe) {
			return exe, nil
		}
		if p := filepath.Join(filepath.Dir(exe), name); binDir == "" && isExec(p) {
			return p, nil
		}
	}
	if binDir != "" {
		return "", fmt.Errorf("find %s: not in bin dir %s", name, binDir)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("find %s: not next to this executable nor in $PATH (build with `go build -o bin/ ./cmd/...` and pass --bin-dir)", name)
	}
	return filepath.Abs(p)
}

// Status is a lab's observed state.
type Status struct {
	Name      string       `json:"name"`
	Dir       string       `json:"dir"`
	CreatedAt time.Time    `json:"createdAt"`
	Nodes     []NodeStatus `json:"nodes"`
	Pods      []PodStatus  `json:"pods"`
	// CgroupRoot is the lab's cgroup v2 subtree ("" for labs made before
	// cgroups); CgroupMount the cgroup2 mount it is in.
	CgroupRoot  string `json:"cgroupRoot,omitempty"`
	CgroupMount string `json:"cgroupMount,omitempty"`

	// Multi-node labs only.
	Mode        string          `json:"mode,omitempty"`
	NodeCIDR    netip.Prefix    `json:"nodeCIDR,omitzero"`
	ClusterCIDR netip.Prefix    `json:"clusterCIDR,omitzero"`
	EtcdMode    string          `json:"etcdMode,omitempty"`
	Etcd        []ProcessStatus `json:"etcd,omitempty"`
	Router      *ProcessStatus  `json:"router,omitempty"`
	Ext         *ExtStatus      `json:"ext,omitempty"`
}

// ExtStatus is the external host of a multi-node lab.
type ExtStatus struct {
	ExtHost
	NetnsPresent bool `json:"netnsPresent"`
}

// ProcessStatus is a lab infrastructure process: an etcd member or server,
// or the router's bird.
type ProcessStatus struct {
	Name    string `json:"name"`
	Netns   string `json:"netns"`
	Address string `json:"address"` // client URL or router IP
	PID     int    `json:"pid,omitempty"`
	Alive   bool   `json:"alive"`
	Healthy *bool  `json:"healthy,omitempty"` // etcd: answers /health; nil if not asked
	Message string `json:"message,omitempty"`
}

// NodeStatus is a node and what its agent says.
type NodeStatus struct {
	Node
	AgentAlive bool        `json:"agentAlive"`
	API        *api.Status `json:"api,omitempty"`
	APIError   string      `json:"apiError,omitempty"`
}

// PodStatus is a pod, its server and its endpoint as the agent sees it.
type PodStatus struct {
	Pod
	ServerAlive   bool   `json:"serverAlive"`
	NetnsPresent  bool   `json:"netnsPresent"`
	EndpointState string `json:"endpointState"` // agent's endpoint state; "missing" if unknown to the agent; "" if the agent did not answer
}

// Status reports the nodes (agent alive, API status) and pods.
func (l *Lab) Status(ctx context.Context) (Status, error) {
	l.mu.Lock()
	if st, err := loadState(l.st.Dir); err == nil {
		l.st = st
	} else {
		l.mu.Unlock()
		return Status{}, err
	}
	st := l.st
	l.mu.Unlock()

	out := Status{Name: st.Name, Dir: st.Dir, CreatedAt: st.CreatedAt, CgroupRoot: st.CgroupRoot, CgroupMount: st.CgroupMount}
	if st.Mode != ModeSingle {
		out.Mode, out.NodeCIDR, out.ClusterCIDR, out.EtcdMode = st.Mode, st.NodeCIDR, st.ClusterCIDR, st.Etcd
		out.Etcd, out.Router = clusterStatus(ctx, st)
	}
	if st.Ext != nil {
		out.Ext = &ExtStatus{ExtHost: *st.Ext, NetnsPresent: netnsExists(st.Ext.Netns)}
	}
	epState := map[string]string{} // container ID → state
	answered := map[string]bool{}  // node → endpoints listed
	for _, n := range st.Nodes {
		ns := NodeStatus{Node: n, AgentAlive: n.Agent.Alive()}
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		c := api.NewClient(n.Socket)
		if s, err := c.Status(cctx); err != nil {
			ns.APIError = err.Error()
		} else {
			ns.API = &s
			if eps, err := c.Endpoints(cctx); err == nil {
				answered[n.Name] = true
				for _, ep := range eps {
					epState[ep.ContainerID] = ep.State
				}
			}
		}
		cancel()
		out.Nodes = append(out.Nodes, ns)
	}
	for _, p := range st.Pods {
		ps := PodStatus{Pod: p, ServerAlive: p.server().Alive(), NetnsPresent: netnsExists(p.Netns)}
		if answered[p.Node] {
			ps.EndpointState = epState[p.ContainerID]
			if ps.EndpointState == "" {
				ps.EndpointState = "missing"
			}
		}
		out.Pods = append(out.Pods, ps)
	}
	return out, nil
}

func joinLabels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		keys[i] = k + "=" + m[k]
	}
	return strings.Join(keys, ",")
}
