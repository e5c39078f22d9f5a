package loader

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Default map capacities (bpf/include/maps.h).
const (
	DefaultEndpointMapSize = 65536   // endpoints, and endpoints with a policy map
	DefaultIPCacheSize     = 524288  // ipcache prefixes
	DefaultPolicyMapSize   = 16384   // entries of one endpoint's policy map
	DefaultCTTCPSize       = 1048576 // TCP connections
	DefaultCTAnySize       = 262144  // other flows
)

// Default conntrack lifetimes (bpf/include/ct.h).
const (
	DefaultCTTCPSyn         = 60 * time.Second
	DefaultCTTCPEstablished = 21600 * time.Second
	DefaultCTTCPClose       = 10 * time.Second
	DefaultCTAny            = 60 * time.Second
)

// Endpoint flags (EndpointInfo.Flags), as MBR_EP_F_* in bpf/include/common.h.
const (
	// FlagIngressEnforced subjects new connections into the endpoint to
	// its policy map; without it ingress allows everything.
	FlagIngressEnforced uint16 = 0x1
	// FlagEgressEnforced subjects new connections from the endpoint to its
	// policy map; without it egress allows everything.
	FlagEgressEnforced uint16 = 0x2
)

// linksDir is the directory under Config.PinDir holding pinned tcx links.
const linksDir = "links"

// Endpoint key families, as in bpf/include/common.h.
const (
	familyIPv4 = 4
	familyIPv6 = 6
)

var (
	// ErrEndpointMapFull is returned (wrapped) by UpsertEndpoint when the
	// endpoint map has no room for another entry.
	ErrEndpointMapFull = errors.New("endpoint map full")
	// ErrNotSupported is returned (wrapped) for IPv6 endpoints, which the
	// datapath does not handle yet.
	ErrNotSupported = errors.New("not supported yet")
)

// Config configures the datapath of one node. Sizes are map capacities; a
// pinned map of another size is refused at Load, not replaced.
type Config struct {
	PinDir          string     // e.g. /sys/fs/bpf/membrane/<node>; maps pinned here, links under PinDir/links/
	RouterIPv4      netip.Addr // first address of the node pod CIDR
	EndpointMapSize uint32     // 0 = default 65536; also the number of endpoint policy maps
	IPCacheSize     uint32     // 0 = default 524288
	PolicyMapSize   uint32     // 0 = default 16384, entries per endpoint policy map
	CTTCPSize       uint32     // 0 = default 1048576
	CTAnySize       uint32     // 0 = default 262144
	TunnelMapSize   uint32     // 0 = default 65536, remote pod CIDRs
	LBMapSize       uint32     // 0 = default 65536: services, backends, reverse NAT, affinity
	LBMaglevSize    uint32     // 0 = default 1021: slots of each Maglev table (a prime)
	NodePortMin     uint16     // 0 = default 30000: NodePort range answered by from_netdev
	NodePortMax     uint16     // 0 = default 32767
	// ServiceCIDR is where cluster IPs live: pod packets to it that no
	// socket hook translated are translated by the endpoint program.
	// Invalid (zero) = off.
	ServiceCIDR netip.Prefix
	CTTimeouts  CTTimeouts // zero fields = defaults
	// EventsRingSize is the size in bytes of the flow event ring buffer:
	// 0 = default 4 MiB, else a power of two and a multiple of the page
	// size. Unlike the other maps, a pinned ring of another size is
	// replaced (its unread events are lost): it holds nothing to keep.
	EventsRingSize uint32
	// MonitorLevel is written to the datapath at Load; the zero value
	// means MonitorDefault (MonitorOff is 1). SetMonitorLevel changes it
	// later without a reload.
	MonitorLevel MonitorLevel
	// RoutingMode is how traffic reaches pods on other nodes: RoutingVXLAN
	// ("" means it too) or RoutingNative. Written to the datapath at Load;
	// SetRoutingMode changes it later without a reload. The overlay
	// device is not known at Load: see SetOverlayDevice.
	RoutingMode string
	Logger      *slog.Logger
}

// CTTimeouts are the conntrack lifetimes: how long an idle connection stays
// tracked. Zero fields take the defaults.
type CTTimeouts struct {
	TCPSyn         time.Duration // TCP until a reply was seen; default 60s
	TCPEstablished time.Duration // TCP after a reply; default 6h
	TCPClose       time.Duration // TCP after FIN in both directions or RST; default 10s
	Any            time.Duration // all other protocols; default 60s
}

