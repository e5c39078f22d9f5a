package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults.
const (
	DefaultName    = "demo"
	DefaultBaseDir = "/var/lib/membrane-lab"
	DefaultBPFRoot = "/sys/fs/bpf/membrane"
	// MetricsPort is where every lab agent serves Prometheus metrics, on
	// 127.0.0.1 inside its node namespace.
	MetricsPort = "9962"
	// DefaultNode is the name of the lab's (single, for now) node.
	DefaultNode = "node1"
	// DefaultPodNamespace is the pod namespace used when none is given.
	DefaultPodNamespace = "default"

	maxNameLen = 12
	netnsDir   = "/run/netns"
	// netnsPrefix starts every namespace a lab creates; deleteNetns refuses
	// any other name.
	netnsPrefix = "mbr-"
	// maxNetnsName bounds pod namespace names; longer ones are shortened
	// and suffixed with a hash.
	maxNetnsName = 48
)

// DefaultPodCIDR is the node's pod CIDR unless configured.
var DefaultPodCIDR = netip.MustParsePrefix("10.200.1.0/24")

// Multi-node defaults.
var (
	// DefaultNodeCIDR is the fabric: node i gets .10+i, the router .1,
	// the external etcd members .2, .3 and .4.
	DefaultNodeCIDR = netip.MustParsePrefix("172.30.0.0/24")
	// DefaultClusterCIDR is where agents allocate their pod CIDRs.
	DefaultClusterCIDR = netip.MustParsePrefix("10.200.0.0/16")
)

// Routing modes and etcd modes.
const (
	ModeSingle = ""       // one node, the agent runs its own embedded etcd (the original lab)
	ModeVXLAN  = "vxlan"  // nodes on a fabric, pod traffic tunnelled between node IPs
	ModeNative = "native" // nodes on a fabric behind a BGP router (bird2)

	EtcdEmbedded = "embedded" // one lab-wide etcd server on a unix socket (`membrane lab etcd-serve`)
	EtcdExternal = "external" // three Debian etcd members in their own namespaces

	// RouterASN is the router's BGP AS; node i is NodeASNBase+i.
	RouterASN   = 64512
	NodeASNBase = 64600

	// EtcdMembers is the size of the external etcd cluster.
	EtcdMembers = 3

	// MaxNodes bounds Nodes at Up.
	MaxNodes = 64

	// fabric address offsets inside NodeCIDR.
	routerOffset = 1
	etcdOffset   = 1 // member i (1-based) is at .etcdOffset+i
	nodeOffset   = 10
	// extOffset is the external host's address (the last usable one in
	// fabrics smaller than /24).
	extOffset      = 250
	fabricVethName = "eth0"
	fabricBridge   = "br0"
)

// DefaultServePorts are the ports every pod's traffic server listens on.
var DefaultServePorts = []Port{{8080, "tcp"}, {9090, "tcp"}, {8080, "udp"}, {9090, "udp"}}

// Port is a port number and a transport protocol ("tcp" or "udp").
type Port struct {
	Port  uint16 `json:"port"`
	Proto string `json:"proto"`
}

func (p Port) String() string { return strconv.Itoa(int(p.Port)) + "/" + p.Proto }

// Config describes a lab. The zero value of every field means its default.
type Config struct {
	// Name identifies the lab: [a-z0-9-], at most 12 characters, starting
	// and ending with a letter or digit. Default "demo".
	Name string
	// Dir holds the lab's state, logs and sockets.
	// Default /var/lib/membrane-lab/<Name>.
	Dir string
	// BinDir holds membrane-agent, membrane-cni and membrane. Default: the
	// directory of the running executable, else $PATH, per binary.
	BinDir string
	// PodCIDR is node1's pod CIDR. Default 10.200.1.0/24.
	PodCIDR netip.Prefix
	// ServePorts are the ports every pod's traffic server listens on, in
	// addition to the pod's own ports. Default 8080/tcp, 9090/tcp,
	// 8080/udp, 9090/udp.
	ServePorts []Port
	// AgentArgs are extra membrane-agent flags, appended after the lab's
	// own (so they win). The lab always serves the agent's Prometheus
	// metrics on 127.0.0.1:9962 inside the node namespace.
	AgentArgs []string
	// BPFRoot is the agent's --bpf-root; the node's pins live in
	// BPFRoot/<Name>-<node>. Default /sys/fs/bpf/membrane.
	BPFRoot string
	// Logger receives progress messages. Default: discard.
	Logger *slog.Logger

	// Nodes is the number of nodes created at Up. Default 1.
	Nodes int
	// Mode is "" (a single node whose agent runs its own embedded etcd:
	// the original lab), "vxlan" or "native". Default "" for one node,
	// "vxlan" for more (or when Etcd is set). With a mode, nodes sit on a
	// fabric bridge, agents allocate their pod CIDRs from ClusterCIDR
	// through a shared etcd, and PodCIDR is not used.
	Mode string
	// Etcd is "embedded" (one lab-wide server on a unix socket) or
	// "external" (three etcd members on the fabric). Default "embedded"
	// when Mode is set; must be empty otherwise.
	Etcd string
	// NodeCIDR is the fabric prefix. Default 172.30.0.0/24.
	NodeCIDR netip.Prefix
	// ClusterCIDR is the agents' --cluster-cidr. Default 10.200.0.0/16.
	ClusterCIDR netip.Prefix
	// NodeLeaseTTL is the agents' --node-lease-ttl; 0 leaves the agent's
	// default.
	NodeLeaseTTL time.Duration
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// ValidateName checks a lab name.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("lab name is empty")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("lab name %q is longer than %d characters", name, maxNameLen)
	}
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab name %q: use lower-case letters, digits and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// withDefaults returns c with every unset field filled in.
func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Dir == "" {
		c.Dir = filepath.Join(DefaultBaseDir, c.Name)
	}
	if !c.PodCIDR.IsValid() {
		c.PodCIDR = DefaultPodCIDR
	}
	if len(c.ServePorts) == 0 {
		c.ServePorts = slices.Clone(DefaultServePorts)
	}
	if c.BPFRoot == "" {
		c.BPFRoot = DefaultBPFRoot
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Nodes == 0 {
		c.Nodes = 1
	}
	if c.Mode == ModeSingle && (c.Nodes > 1 || c.Etcd != "") {
		c.Mode = ModeVXLAN
	}
	if c.Mode != ModeSingle && c.Etcd == "" {
		c.Etcd = EtcdEmbedded
	}
	if !c.NodeCIDR.IsValid() {
		c.NodeCIDR = DefaultNodeCIDR
	}
	if !c.ClusterCIDR.IsValid() {
		c.ClusterCIDR = DefaultClusterCIDR
	}
	return c
}

