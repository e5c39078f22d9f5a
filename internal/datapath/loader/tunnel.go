package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// DefaultTunnelMapSize is the default capacity of the tunnel map
// (bpf/include/maps.h): remote pod CIDRs.
const DefaultTunnelMapSize = 65536

// Routing modes (Config.RoutingMode, SetRoutingMode): how pod traffic
// reaches pods on other nodes.
const (
	// RoutingVXLAN encapsulates traffic for a pod CIDR of the tunnel map
	// in the datapath and sends it through the overlay device
	// (SetOverlayDevice), with the source's security identity as the VNI.
	// The default.
	RoutingVXLAN = "vxlan"
	// RoutingNative hands such traffic to the host stack unencapsulated;
	// the node's routes (static, BGP) carry it, and the receiving node
	// learns the source's identity from its ipcache.
	RoutingNative = "native"
)

// Routing modes as in dp_config.routing_mode (MBR_ROUTING_* in
// bpf/include/common.h).
const (
	routingVXLAN  uint32 = 0
	routingNative uint32 = 1
)

// ErrTunnelMapFull is returned (wrapped) by UpsertTunnel when the tunnel map
// has no room for another pod CIDR.
var ErrTunnelMapFull = errors.New("tunnel map full")

// routingModeValue maps a RoutingMode string ("" is vxlan) to the datapath's
// number.
func routingModeValue(mode string) (uint32, error) {
	switch mode {
	case "", RoutingVXLAN:
		return routingVXLAN, nil
	case RoutingNative:
		return routingNative, nil
	}
	return 0, fmt.Errorf("invalid routing mode %q (want %q or %q)", mode, RoutingVXLAN, RoutingNative)
}

// TunnelEntry says which node owns a remote pod CIDR: traffic for it is
// encapsulated to NodeIP in vxlan routing mode.
type TunnelEntry struct {
	PodCIDR netip.Prefix // masked
	NodeIP  netip.Addr   // IPv4: the outer destination
}

// UpsertTunnel creates or replaces the entry of e.PodCIDR. The prefix must
// be masked; the node IP must be IPv4 (an IPv6 underlay is not supported
// yet). IPv6 pod CIDRs are stored but not yet used by the datapath.
func (d *Datapath) UpsertTunnel(e TunnelEntry) error {
	key, err := prefixMapKey(e.PodCIDR)
	if err != nil {
		return fmt.Errorf("upsert tunnel %s: %w", e.PodCIDR, err)
	}
	var val datapathTunnelValue
	switch ip := e.NodeIP; {
	case !ip.IsValid():
		return fmt.Errorf("upsert tunnel %s: node IP is unset", e.PodCIDR)
	case ip.Is4() || ip.Is4In6():
		if ip.Unmap().IsUnspecified() {
			return fmt.Errorf("upsert tunnel %s: node IP %s is unspecified", e.PodCIDR, ip)
		}
		a := ip.Unmap().As4()
		copy(val.NodeIp[:], a[:])
		val.Family = familyIPv4
	default:
		return fmt.Errorf("upsert tunnel %s: IPv6 node IP %s: %w", e.PodCIDR, ip, ErrNotSupported)
	}
	if err := putOrFull(d.objs.MbrTunnel, &key, &val, ErrTunnelMapFull); err != nil {
		return fmt.Errorf("upsert tunnel %s: %w", e.PodCIDR, err)
	}
	return nil
}

// DeleteTunnel removes the entry of podCIDR. A missing entry is not an
// error.
func (d *Datapath) DeleteTunnel(podCIDR netip.Prefix) error {
	if err := deletePrefix(d.objs.MbrTunnel, podCIDR); err != nil {
		return fmt.Errorf("delete tunnel %s: %w", podCIDR, err)
	}
	return nil
}

// ListTunnels returns all tunnel entries sorted by pod CIDR address, then
// prefix length.
func (d *Datapath) ListTunnels() ([]TunnelEntry, error) {
	var (
		key     datapathIpcacheKey
		val     datapathTunnelValue
		entries []TunnelEntry
	)
	it := d.objs.MbrTunnel.Iterate()
	for it.Next(&key, &val) {
		p, err := ipcachePrefix(key)
		if err != nil {
			return nil, fmt.Errorf("list tunnels: %w", err)
		}
		var ip netip.Addr
		switch val.Family {
		case familyIPv4:
			ip = netip.AddrFrom4([4]byte(val.NodeIp[:4]))
		case familyIPv6:
			ip = netip.AddrFrom16(val.NodeIp)
		default:
			return nil, fmt.Errorf("list tunnels: entry %s with unknown node IP family %d", p, val.Family)
		}
		entries = append(entries, TunnelEntry{PodCIDR: p, NodeIP: ip})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list tunnels: %w", err)
	}
	slices.SortFunc(entries, func(a, b TunnelEntry) int {
		if c := a.PodCIDR.Addr().Compare(b.PodCIDR.Addr()); c != 0 {
			return c
		}
		return a.PodCIDR.Bits() - b.PodCIDR.Bits()
	})
	return entries, nil
}