// withDefaults returns t with zero fields set to the defaults.
func (t CTTimeouts) withDefaults() CTTimeouts {
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&t.TCPSyn, DefaultCTTCPSyn},
		{&t.TCPEstablished, DefaultCTTCPEstablished},
		{&t.TCPClose, DefaultCTTCPClose},
		{&t.Any, DefaultCTAny},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	return t
}

// Validate checks the config without touching the kernel.
func (c Config) Validate() error {
	if c.PinDir == "" {
		return errors.New("pin dir is empty")
	}
	if !filepath.IsAbs(c.PinDir) {
		return fmt.Errorf("pin dir %q is not an absolute path", c.PinDir)
	}
	if filepath.Clean(c.PinDir) == "/" {
		return errors.New("pin dir must not be /")
	}
	if !c.RouterIPv4.IsValid() {
		return errors.New("router IPv4 address is unset")
	}
	if !c.RouterIPv4.Is4() {
		return fmt.Errorf("router address %s is not IPv4", c.RouterIPv4)
	}
	if c.RouterIPv4.IsUnspecified() {
		return fmt.Errorf("router address %s is unspecified", c.RouterIPv4)
	}
	t := c.CTTimeouts
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"TCP SYN", t.TCPSyn}, {"TCP established", t.TCPEstablished},
		{"TCP close", t.TCPClose}, {"non-TCP", t.Any},
	} {
		if f.v < 0 {
			return fmt.Errorf("conntrack %s timeout %s is negative", f.name, f.v)
		}
	}
	if n, page := c.EventsRingSize, uint32(os.Getpagesize()); n != 0 && (n&(n-1) != 0 || n%page != 0) {
		return fmt.Errorf("events ring size %d is not a power of two multiple of the page size %d", n, page)
	}
	if err := c.MonitorLevel.validate(); err != nil {
		return err
	}
	if _, err := routingModeValue(c.RoutingMode); err != nil {
		return err
	}
	if c.NodePortMin > c.NodePortMax || (c.NodePortMax != 0 && c.NodePortMax >= 61000) {
		return fmt.Errorf("NodePort range %d-%d: want LOW ≤ HIGH < 61000 (61000-65535 are the NodePort SNAT ports)", c.NodePortMin, c.NodePortMax)
	}
	if c.LBMaglevSize != 0 && !ValidMaglevSize(c.LBMaglevSize) {
		return fmt.Errorf("Maglev table size %d: want one of %v", c.LBMaglevSize, MaglevSizes)
	}
	return nil
}

// MaglevSizes are the Maglev table sizes the datapath accepts: primes, so
// that every offset/skip permutation covers the whole table.
var MaglevSizes = []uint32{251, 509, 1021, 2039, 4093, 8191, 16381}

// ValidMaglevSize reports whether m is one of MaglevSizes.
func ValidMaglevSize(m uint32) bool { return slices.Contains(MaglevSizes, m) }

func orDefault(v, def uint32) uint32 {
	if v == 0 {
		return def
	}
	return v
}

func (c Config) endpointMapSize() uint32 { return orDefault(c.EndpointMapSize, DefaultEndpointMapSize) }
func (c Config) ipcacheSize() uint32     { return orDefault(c.IPCacheSize, DefaultIPCacheSize) }
func (c Config) policyMapSize() uint32   { return orDefault(c.PolicyMapSize, DefaultPolicyMapSize) }
func (c Config) ctTCPSize() uint32       { return orDefault(c.CTTCPSize, DefaultCTTCPSize) }
func (c Config) ctAnySize() uint32       { return orDefault(c.CTAnySize, DefaultCTAnySize) }
func (c Config) eventsRingSize() uint32  { return orDefault(c.EventsRingSize, DefaultEventsRingSize) }
func (c Config) tunnelMapSize() uint32   { return orDefault(c.TunnelMapSize, DefaultTunnelMapSize) }

// EndpointInfo is how the datapath delivers to a local endpoint and who
// the endpoint is for policy.
type EndpointInfo struct {
	IfIndex    uint32           // host-side lxc ifindex
	PodMAC     net.HardwareAddr // MAC of eth0 in the pod
	HostMAC    net.HardwareAddr // MAC of the lxc; the pod's router MAC
	EndpointID uint16           // key of the endpoint's policy map
	Flags      uint16           // FlagIngressEnforced, FlagEgressEnforced
	Identity   uint32           // security identity of the endpoint
}