// Validate checks a config after defaults are applied.
func (c Config) Validate() error {
	if err := ValidateName(c.Name); err != nil {
		return err
	}
	if !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("lab dir %q is not absolute", c.Dir)
	}
	// The agent's socket lives in the node dir; unix socket paths are
	// limited to 107 bytes, and the agent puts its own sockets under it.
	if n := len(c.Dir) + len("/node1/agent.sock"); n > 90 {
		return fmt.Errorf("lab dir %q is too long for unix socket paths below it (keep it under %d characters)", c.Dir, 90-len("/node1/agent.sock"))
	}
	if c.BinDir != "" && !filepath.IsAbs(c.BinDir) {
		return fmt.Errorf("bin dir %q is not absolute", c.BinDir)
	}
	if !filepath.IsAbs(c.BPFRoot) || filepath.Clean(c.BPFRoot) == "/" {
		return fmt.Errorf("bpf root %q must be an absolute directory other than /", c.BPFRoot)
	}
	if !c.PodCIDR.Addr().Is4() || c.PodCIDR.Bits() > 30 || c.PodCIDR.Bits() < 8 {
		return fmt.Errorf("pod CIDR %s: want an IPv4 prefix between /8 and /30", c.PodCIDR)
	}
	if c.PodCIDR != c.PodCIDR.Masked() {
		return fmt.Errorf("pod CIDR %s has host bits set (did you mean %s?)", c.PodCIDR, c.PodCIDR.Masked())
	}
	for _, p := range c.ServePorts {
		if err := p.validate(); err != nil {
			return err
		}
	}
	return c.validateCluster()
}

// validateCluster checks the multi-node fields.
func (c Config) validateCluster() error {
	if c.Nodes < 1 || c.Nodes > MaxNodes {
		return fmt.Errorf("nodes %d: want 1 to %d", c.Nodes, MaxNodes)
	}
	switch c.Mode {
	case ModeSingle:
		if c.Nodes != 1 {
			return fmt.Errorf("%d nodes need a routing mode (vxlan or native)", c.Nodes)
		}
		if c.Etcd != "" {
			return fmt.Errorf("etcd %q needs a routing mode (vxlan or native)", c.Etcd)
		}
		return nil
	case ModeVXLAN, ModeNative:
	default:
		return fmt.Errorf("mode %q: want vxlan or native", c.Mode)
	}
	if c.Etcd != EtcdEmbedded && c.Etcd != EtcdExternal {
		return fmt.Errorf("etcd %q: want embedded or external", c.Etcd)
	}
	for _, p := range []struct {
		what string
		p    netip.Prefix
	}{{"node CIDR", c.NodeCIDR}, {"cluster CIDR", c.ClusterCIDR}} {
		if !p.p.Addr().Is4() {
			return fmt.Errorf("%s %s: want an IPv4 prefix", p.what, p.p)
		}
		if p.p != p.p.Masked() {
			return fmt.Errorf("%s %s has host bits set (did you mean %s?)", p.what, p.p, p.p.Masked())
		}
	}
	// Room for the router, the etcd members and MaxNodes nodes, plus the
	// broadcast address.
	if c.NodeCIDR.Bits() < 8 || c.NodeCIDR.Bits() > 25 {
		return fmt.Errorf("node CIDR %s: want a prefix between /8 and /25", c.NodeCIDR)
	}
	// The agents allocate /24s from the cluster CIDR.
	if c.ClusterCIDR.Bits() < 8 || c.ClusterCIDR.Bits() > 23 {
		return fmt.Errorf("cluster CIDR %s: want a prefix between /8 and /23", c.ClusterCIDR)
	}
	if c.NodeCIDR.Overlaps(c.ClusterCIDR) {
		return fmt.Errorf("node CIDR %s overlaps cluster CIDR %s", c.NodeCIDR, c.ClusterCIDR)
	}
	if c.NodeLeaseTTL < 0 {
		return fmt.Errorf("node lease TTL %s is negative", c.NodeLeaseTTL)
	}
	return nil
}

