package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/bgp"
	"github.com/membrane-net/membrane/internal/datapath/loader"
)

// Config is the agent's configuration, filled from flags.
type Config struct {
	NodeName         string
	StateDir         string
	SocketPath       string
	PodCIDR          string
	BPFRoot          string
	KvstoreEndpoints []string
	EndpointMapSize  uint32
	IPCacheSize      uint32
	PolicyMapSize    uint32
	CTTCPSize        uint32
	CTAnySize        uint32
	MTU              int
	LogLevel         string
	PrometheusAddr   string
	NodeIP           string
	ClusterCIDR      string
	RoutingMode      string
	BGPASN           uint32
	BGPPeers         string
	BGPRouterID      string
	NodeLeaseTTL     time.Duration
	TunnelMapSize    uint32
	FlowBufferSize   int
	MonitorLevel     string
	EventsRingSize   uint32

	// Services.
	CgroupRoot      string
	ServiceCIDR     string
	LBAlgorithm     string
	LBMaglevSize    uint32
	LBMapSize       uint32
	NodePortDevices []string
	NodePortRange   string
}

// DefaultConfig returns the defaults documented in --help.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		NodeName:        host,
		StateDir:        "/var/lib/membrane",
		SocketPath:      api.DefaultSocketPath,
		PodCIDR:         "",
		ClusterCIDR:     "10.200.0.0/16",
		RoutingMode:     "vxlan",
		NodeLeaseTTL:    15 * time.Second,
		TunnelMapSize:   65536,
		BPFRoot:         "/sys/fs/bpf/membrane",
		EndpointMapSize: 65536,
		IPCacheSize:     512 * 1024,
		PolicyMapSize:   16 * 1024,
		CTTCPSize:       1 << 20,
		CTAnySize:       256 * 1024,
		MTU:             1500,
		LogLevel:        "info",
		FlowBufferSize:  65536,
		MonitorLevel:    "default",
		EventsRingSize:  4 << 20,
		ServiceCIDR:     "10.96.0.0/16",
		LBAlgorithm:     "random",
		LBMaglevSize:    1021,
		LBMapSize:       65536,
		NodePortRange:   "30000-32767",
	}
}

// RegisterFlags binds the config to a flag set.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "name of this node; also names the BPF pin directory <bpf-root>/<node-name>")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory for endpoint state and the embedded etcd's data")
	fs.StringVar(&c.SocketPath, "socket", c.SocketPath, "unix socket of the HTTP/JSON API (created with mode 0600)")
	fs.StringVar(&c.PodCIDR, "pod-cidr", c.PodCIDR, "this node's pod CIDR (inside --cluster-cidr); empty: a /24 of --cluster-cidr is allocated through etcd. Its first address is the router IP on mbr_host")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", c.ClusterCIDR, "the cluster's pod address space, from which nodes get their pod CIDRs")
	fs.StringVar(&c.NodeIP, "node-ip", c.NodeIP, "this node's address on the network between nodes (tunnel endpoint, BGP next hop); empty: detected")
	fs.StringVar(&c.RoutingMode, "routing-mode", c.RoutingMode, "how pods reach other nodes: vxlan (overlay, identity in the VNI) or native (unencapsulated, routes via BGP)")
	fs.Uint32Var(&c.BGPASN, "bgp-asn", c.BGPASN, "this node's BGP AS number (0: no BGP); advertises the pod CIDR to --bgp-peers")
	fs.StringVar(&c.BGPPeers, "bgp-peers", c.BGPPeers, "BGP neighbors, IP:ASN[,IP:ASN]")
	fs.StringVar(&c.BGPRouterID, "bgp-router-id", c.BGPRouterID, "BGP router id (default: the node IP)")
	fs.DurationVar(&c.NodeLeaseTTL, "node-lease-ttl", c.NodeLeaseTTL, "a node that stops renewing its etcd lease leaves the cluster after this")
	fs.Uint32Var(&c.TunnelMapSize, "tunnel-map-size", c.TunnelMapSize, "entries of the BPF tunnel map (remote pod CIDR → node IP)")
	fs.StringVar(&c.BPFRoot, "bpf-root", c.BPFRoot, "directory on a bpffs under which this node's maps and links are pinned")
	fs.StringSliceVar(&c.KvstoreEndpoints, "kvstore-endpoints", c.KvstoreEndpoints, "external etcd endpoints (http://host:port, unix:///path); empty = start an embedded etcd under --state-dir")
	fs.Uint32Var(&c.EndpointMapSize, "endpoint-map-size", c.EndpointMapSize, "entries of the BPF endpoint map")
	fs.Uint32Var(&c.IPCacheSize, "ipcache-map-size", c.IPCacheSize, "entries of the BPF ipcache (IP/prefix → identity)")
	fs.Uint32Var(&c.PolicyMapSize, "policy-map-size", c.PolicyMapSize, "entries of each endpoint's BPF policy map")
	fs.Uint32Var(&c.CTTCPSize, "ct-tcp-map-size", c.CTTCPSize, "entries of the TCP conntrack map (LRU)")
	fs.Uint32Var(&c.CTAnySize, "ct-any-map-size", c.CTAnySize, "entries of the non-TCP conntrack map (LRU)")
	fs.IntVar(&c.MTU, "mtu", c.MTU, "MTU of endpoint interfaces")
	fs.StringVar(&c.PrometheusAddr, "prometheus-serve-addr", c.PrometheusAddr, "serve Prometheus metrics on this host:port (empty: off)")
	fs.IntVar(&c.FlowBufferSize, "flow-buffer-size", c.FlowBufferSize, "flows kept in memory for membrane observe")
	fs.StringVar(&c.MonitorLevel, "monitor-level", c.MonitorLevel, "flow events: off, drops, default (drops, verdicts, first packet and TCP flag changes per connection) or all")
	fs.Uint32Var(&c.EventsRingSize, "events-ring-size", c.EventsRingSize, "bytes of the BPF ring buffer for flow events (power of two, at least a page)")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", c.CgroupRoot, "cgroup v2 directory whose processes get socket-level service translation (connect, sendmsg, recvmsg, getpeername); empty: /sys/fs/cgroup if it is cgroup v2, else cgroup2 mounted at /run/membrane/cgroupv2")
	fs.StringVar(&c.ServiceCIDR, "service-cidr", c.ServiceCIDR, "range from which services without a clusterIP get one")
	fs.StringVar(&c.LBAlgorithm, "lb-algorithm", c.LBAlgorithm, "default backend selection: random or maglev (a service overrides it with the annotation membrane.io/lb-algorithm)")
	fs.Uint32Var(&c.LBMaglevSize, "lb-maglev-table-size", c.LBMaglevSize, "slots of each service's Maglev table (a prime: 251, 509, 1021, 2039, 4093, 8191 or 16381)")
	fs.Uint32Var(&c.LBMapSize, "lb-map-size", c.LBMapSize, "entries of the service, backend, reverse-NAT and affinity maps")
	fs.StringSliceVar(&c.NodePortDevices, "nodeport-devices", c.NodePortDevices, "interfaces (in the agent's network namespace) on which NodePort services are answered; empty: the device holding --node-ip")
	fs.StringVar(&c.NodePortRange, "nodeport-range", c.NodePortRange, "port range of NodePort services")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
}

var nodeNameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9.\-]{0,61}[a-z0-9])?$`)

// Validate checks the configuration and says which flag is wrong.
func (c Config) Validate() error {
	var errs []error
	if !nodeNameRe.MatchString(c.NodeName) {
		errs = append(errs, fmt.Errorf("--node-name %q: want 1-63 lowercase letters, digits, '.' or '-'", c.NodeName))
	}
	for flag, p := range map[string]string{"--state-dir": c.StateDir, "--socket": c.SocketPath, "--bpf-root": c.BPFRoot} {
		if !filepath.IsAbs(p) {
			errs = append(errs, fmt.Errorf("%s %q: want an absolute path", flag, p))
		}
	}
	if len(c.SocketPath) > 100 {
		errs = append(errs, fmt.Errorf("--socket %q: longer than 100 bytes (unix socket limit)", c.SocketPath))
	}
	cluster, cerr := c.Cluster()
	if cerr != nil {
		errs = append(errs, cerr)
	}
	if c.PodCIDR != "" {
		if p, err := c.Prefix(); err != nil {
			errs = append(errs, err)
		} else if !p.Addr().Is4() {
			errs = append(errs, fmt.Errorf("--pod-cidr %s: only IPv4 is supported yet", p))
		} else if p.Bits() > 30 || p.Bits() < 12 {
			errs = append(errs, fmt.Errorf("--pod-cidr %s: prefix length must be /12 to /30", p))
		} else if cerr == nil && (!cluster.Contains(p.Addr()) || p.Bits() < cluster.Bits()) {
			errs = append(errs, fmt.Errorf("--pod-cidr %s is not inside --cluster-cidr %s", p, cluster))
		}
	}
	if c.NodeIP != "" {
		if a, err := netip.ParseAddr(c.NodeIP); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("--node-ip %q: want an IPv4 address", c.NodeIP))
		}
	}
	if c.RoutingMode != "vxlan" && c.RoutingMode != "native" {
		errs = append(errs, fmt.Errorf("--routing-mode %q: want vxlan or native", c.RoutingMode))
	}
	if c.BGPPeers != "" && c.BGPASN == 0 {
		errs = append(errs, fmt.Errorf("--bgp-peers %q needs --bgp-asn", c.BGPPeers))
	}
	if _, err := bgp.ParsePeers(c.BGPPeers); err != nil {
		errs = append(errs, fmt.Errorf("--bgp-peers: %w", err))
	}
	if c.BGPRouterID != "" {
		if a, err := netip.ParseAddr(c.BGPRouterID); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("--bgp-router-id %q: want an IPv4 address", c.BGPRouterID))
		}
	}
	if c.NodeLeaseTTL < 5*time.Second || c.NodeLeaseTTL > 10*time.Minute {
		errs = append(errs, fmt.Errorf("--node-lease-ttl %s: want 5s to 10m", c.NodeLeaseTTL))
	}
	if c.EndpointMapSize < 16 || c.EndpointMapSize > 1<<20 {
		errs = append(errs, fmt.Errorf("--endpoint-map-size %d: want 16 to 1048576", c.EndpointMapSize))
	}
	for _, m := range []struct {
		flag string
		v    uint32
	}{{"--ipcache-map-size", c.IPCacheSize}, {"--policy-map-size", c.PolicyMapSize}, {"--ct-tcp-map-size", c.CTTCPSize}, {"--ct-any-map-size", c.CTAnySize}, {"--tunnel-map-size", c.TunnelMapSize}} {
		if m.v < 16 || m.v > 1<<24 {
			errs = append(errs, fmt.Errorf("%s %d: want 16 to 16777216", m.flag, m.v))
		}
	}
	if c.MTU < 576 || c.MTU > 65535 {
		errs = append(errs, fmt.Errorf("--mtu %d: want 576-65535", c.MTU))
	}
	if c.FlowBufferSize < 1 || c.FlowBufferSize > 1<<22 {
		errs = append(errs, fmt.Errorf("--flow-buffer-size %d: want 1 to 4194304", c.FlowBufferSize))
	}
	if _, err := loader.ParseMonitorLevel(c.MonitorLevel); err != nil {
		errs = append(errs, fmt.Errorf("--monitor-level: %w", err))
	}
	if c.EventsRingSize < 4096 || c.EventsRingSize&(c.EventsRingSize-1) != 0 {
		errs = append(errs, fmt.Errorf("--events-ring-size %d: want a power of two of at least 4096", c.EventsRingSize))
	}
	if c.CgroupRoot != "" && !filepath.IsAbs(c.CgroupRoot) {
		errs = append(errs, fmt.Errorf("--cgroup-root %q: want an absolute path", c.CgroupRoot))
	}
	if _, err := c.ServicePrefix(); err != nil {
		errs = append(errs, err)
	}
	if c.LBAlgorithm != "random" && c.LBAlgorithm != "maglev" {
		errs = append(errs, fmt.Errorf("--lb-algorithm %q: want random or maglev", c.LBAlgorithm))
	}
	if !loader.ValidMaglevSize(c.LBMaglevSize) {
		errs = append(errs, fmt.Errorf("--lb-maglev-table-size %d: want one of %v", c.LBMaglevSize, loader.MaglevSizes))
	}
	if c.LBMapSize < 16 || c.LBMapSize > 1<<24 {
		errs = append(errs, fmt.Errorf("--lb-map-size %d: want 16 to 16777216", c.LBMapSize))
	}
	if _, _, err := c.NodePorts(); err != nil {
		errs = append(errs, err)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel))
	}
	return errors.Join(errs...)
}

// Prefix parses --pod-cidr.
func (c Config) Prefix() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(c.PodCIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("--pod-cidr %q: %w", c.PodCIDR, err)
	}
	if p != p.Masked() {
		return netip.Prefix{}, fmt.Errorf("--pod-cidr %s: host bits set; did you mean %s?", p, p.Masked())
	}
	return p, nil
}

// Cluster parses --cluster-cidr.
func (c Config) Cluster() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(c.ClusterCIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("--cluster-cidr %q: %w", c.ClusterCIDR, err)
	}
	if p != p.Masked() || !p.Addr().Is4() || p.Bits() > 24 {
		return netip.Prefix{}, fmt.Errorf("--cluster-cidr %s: want a masked IPv4 prefix of /24 or larger", p)
	}
	return p, nil
}

// ServicePrefix parses --service-cidr.
func (c Config) ServicePrefix() (netip.Prefix, error) {
	p, err := netip.ParsePrefix(c.ServiceCIDR)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("--service-cidr %q: %w", c.ServiceCIDR, err)
	}
	if p != p.Masked() || !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("--service-cidr %s: want a masked IPv4 prefix of /8 to /30", p)
	}
	return p, nil
}

// NodePorts parses --nodeport-range ("30000-32767").
func (c Config) NodePorts() (lo, hi uint16, err error) {
	a, b, ok := strings.Cut(c.NodePortRange, "-")
	x, err1 := strconv.ParseUint(a, 10, 16)
	y, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil || x == 0 || x > y || y >= 61000 {
		return 0, 0, fmt.Errorf("--nodeport-range %q: want LOW-HIGH, 1 ≤ LOW ≤ HIGH < 61000 (61000-65535 are the NodePort SNAT ports)", c.NodePortRange)
	}
	return uint16(x), uint16(y), nil
}

// PinDir is where this node's BPF objects are pinned.
func (c Config) PinDir() string { return filepath.Join(c.BPFRoot, c.NodeName) }