// EndpointEntry is one entry of the endpoint map.
type EndpointEntry struct {
	IP netip.Addr
	EndpointInfo
}

// Datapath holds the loaded programs and maps of a node.
type Datapath struct {
	cfg Config
	log *slog.Logger

	objs datapathObjects

	// policyInner is the spec of one endpoint policy map (the inner map
	// of mbr_policy) with this config's size.
	policyInner *ebpf.MapSpec
	// maglevInner is the spec of one Maglev table (inner map of
	// mbr_lb_maglev) with this config's table size.
	maglevInner *ebpf.MapSpec

	mu    sync.Mutex
	links map[string]link.Link // by pin name, e.g. lxc_lxc1234

	policyMu sync.Mutex // serialises changes of endpoint policy maps
	cfgMu    sync.Mutex // serialises read-modify-writes of mbr_config
}

// Load loads the datapath, reusing maps pinned under cfg.PinDir.
func Load(cfg Config) (_ *Datapath, retErr error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("load datapath: invalid config: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	if err := os.MkdirAll(cfg.PinDir, 0o700); err != nil {
		return nil, fmt.Errorf("load datapath: create pin dir: %w", err)
	}
	if err := checkBPFFS(cfg.PinDir); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}

	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if err := spec.Variables[datapathVarROUTER_IP4].Set(cfg.RouterIPv4.As4()); err != nil {
		return nil, fmt.Errorf("load datapath: set ROUTER_IP4 to %s: %w", cfg.RouterIPv4, err)
	}
	if err := setCTTimeouts(spec, cfg.CTTimeouts.withDefaults()); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	spec.Maps[datapathMapMbrEndpoints].MaxEntries = cfg.endpointMapSize()
	spec.Maps[datapathMapMbrIpcache].MaxEntries = cfg.ipcacheSize()
	spec.Maps[datapathMapMbrPolicy].MaxEntries = cfg.endpointMapSize()
	spec.Maps[datapathMapMbrCtTcp].MaxEntries = cfg.ctTCPSize()
	spec.Maps[datapathMapMbrCtAny].MaxEntries = cfg.ctAnySize()
	spec.Maps[datapathMapMbrEvents].MaxEntries = cfg.eventsRingSize()
	spec.Maps[datapathMapMbrTunnel].MaxEntries = cfg.tunnelMapSize()
	inner := spec.Maps[datapathMapMbrPolicy].InnerMap
	if inner == nil {
		return nil, fmt.Errorf("load datapath: map %s has no inner map spec", datapathMapMbrPolicy)
	}
	inner.MaxEntries = cfg.policyMapSize()
	for _, name := range []string{datapathMapMbrLb4Services, datapathMapMbrLb4Backends, datapathMapMbrLb4Revnat,
		datapathMapMbrLbAffinity, datapathMapMbrLb4SkRevnat, datapathMapMbrLb4SkFwd, datapathMapMbrLbMaglev} {
		spec.Maps[name].MaxEntries = cfg.lbMapSize()
	}
	maglev := spec.Maps[datapathMapMbrLbMaglev].InnerMap
	if maglev == nil {
		return nil, fmt.Errorf("load datapath: map %s has no inner map spec", datapathMapMbrLbMaglev)
	}
	maglev.ValueSize = 4 * cfg.lbMaglevSize()
	if err := spec.Variables[datapathVarLB_MAGLEV_SIZE].Set(cfg.lbMaglevSize()); err != nil {
		return nil, fmt.Errorf("load datapath: set LB_MAGLEV_SIZE: %w", err)
	}
	npMin, npMax := cfg.NodePortMin, cfg.NodePortMax
	if npMin == 0 && npMax == 0 {
		npMin, npMax = 30000, 32767
	}
	if err := spec.Variables[datapathVarNODEPORT_MIN].Set(npMin); err != nil {
		return nil, fmt.Errorf("load datapath: set NODEPORT_MIN: %w", err)
	}
	if err := spec.Variables[datapathVarNODEPORT_MAX].Set(npMax); err != nil {
		return nil, fmt.Errorf("load datapath: set NODEPORT_MAX: %w", err)
	}
	if p := cfg.ServiceCIDR; p.IsValid() {
		if !p.Addr().Is4() {
			return nil, fmt.Errorf("load datapath: service CIDR %s: %w (IPv4 only)", p, ErrNotSupported)
		}
		p = p.Masked()
		mask := netip.PrefixFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), p.Bits()).Masked().Addr()
		if err := spec.Variables[datapathVarSVC_NET4].Set(be32(p.Addr())); err != nil {
			return nil, fmt.Errorf("load datapath: set SVC_NET4: %w", err)
		}
		if err := spec.Variables[datapathVarSVC_MASK4].Set(be32(mask)); err != nil {
			return nil, fmt.Errorf("load datapath: set SVC_MASK4: %w", err)
		}
	}

	if err := replaceIncompatiblePin(spec, cfg.PinDir, datapathMapMbrEvents, log); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if err := checkPinnedMaps(spec, cfg.PinDir); err != nil {
		return nil, fmt.Errorf("load datapath: %w", err)
	}

	d := &Datapath{cfg: cfg, log: log, links: make(map[string]link.Link), policyInner: inner.Copy(), maglevInner: maglev.Copy()}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			log.Error("BPF verifier rejected the datapath", "log", fmt.Sprintf("%+v", verr))
		}
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	// The overlay ifindex in a reused mbr_config is kept: a restarted
	// agent keeps encapsulating until it calls SetOverlayDevice again.
	if err := d.SetMonitorLevel(cfg.MonitorLevel); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	if err := d.SetRoutingMode(cfg.RoutingMode); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("load datapath: %w", err)
	}
	log.Debug("datapath loaded", "pin_dir", cfg.PinDir, "router_ipv4", cfg.RouterIPv4,
		"endpoint_map_capacity", d.EndpointMapCapacity(), "routing_mode", cfg.RoutingMode)
	return d, nil
}