// updateConfig applies change to the datapath's run-time config (mbr_config)
// under d.cfgMu: a read-modify-write that keeps the other settings.
func (d *Datapath) updateConfig(change func(*datapathDpConfig)) error {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	var c datapathDpConfig
	if err := d.objs.MbrConfig.Lookup(uint32(0), &c); err != nil {
		return fmt.Errorf("read datapath config: %w", err)
	}
	change(&c)
	c.Pad = 0
	if err := d.objs.MbrConfig.Update(uint32(0), c, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write datapath config: %w", err)
	}
	return nil
}

func (d *Datapath) readConfig() (datapathDpConfig, error) {
	var c datapathDpConfig
	if err := d.objs.MbrConfig.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("read datapath config: %w", err)
	}
	return c, nil
}

// SetRoutingMode switches between RoutingVXLAN ("" means it too) and
// RoutingNative from the next packet on, without a reload. Established
// connections keep their conntrack entries; their packets take the new
// path. It is idempotent.
func (d *Datapath) SetRoutingMode(mode string) error {
	v, err := routingModeValue(mode)
	if err != nil {
		return fmt.Errorf("set routing mode: %w", err)
	}
	if err := d.updateConfig(func(c *datapathDpConfig) { c.RoutingMode = v }); err != nil {
		return fmt.Errorf("set routing mode to %s: %w", mode, err)
	}
	return nil
}

// RoutingMode returns the routing mode in force: RoutingVXLAN or
// RoutingNative.
func (d *Datapath) RoutingMode() (string, error) {
	c, err := d.readConfig()
	if err != nil {
		return "", fmt.Errorf("routing mode: %w", err)
	}
	switch c.RoutingMode {
	case routingVXLAN:
		return RoutingVXLAN, nil
	case routingNative:
		return RoutingNative, nil
	}
	return "", fmt.Errorf("routing mode: unknown value %d in the datapath config", c.RoutingMode)
}

// SetOverlayDevice tells the datapath the ifindex of the node's collect_md
// VXLAN device (mbr_vxlan), the device encapsulated traffic is redirected
// to; 0 unsets it, after which traffic for tunnel entries is dropped
// (NO_TUNNEL) in vxlan mode. The setting lives in the pinned config map, so
// it survives an agent restart; call it again whenever the device is
// recreated. It is idempotent.
func (d *Datapath) SetOverlayDevice(ifindex int) error {
	if ifindex < 0 || int64(ifindex) > int64(^uint32(0)>>1) {
		return fmt.Errorf("set overlay device: invalid ifindex %d", ifindex)
	}
	if err := d.updateConfig(func(c *datapathDpConfig) { c.OverlayIfindex = uint32(ifindex) }); err != nil {
		return fmt.Errorf("set overlay device to ifindex %d: %w", ifindex, err)
	}
	return nil
}

// OverlayDevice returns the ifindex set by SetOverlayDevice, 0 if none.
func (d *Datapath) OverlayDevice() (int, error) {
	c, err := d.readConfig()
	if err != nil {
		return 0, fmt.Errorf("overlay device: %w", err)
	}
	return int(c.OverlayIfindex), nil
}

// AttachOverlay attaches from_overlay at tcx ingress of ifname, the node's
// collect_md VXLAN device (mbr_vxlan). Like the other attachments it is
// pinned and, called again (agent restart), swaps the program atomically.
func (d *Datapath) AttachOverlay(ifname string, ifindex int) error {
	return d.attach(d.objs.FromOverlay, datapathProgFromOverlay, "overlay_", ifname, ifindex)
}

// DetachOverlay detaches from_overlay from ifname and removes its pinned
// link (e.g. when switching to native routing and deleting the device).
// Detaching a device that is not attached is not an error.
func (d *Datapath) DetachOverlay(ifname string) error {
	if err := d.detach("overlay_", ifname); err != nil {
		return fmt.Errorf("detach overlay %s: %w", ifname, err)
	}
	return nil
}
