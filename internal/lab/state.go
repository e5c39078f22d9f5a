package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/membrane-net/membrane/internal/api"
)

const (
	stateFileName = "state.json"
	lockFileName  = ".lock"
	stateVersion  = 1
)

// state is what state.json holds: the lab's config, the paths it resolved
// and every object it created. Objects are recorded before they are created
// so that a crash leaves a record Down can clean up from.
type state struct {
	Version     int          `json:"version"`
	Name        string       `json:"name"`
	Dir         string       `json:"dir"`
	BinDir      string       `json:"binDir,omitempty"` // as configured
	AgentBin    string       `json:"agentBin"`
	CNIBinDir   string       `json:"cniBinDir"`
	MembraneBin string       `json:"membraneBin"`
	PodCIDR     netip.Prefix `json:"podCIDR"`
	ServePorts  []Port       `json:"servePorts"`
	BPFRoot     string       `json:"bpfRoot"`
	AgentArgs   []string     `json:"agentArgs,omitempty"`
	CreatedAt   time.Time    `json:"createdAt"`
	Nodes       []Node       `json:"nodes"`
	Pods        []Pod        `json:"pods"`

	// Multi-node labs (Mode != ""); all empty for the single-node lab.
	Mode         string        `json:"mode,omitempty"`
	Etcd         string        `json:"etcd,omitempty"`
	NodeCIDR     netip.Prefix  `json:"nodeCIDR,omitzero"`
	ClusterCIDR  netip.Prefix  `json:"clusterCIDR,omitzero"`
	NodeLeaseTTL time.Duration `json:"nodeLeaseTTL,omitempty"`
	// LastNode is the highest node index ever used; AddNode takes the
	// next one, so a removed node's name is never reused in a lab.
	LastNode int `json:"lastNode,omitempty"`
	// FabricNetns holds the fabric bridge (and the embedded etcd server).
	FabricNetns string `json:"fabricNetns,omitempty"`
	// Router is the BGP router of native mode.
	Router *Router `json:"router,omitempty"`
	// EtcdServer is the embedded etcd server's process.
	EtcdServer *EtcdServer `json:"etcdServer,omitempty"`
	// EtcdMembers are the external etcd members.
	EtcdMembers []EtcdMember `json:"etcdMembers,omitempty"`
	// Ext is the external host on the fabric (multi-node labs).
	Ext *ExtHost `json:"ext,omitempty"`

	// CgroupMount is the cgroup v2 mount the lab uses: /sys/fs/cgroup when
	// that is cgroup v2, else the lab's own mount (CgroupMounted).
	CgroupMount   string `json:"cgroupMount,omitempty"`
	CgroupMounted bool   `json:"cgroupMounted,omitempty"`
	// CgroupRoot is the lab's subtree, <CgroupMount>/membrane-lab-<Name>;
	// node and pod cgroups are below it. "" for labs made before cgroups.
	CgroupRoot string `json:"cgroupRoot,omitempty"`
}

// ExtHost is a namespace on the fabric standing for a machine outside the
// cluster: it reaches the node IPs (the fabric is its only route) and has
// no route to any pod CIDR.
type ExtHost struct {
	Netns  string     `json:"netns"`
	IP     netip.Addr `json:"ip"`
	Cgroup string     `json:"cgroup,omitempty"`
}

// Router is the native mode's router: a namespace on the fabric running
// bird.
type Router struct {
	Netns   string     `json:"netns"`
	IP      netip.Addr `json:"ip"`
	ASN     uint32     `json:"asn"`
	Dir     string     `json:"dir"`
	Config  string     `json:"config"`  // bird.conf
	Socket  string     `json:"socket"`  // bird's control socket
	PIDFile string     `json:"pidFile"` // bird -P
	LogPath string     `json:"logPath"`
	Bird    Proc       `json:"bird"`
}

// EtcdServer is the lab-wide embedded etcd (`membrane lab etcd-serve`),
// running in the fabric namespace and served on unix sockets only.
type EtcdServer struct {
	Dir     string `json:"dir"`
	LogPath string `json:"logPath"`
	Proc    Proc   `json:"proc"`
}