// setCTTimeouts sets the conntrack lifetimes (nanoseconds) of ct.h.
func setCTTimeouts(spec *ebpf.CollectionSpec, t CTTimeouts) error {
	for name, v := range map[string]time.Duration{
		datapathVarCT_LIFETIME_TCP_SYN:         t.TCPSyn,
		datapathVarCT_LIFETIME_TCP_ESTABLISHED: t.TCPEstablished,
		datapathVarCT_LIFETIME_TCP_CLOSE:       t.TCPClose,
		datapathVarCT_LIFETIME_ANY:             t.Any,
	} {
		if err := spec.Variables[name].Set(uint64(v.Nanoseconds())); err != nil {
			return fmt.Errorf("set %s to %s: %w", name, v, err)
		}
	}
	return nil
}

// checkBPFFS reports an error if dir is not on a BPF filesystem: pins
// elsewhere fail with an obscure error or, worse, succeed nowhere.
func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin dir %s is not on a BPF filesystem (mount bpffs at /sys/fs/bpf)", dir)
	}
	return nil
}

// replaceIncompatiblePin removes the pin of map name under pinDir if it
// does not match the spec, so that Load creates the map anew. Only for maps
// without state worth keeping (the event ring): programs still attached
// through old links keep the old map until they are attached again.
func replaceIncompatiblePin(spec *ebpf.CollectionSpec, pinDir, name string, log *slog.Logger) error {
	path := filepath.Join(pinDir, name)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned map %s at %s: %w", name, path, err)
	}
	err = spec.Maps[name].Compatible(m)
	m.Close()
	if err == nil {
		return nil
	}
	log.Info("replacing pinned map of another shape", "map", name, "pin", path, "reason", err)
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("replace pinned map %s: %w", name, err)
	}
	return nil
}

// checkPinnedMaps compares each map the spec pins by name with an existing
// pin. An incompatible pin (e.g. another size) is reported by name and path
// rather than replaced: replacing it would lose every endpoint. All
// incompatible pins are reported, in name order.
func checkPinnedMaps(spec *ebpf.CollectionSpec, pinDir string) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(spec.Maps)) {
		ms := spec.Maps[name]
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		path := filepath.Join(pinDir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned map %s at %s: %w", name, path, err)
		}
		err = ms.Compatible(m)
		m.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("pinned map %s at %s does not match this datapath "+
				"(remove it to recreate it, losing its entries): %w", name, path, err))
		}
	}
	return errors.Join(errs...)
}