// addrAt is the address off places after the start of p (IPv4).
func addrAt(p netip.Prefix, off int) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(off)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// fabricAddr is the address off places into the fabric, if it fits below
// the broadcast address.
func fabricAddr(fabric netip.Prefix, off int) (netip.Addr, error) {
	size := 1 << (32 - fabric.Bits())
	if off <= 0 || off >= size-1 {
		return netip.Addr{}, fmt.Errorf("fabric %s has no room for address number %d", fabric, off)
	}
	return addrAt(fabric, off), nil
}

// nodeName is the lab-local name of node i (1-based).
func nodeName(i int) string { return "node" + strconv.Itoa(i) }

// nodeASN is the BGP AS of node i.
func nodeASN(i int) uint32 { return uint32(NodeASNBase + i) }

func fabricNetnsName(lab string) string { return netnsPrefix + lab + "-fabric" }
func routerNetnsName(lab string) string { return netnsPrefix + lab + "-router" }
func extNetnsName(lab string) string    { return netnsPrefix + lab + "-ext" }
func etcdNetnsName(lab string, i int) string {
	return netnsPrefix + lab + "-etcd" + strconv.Itoa(i)
}

func (p Port) validate() error {
	if p.Port == 0 {
		return fmt.Errorf("port %s: port 0 is not allowed", p)
	}
	if p.Proto != "tcp" && p.Proto != "udp" {
		return fmt.Errorf("port %s: protocol must be tcp or udp", p)
	}
	return nil
}

// ParsePort parses "8080/tcp", "53/udp" or "8080" (tcp).
func ParsePort(s string) (Port, error) {
	num, proto, found := strings.Cut(strings.TrimSpace(s), "/")
	if !found {
		proto = "tcp"
	}
	proto = strings.ToLower(proto)
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil {
		return Port{}, fmt.Errorf("parse port %q: want NUMBER[/tcp|/udp]", s)
	}
	p := Port{Port: uint16(n), Proto: proto}
	if err := p.validate(); err != nil {
		return Port{}, err
	}
	return p, nil
}

// ParsePorts parses a comma-separated list of ParsePort items; duplicates
// are removed.
func ParsePorts(s string) ([]Port, error) {
	var out []Port
	for item := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		p, err := ParsePort(item)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// podNameRE is a Kubernetes DNS label (namespaces) or subdomain (pod names)
// restricted to what is safe in file and namespace names.
var podNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`)

// ValidatePodName checks a pod's namespace and name.
func ValidatePodName(namespace, name string) error {
	if len(namespace) > 63 || !podNameRE.MatchString(namespace) || strings.Contains(namespace, ".") {
		return fmt.Errorf("pod namespace %q: want a DNS label (lower-case letters, digits, '-', at most 63)", namespace)
	}
	if len(name) > 253 || !podNameRE.MatchString(name) {
		return fmt.Errorf("pod name %q: want lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", name)
	}
	return nil
}

// nodeNetnsName is the network namespace of a node.
func nodeNetnsName(lab, node string) string { return netnsPrefix + lab + "-" + node }

// agentNodeName is the node name given to the agent; it names the BPF pin
// directory and must be unique per lab.
func agentNodeName(lab, node string) string { return lab + "-" + node }

// podNetnsName is the readable netns name of a pod; hashed is the fallback
// used when the readable one is too long or already taken (two different
// pods may map to the same readable name: a-b/c and a/b-c).
func podNetnsName(lab, namespace, name string, hashed bool) string {
	readable := netnsPrefix + lab + "-" + namespace + "-" + name
	if !hashed && len(readable) <= maxNetnsName {
		return readable
	}
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	h := hex.EncodeToString(sum[:4])
	keep := maxNetnsName - len(h) - 1
	if len(readable) < keep {
		keep = len(readable)
	}
	return strings.TrimRight(readable[:keep], "-.") + "-" + h
}

// PodKey is how pods are named in matrices and commands: "namespace/name".
func PodKey(namespace, name string) string { return namespace + "/" + name }

// ParseLabels parses "k=v,k2=v2".
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("parse label %q: want KEY=VALUE", item)
		}
		out[k] = v
	}
	return out, nil
}