// ClientURL is the server's client endpoint.
func (e EtcdServer) ClientURL() string { return "unix://" + filepath.Join(e.Dir, "client.sock") }

// EtcdMember is one member of the external etcd cluster.
type EtcdMember struct {
	Index   int        `json:"index"` // 1-based
	Name    string     `json:"name"`  // m1, m2, m3
	Netns   string     `json:"netns"`
	IP      netip.Addr `json:"ip"`
	DataDir string     `json:"dataDir"`
	LogPath string     `json:"logPath"`
	Proc    Proc       `json:"proc"`
}

// ClientURL is the member's client endpoint.
func (m EtcdMember) ClientURL() string { return "http://" + netip.AddrPortFrom(m.IP, 2379).String() }

// PeerURL is the member's peer endpoint.
func (m EtcdMember) PeerURL() string { return "http://" + netip.AddrPortFrom(m.IP, 2380).String() }

// Node is one lab node: a network namespace with an agent in it.
type Node struct {
	Name      string       `json:"name"`      // lab-local name, "node1"
	AgentName string       `json:"agentName"` // --node-name, "<lab>-node1"
	Netns     string       `json:"netns"`
	Dir       string       `json:"dir"`
	Socket    string       `json:"socket"`
	LogPath   string       `json:"logPath"`
	PinDir    string       `json:"pinDir"`
	PodCIDR   netip.Prefix `json:"podCIDR"`
	Agent     Proc         `json:"agent"`
	// Cgroup is the node's cgroup v2 directory, the agent's --cgroup-root:
	// the agent runs in Cgroup/agent, pods in Cgroup/pods/<ns>_<name>.
	Cgroup string `json:"cgroup,omitempty"`

	// Multi-node labs only.
	Index int        `json:"index,omitempty"` // node<Index>
	IP    netip.Addr `json:"ip,omitzero"`     // fabric address on eth0
	ASN   uint32     `json:"asn,omitempty"`   // BGP AS (native mode)
}

// Pod states.
const (
	PodCreating = "creating" // recorded, not (yet) fully set up
	PodReady    = "ready"
)

// Pod is one lab pod: a network namespace attached through the CNI plugin,
// with a traffic server in it.
type Pod struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	Node        string            `json:"node"`
	Netns       string            `json:"netns"`
	ContainerID string            `json:"containerID"`
	IP          netip.Addr        `json:"ip,omitzero"`
	Labels      map[string]string `json:"labels,omitempty"`
	Ports       []api.NamedPort   `json:"ports,omitempty"`
	ServerPID   int               `json:"serverPID,omitempty"`
	ServerStart uint64            `json:"serverStart,omitempty"`
	LogPath     string            `json:"logPath"`
	State       string            `json:"state"`
	// Cgroup is the pod's cgroup v2 directory; its server and `lab exec`
	// commands run in it.
	Cgroup string `json:"cgroup,omitempty"`
}

// Key is "namespace/name".
func (p Pod) Key() string { return PodKey(p.Namespace, p.Name) }

func (p Pod) server() Proc { return Proc{PID: p.ServerPID, StartTime: p.ServerStart} }

func statePath(dir string) string { return filepath.Join(dir, stateFileName) }

func loadState(dir string) (state, error) {
	var st state
	b, err := os.ReadFile(statePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("%w: no %s in %s", ErrNotFound, stateFileName, dir)
	}
	if err != nil {
		return st, fmt.Errorf("read lab state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse lab state %s: %w", statePath(dir), err)
	}
	if st.Version != stateVersion {
		return st, fmt.Errorf("lab state %s has version %d, want %d", statePath(dir), st.Version, stateVersion)
	}
	return st, nil
}

// save writes state.json atomically.
func (st *state) save() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	tmp := statePath(st.Dir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, statePath(st.Dir)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// lockDir takes an exclusive flock on dir/.lock, waiting up to 60 s or
// until ctx ends. A missing dir yields a no-op unlock and fs.ErrNotExist.
func lockDir(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return func() {}, fmt.Errorf("lock lab dir: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return func() {}, fmt.Errorf("lock lab dir: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return func() {}, fmt.Errorf("lock lab dir %s: another membrane lab command holds it", dir)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return func() {}, fmt.Errorf("lock lab dir: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