// Close releases the agent's file descriptors. Pins stay, so programs stay
// attached and maps keep their contents until Unpin.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for name, l := range d.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close link %s: %w", name, err))
		}
		delete(d.links, name)
	}
	if err := d.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close datapath objects: %w", err))
	}
	return errors.Join(errs...)
}

// AttachHost attaches from_host at tcx ingress of ifname (mbr_net).
func (d *Datapath) AttachHost(ifname string, ifindex int) error {
	return d.attach(d.objs.FromHost, datapathProgFromHost, "host_", ifname, ifindex)
}

// AttachNetdev attaches from_netdev (NodePort from other hosts) at tcx
// ingress of an external device of the node.
func (d *Datapath) AttachNetdev(ifname string, ifindex int) error {
	return d.attach(d.objs.FromNetdev, datapathProgFromNetdev, "netdev_", ifname, ifindex)
}

// AttachEndpoint attaches from_container at tcx ingress of an endpoint's
// host-side veth ifname.
func (d *Datapath) AttachEndpoint(ifname string, ifindex int) error {
	return d.attach(d.objs.FromContainer, datapathProgFromContainer, "lxc_", ifname, ifindex)
}

// DetachEndpoint detaches from_container from ifname and removes its
// pinned link. Detaching an endpoint that is not attached is not an error.
func (d *Datapath) DetachEndpoint(ifname string) error {
	if err := d.detach("lxc_", ifname); err != nil {
		return fmt.Errorf("detach endpoint %s: %w", ifname, err)
	}
	return nil
}

// detach forgets the link pinned as <prefix><ifname> and detaches it.
func (d *Datapath) detach(prefix, ifname string) error {
	if err := checkIfname(ifname); err != nil {
		return fmt.Errorf("%q: %w", ifname, err)
	}
	name := prefix + ifname
	d.mu.Lock()
	defer d.mu.Unlock()
	if l, ok := d.links[name]; ok {
		delete(d.links, name)
		l.Close()
	}
	return detachPinnedLink(d.linkPinPath(name))
}

// detachPinnedLink detaches the link pinned at path and removes the pin. A
// missing pin is not an error. Detaching explicitly makes the program leave
// the device now: dropping the last reference alone would only do so once
// the kernel's deferred release of the pin has run.
func detachPinnedLink(path string) error {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned link %s: %w", path, err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil && !linkDefunct(l) {
		return fmt.Errorf("detach link %s: %w", path, err)
	}
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link %s: %w", path, err)
	}
	return nil
}

// linkDefunct reports whether l is a tcx link whose device has gone.
func linkDefunct(l link.Link) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	tcx := info.TCX()
	return tcx != nil && tcx.Ifindex == 0
}

func (d *Datapath) linkPinPath(name string) string {
	return filepath.Join(d.cfg.PinDir, linksDir, name)
}

func checkIfname(ifname string) error {
	if ifname == "" || len(ifname) >= unix.IFNAMSIZ || strings.ContainsAny(ifname, "/ \x00") ||
		ifname == "." || ifname == ".." {
		return errors.New("invalid interface name")
	}
	return nil
}

// attach attaches prog at tcx ingress of ifindex behind a link pinned as
// PinDir/links/<prefix><ifname>. A pinned link still attached to ifindex
// gets the new program through an atomic link update; a stale one (device
// gone or another ifindex) is unpinned and replaced by a fresh attachment.
func (d *Datapath) attach(prog *ebpf.Program, progName, prefix, ifname string, ifindex int) error {
	if err := checkIfname(ifname); err != nil {
		return fmt.Errorf("attach %s to %q: %w", progName, ifname, err)
	}
	if ifindex <= 0 {
		return fmt.Errorf("attach %s to %s: invalid ifindex %d", progName, ifname, ifindex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	where := fmt.Sprintf("%s (ifindex %d)", ifname, ifindex)
	return d.attachPinned(prefix+ifname, progName, where, prog,
		func(l link.Link) bool { return attachedIngress(l, ifindex) },
		func() (link.Link, error) {
			return link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: prog, Attach: ebpf.AttachTCXIngress})
		})
}

// attachPinned attaches prog behind the link pinned as PinDir/links/<name>,
// with d.mu held. A pinned link for which fits is true gets prog through an
// atomic link update (a restarted agent interrupts nothing); any other pinned
// link is detached and unpinned, and create makes and pins a fresh one.
func (d *Datapath) attachPinned(name, progName, where string, prog *ebpf.Program,
	fits func(link.Link) bool, create func() (link.Link, error)) error {
	pinPath := d.linkPinPath(name)
	if err := os.MkdirAll(filepath.Dir(pinPath), 0o700); err != nil {
		return fmt.Errorf("attach %s to %s: create links dir: %w", progName, where, err)
	}
	l, err := link.LoadPinnedLink(pinPath, nil)
	switch {
	case err == nil:
		if fits(l) {
			if err := l.Update(prog); err != nil {
				l.Close()
				return fmt.Errorf("update %s on %s: %w", progName, where, err)
			}
			d.keepLink(name, l)
			d.log.Debug("replaced program in pinned link", "where", where, "pin", pinPath)
			return nil
		}
		d.log.Info("replacing stale pinned link", "where", where, "pin", pinPath)
		l.Close()
		if err := detachPinnedLink(pinPath); err != nil {
			return fmt.Errorf("attach %s to %s: replace stale link: %w", progName, where, err)
		}
	case errors.Is(err, fs.ErrNotExist):
	default:
		return fmt.Errorf("attach %s to %s: open pinned link %s: %w", progName, where, pinPath, err)
	}
	l, err = create()
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", progName, where, err)
	}
	if err := l.Pin(pinPath); err != nil {
		l.Close() // detaches: the link had no other reference
		return fmt.Errorf("attach %s to %s: pin link %s: %w", progName, where, pinPath, err)
	}
	d.keepLink(name, l)
	d.log.Debug("attached program", "where", where, "pin", pinPath)
	return nil
}

// attachedIngress reports whether l is a tcx ingress link on ifindex. The
// kernel reports ifindex 0 for a link whose device has gone.
func attachedIngress(l link.Link, ifindex int) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	tcx := info.TCX()
	return tcx != nil && tcx.Ifindex != 0 && tcx.Ifindex == uint32(ifindex) &&
		uint32(tcx.AttachType) == uint32(ebpf.AttachTCXIngress)
}

// keepLink remembers l under name, closing a link previously held there.
// Called with d.mu held.
func (d *Datapath) keepLink(name string, l link.Link) {
	if old, ok := d.links[name]; ok && old != l {
		old.Close()
	}
	d.links[name] = l
}

// UpsertEndpoint creates or replaces the endpoint entry for ip.
func (d *Datapath) UpsertEndpoint(ip netip.Addr, info EndpointInfo) error {
	key, err := endpointKey(ip)
	if err != nil {
		return fmt.Errorf("upsert endpoint %s: %w", ip, err)
	}
	val, err := endpointValue(info)
	if err != nil {
		return fmt.Errorf("upsert endpoint %s: %w", ip, err)
	}
	if err := d.objs.MbrEndpoints.Update(&key, &val, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("upsert endpoint %s: %w (capacity %d): %w",
				ip, ErrEndpointMapFull, d.EndpointMapCapacity(), err)
		}
		return fmt.Errorf("upsert endpoint %s: %w", ip, err)
	}
	return nil
}

// DeleteEndpoint removes the endpoint entry for ip. A missing entry is not
// an error.
func (d *Datapath) DeleteEndpoint(ip netip.Addr) error {
	key, err := endpointKey(ip)
	if err != nil {
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	if err := d.objs.MbrEndpoints.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete endpoint %s: %w", ip, err)
	}
	return nil
}

// LookupEndpoint returns the endpoint entry for ip, if any.
func (d *Datapath) LookupEndpoint(ip netip.Addr) (EndpointInfo, bool, error) {
	key, err := endpointKey(ip)
	if err != nil {
		return EndpointInfo{}, false, fmt.Errorf("lookup endpoint %s: %w", ip, err)
	}
	var val datapathEndpointInfo
	if err := d.objs.MbrEndpoints.Lookup(&key, &val); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return EndpointInfo{}, false, nil
		}
		return EndpointInfo{}, false, fmt.Errorf("lookup endpoint %s: %w", ip, err)
	}
	return endpointInfo(val), true, nil
}

// ListEndpoints returns all endpoint entries sorted by IP.
func (d *Datapath) ListEndpoints() ([]EndpointEntry, error) {
	var (
		key     datapathEndpointKey
		val     datapathEndpointInfo
		entries []EndpointEntry
	)
	it := d.objs.MbrEndpoints.Iterate()
	for it.Next(&key, &val) {
		ip, err := keyAddr(key)
		if err != nil {
			return nil, fmt.Errorf("list endpoints: %w", err)
		}
		entries = append(entries, EndpointEntry{IP: ip, EndpointInfo: endpointInfo(val)})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	slices.SortFunc(entries, func(a, b EndpointEntry) int { return a.IP.Compare(b.IP) })
	return entries, nil
}

// EndpointMapCapacity is the maximum number of entries of the endpoint map
// as loaded (a reused pinned map keeps its own size).
func (d *Datapath) EndpointMapCapacity() uint32 {
	return d.objs.MbrEndpoints.MaxEntries()
}

// endpointKey encodes ip as in struct endpoint_key: IPv4 in the first four
// bytes of addr (network order), the rest zero, family 4.
func endpointKey(ip netip.Addr) (datapathEndpointKey, error) {
	var key datapathEndpointKey
	switch {
	case !ip.IsValid():
		return key, errors.New("invalid IP address")
	case ip.Is4() || ip.Is4In6():
		a := ip.Unmap().As4()
		copy(key.Addr[:], a[:])
		key.Family = familyIPv4
	default:
		return key, fmt.Errorf("IPv6 endpoints: %w", ErrNotSupported)
	}
	return key, nil
}

func keyAddr(key datapathEndpointKey) (netip.Addr, error) {
	switch key.Family {
	case familyIPv4:
		return netip.AddrFrom4([4]byte(key.Addr[:4])), nil
	case familyIPv6:
		return netip.AddrFrom16(key.Addr), nil
	default:
		return netip.Addr{}, fmt.Errorf("endpoint key with unknown family %d", key.Family)
	}
}

func endpointValue(info EndpointInfo) (datapathEndpointInfo, error) {
	var val datapathEndpointInfo
	if info.IfIndex == 0 {
		return val, errors.New("ifindex is zero")
	}
	if len(info.PodMAC) != 6 {
		return val, fmt.Errorf("pod MAC %q is not a 6-byte MAC", info.PodMAC)
	}
	if len(info.HostMAC) != 6 {
		return val, fmt.Errorf("host MAC %q is not a 6-byte MAC", info.HostMAC)
	}
	val.Ifindex = info.IfIndex
	copy(val.PodMac[:], info.PodMAC)
	copy(val.HostMac[:], info.HostMAC)
	val.EpId = info.EndpointID
	val.Flags = info.Flags
	val.Identity = info.Identity
	return val, nil
}

func endpointInfo(val datapathEndpointInfo) EndpointInfo {
	return EndpointInfo{
		IfIndex:    val.Ifindex,
		PodMAC:     slices.Clone(net.HardwareAddr(val.PodMac[:])),
		HostMAC:    slices.Clone(net.HardwareAddr(val.HostMac[:])),
		EndpointID: val.EpId,
		Flags:      val.Flags,
		Identity:   val.Identity,
	}
}

// Unpin removes everything under pinDir: links first, which detaches the
// programs, then the maps. A missing pinDir is not an error.
func Unpin(pinDir string) error {
	if !filepath.IsAbs(pinDir) || filepath.Clean(pinDir) == "/" {
		return fmt.Errorf("unpin %q: not an absolute pin dir", pinDir)
	}
	if _, err := os.Stat(pinDir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := checkBPFFS(pinDir); err != nil {
		return fmt.Errorf("unpin %s: %w", pinDir, err)
	}
	if isMountPoint(pinDir) {
		return fmt.Errorf("unpin %s: refusing to empty a whole BPF filesystem", pinDir)
	}
	links := filepath.Join(pinDir, linksDir)
	entries, err := os.ReadDir(links)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unpin %s: read links: %w", pinDir, err)
	}
	var errs []error
	for _, e := range entries {
		if err := detachPinnedLink(filepath.Join(links, e.Name())); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("unpin %s: %w", pinDir, err)
	}
	if err := os.RemoveAll(pinDir); err != nil {
		return fmt.Errorf("unpin %s: %w", pinDir, err)
	}
	return nil
}

// isMountPoint reports whether dir is the root of a mounted filesystem.
func isMountPoint(dir string) bool {
	var st, parent unix.Stat_t
	if unix.Stat(dir, &st) != nil || unix.Stat(filepath.Dir(filepath.Clean(dir)), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}
