package link

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host device names.
const (
	HostDevice = "mbr_host" // carries the router IP; the pod CIDR is routed out of it
	NetDevice  = "mbr_net"  // its peer; the from-host program sits on its ingress
)

// HostConfig describes the node's host devices.
type HostConfig struct {
	RouterIP netip.Addr
	PodCIDR  netip.Prefix
	MTU      int
}

// HostDevices are the results of EnsureHostDevices.
type HostDevices struct {
	HostIfIndex int
	NetIfIndex  int
}

// EnsureHostDevices creates (or repairs) mbr_host/mbr_net, puts the router
// IP on mbr_host and routes the pod CIDR out of it. It is idempotent.
func EnsureHostDevices(cfg HostConfig) (HostDevices, error) {
	if !cfg.RouterIP.Is4() || !cfg.PodCIDR.Addr().Is4() {
		return HostDevices{}, fmt.Errorf("ensure host devices: router %s / pod CIDR %s: only IPv4 is supported yet", cfg.RouterIP, cfg.PodCIDR)
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	l, err := netlink.LinkByName(HostDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return HostDevices{}, fmt.Errorf("look up %s: %w", HostDevice, err)
		}
		veth := &netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: HostDevice, MTU: cfg.MTU},
			PeerName:  NetDevice,
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return HostDevices{}, fmt.Errorf("create veth %s/%s: %w", HostDevice, NetDevice, err)
		}
		if l, err = netlink.LinkByName(HostDevice); err != nil {
			return HostDevices{}, fmt.Errorf("look up %s after create: %w", HostDevice, err)
		}
	}
	peer, err := netlink.LinkByName(NetDevice)
	if err != nil {
		return HostDevices{}, fmt.Errorf("look up %s: %w", NetDevice, err)
	}
	// No ARP on mbr_host: the kernel uses the device's own MAC as the
	// neighbour; the from-host program rewrites MACs anyway.
	if err := netlink.LinkSetARPOff(l); err != nil {
		return HostDevices{}, fmt.Errorf("set arp off on %s: %w", HostDevice, err)
	}
	for _, d := range []netlink.Link{l, peer} {
		if err := netlink.LinkSetUp(d); err != nil {
			return HostDevices{}, fmt.Errorf("set %s up: %w", d.Attrs().Name, err)
		}
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(cfg.RouterIP, 32))}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return HostDevices{}, fmt.Errorf("add %s to %s: %w", cfg.RouterIP, HostDevice, err)
	}
	route := &netlink.Route{
		LinkIndex: l.Attrs().Index,
		Dst:       prefixToIPNet(cfg.PodCIDR.Masked()),
		Src:       net.IP(cfg.RouterIP.AsSlice()),
		Scope:     netlink.SCOPE_LINK,
	}
	if err := netlink.RouteReplace(route); err != nil {
		return HostDevices{}, fmt.Errorf("route %s dev %s: %w", cfg.PodCIDR, HostDevice, err)
	}
	return HostDevices{HostIfIndex: l.Attrs().Index, NetIfIndex: peer.Attrs().Index}, nil
}

// RemoveHostDevices deletes mbr_host/mbr_net (and with them the route).
func RemoveHostDevices() error {
	l, err := netlink.LinkByName(HostDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", HostDevice, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", HostDevice, err)
	}
	return nil
}

// HostIfName derives the node-side interface name of an attachment:
// "lxc" + 11 hex characters of a hash, 14 characters in all (IFNAMSIZ-1 = 15).
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "lxc" + hex.EncodeToString(sum[:])[:11]
}

// VethRequest describes one endpoint's veth pair.
type VethRequest struct {
	HostIfName string       // lxc… in the agent's namespace
	Netns      string       // path of the pod's network namespace
	IfName     string       // name inside the pod, e.g. eth0
	Addr       netip.Prefix // pod address, /32 for IPv4
	Router     netip.Addr   // gateway; answered by the datapath
	MTU        int
}

// VethResult is what the datapath needs to know about the new pair.
type VethResult struct {
	HostIfIndex int
	HostMAC     net.HardwareAddr
	PodMAC      net.HardwareAddr
}

// ValidIfName reports whether s is a usable Linux interface name.
func ValidIfName(s string) error {
	if s == "" || len(s) > unix.IFNAMSIZ-1 {
		return fmt.Errorf("interface name %q: want 1 to %d characters", s, unix.IFNAMSIZ-1)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("interface name %q: not allowed", s)
	}
	for _, r := range s {
		if r == '/' || r == ':' || r <= ' ' || r > '~' {
			return fmt.Errorf("interface name %q: character %q not allowed", s, r)
		}
	}
	return nil
}

// CreateVeth creates the pair, moves the peer into the pod namespace,
// configures address and routes there and brings both ends up. On error
// nothing is left behind.
func CreateVeth(req VethRequest) (_ VethResult, retErr error) {
	if err := ValidIfName(req.IfName); err != nil {
		return VethResult{}, err
	}
	if !req.Addr.Addr().Is4() || !req.Router.Is4() {
		return VethResult{}, fmt.Errorf("create veth %s: address %s / router %s: only IPv4 is supported yet", req.HostIfName, req.Addr, req.Router)
	}
	if req.MTU == 0 {
		req.MTU = 1500
	}
	podNs, err := netns.GetFromPath(req.Netns)
	if err != nil {
		return VethResult{}, fmt.Errorf("open network namespace %s: %w", req.Netns, err)
	}
	defer podNs.Close()
	podH, err := netlink.NewHandleAt(podNs)
	if err != nil {
		return VethResult{}, fmt.Errorf("netlink handle in %s: %w", req.Netns, err)
	}
	defer podH.Close()
	if _, err := podH.LinkByName(req.IfName); err == nil {
		return VethResult{}, fmt.Errorf("create veth in %s: interface %s already exists there", req.Netns, req.IfName)
	}

	// The peer is created straight inside the pod namespace under a
	// temporary name, so two ADDs in parallel never clash on the node.
	tmpName := "tmp" + req.HostIfName[3:]
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: req.HostIfName, MTU: req.MTU},
		PeerName:      tmpName,
		PeerNamespace: netlink.NsFd(int(podNs)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return VethResult{}, fmt.Errorf("create veth %s (peer in %s): %w", req.HostIfName, req.Netns, err)
	}
	defer func() {
		if retErr != nil {
			if l, err := netlink.LinkByName(req.HostIfName); err == nil {
				_ = netlink.LinkDel(l)
			}
		}
	}()
	host, err := netlink.LinkByName(req.HostIfName)
	if err != nil {
		return VethResult{}, fmt.Errorf("look up %s: %w", req.HostIfName, err)
	}
	peer, err := podH.LinkByName(tmpName)
	if err != nil {
		return VethResult{}, fmt.Errorf("look up %s in %s: %w", tmpName, req.Netns, err)
	}
	if err := podH.LinkSetName(peer, req.IfName); err != nil {
		return VethResult{}, fmt.Errorf("rename %s to %s in %s: %w", tmpName, req.IfName, req.Netns, err)
	}
	if err := podH.LinkSetUp(peer); err != nil {
		return VethResult{}, fmt.Errorf("set %s up in %s: %w", req.IfName, req.Netns, err)
	}
	if err := podH.AddrAdd(peer, &netlink.Addr{IPNet: prefixToIPNet(req.Addr)}); err != nil {
		return VethResult{}, fmt.Errorf("add %s to %s in %s: %w", req.Addr, req.IfName, req.Netns, err)
	}
	routerNet := prefixToIPNet(netip.PrefixFrom(req.Router, 32))
	if err := podH.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: routerNet, Scope: netlink.SCOPE_LINK}); err != nil {
		return VethResult{}, fmt.Errorf("route to router %s in %s: %w", req.Router, req.Netns, err)
	}
	if err := podH.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Gw: net.IP(req.Router.AsSlice())}); err != nil {
		return VethResult{}, fmt.Errorf("default route via %s in %s: %w", req.Router, req.Netns, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return VethResult{}, fmt.Errorf("set %s up: %w", req.HostIfName, err)
	}
	// Re-read both ends for their final attributes.
	if host, err = netlink.LinkByName(req.HostIfName); err != nil {
		return VethResult{}, fmt.Errorf("look up %s: %w", req.HostIfName, err)
	}
	if peer, err = podH.LinkByName(req.IfName); err != nil {
		return VethResult{}, fmt.Errorf("look up %s in %s: %w", req.IfName, req.Netns, err)
	}
	return VethResult{
		HostIfIndex: host.Attrs().Index,
		HostMAC:     host.Attrs().HardwareAddr,
		PodMAC:      peer.Attrs().HardwareAddr,
	}, nil
}

// DeleteVeth removes the node-side interface, which removes its peer too.
// A missing interface is not an error.
func DeleteVeth(hostIfName string) error {
	l, err := netlink.LinkByName(hostIfName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", hostIfName, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", hostIfName, err)
	}
	return nil
}

// HostLink reports the node-side interface's index and MAC, if it exists.
func HostLink(hostIfName string) (int, net.HardwareAddr, bool, error) {
	l, err := netlink.LinkByName(hostIfName)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return 0, nil, false, nil
		}
		return 0, nil, false, fmt.Errorf("look up %s: %w", hostIfName, err)
	}
	return l.Attrs().Index, l.Attrs().HardwareAddr, true, nil
}

// CheckVeth verifies an attachment: the node side exists and is up, and the
// pod interface exists in its namespace with the address and default route.
func CheckVeth(req VethRequest) error {
	host, err := netlink.LinkByName(req.HostIfName)
	if err != nil {
		return fmt.Errorf("check: node-side interface %s: %w", req.HostIfName, err)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("check: node-side interface %s is down", req.HostIfName)
	}
	if _, err := os.Stat(req.Netns); err != nil {
		return fmt.Errorf("check: network namespace %s: %w", req.Netns, err)
	}
	podNs, err := netns.GetFromPath(req.Netns)
	if err != nil {
		return fmt.Errorf("check: open network namespace %s: %w", req.Netns, err)
	}
	defer podNs.Close()
	podH, err := netlink.NewHandleAt(podNs)
	if err != nil {
		return fmt.Errorf("check: netlink handle in %s: %w", req.Netns, err)
	}
	defer podH.Close()
	peer, err := podH.LinkByName(req.IfName)
	if err != nil {
		return fmt.Errorf("check: interface %s in %s: %w", req.IfName, req.Netns, err)
	}
	addrs, err := podH.AddrList(peer, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("check: addresses of %s in %s: %w", req.IfName, req.Netns, err)
	}
	found := false
	for _, a := range addrs {
		if p, ok := ipNetToPrefix(a.IPNet); ok && p == req.Addr {
			found = true
		}
	}
	if !found {
		return fmt.Errorf("check: %s in %s lacks address %s", req.IfName, req.Netns, req.Addr)
	}
	routes, err := podH.RouteList(peer, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("check: routes of %s in %s: %w", req.IfName, req.Netns, err)
	}
	for _, r := range routes {
		isDefault := r.Dst == nil
		if r.Dst != nil {
			ones, _ := r.Dst.Mask.Size()
			isDefault = ones == 0
		}
		if isDefault && r.Gw != nil && r.Gw.Equal(net.IP(req.Router.AsSlice())) {
			return nil
		}
	}
	return fmt.Errorf("check: %s in %s has no default route via %s", req.IfName, req.Netns, req.Router)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// OverlayDevice is the VXLAN device of the overlay.
const OverlayDevice = "mbr_vxlan"

// VXLANPort is the UDP port of the overlay (Linux's traditional VXLAN port,
// as flannel and Cilium use).
const VXLANPort = 8472

// EnsureVXLAN creates (or keeps) mbr_vxlan in external (collect_md) mode
// with local as its source address and brings it up. The datapath sets
// remote and VNI per packet. It returns the ifindex.
func EnsureVXLAN(local netip.Addr, mtu int) (int, error) {
	if l, err := netlink.LinkByName(OverlayDevice); err == nil {
		v, ok := l.(*netlink.Vxlan)
		if ok && v.FlowBased && v.Port == VXLANPort && (v.SrcAddr == nil || v.SrcAddr.Equal(net.IP(local.AsSlice()))) {
			if err := netlink.LinkSetUp(l); err != nil {
				return 0, fmt.Errorf("set %s up: %w", OverlayDevice, err)
			}
			return l.Attrs().Index, nil
		}
		// Wrong shape (e.g. the node IP changed): recreate.
		if err := netlink.LinkDel(l); err != nil {
			return 0, fmt.Errorf("replace %s: %w", OverlayDevice, err)
		}
	}
	v := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: OverlayDevice, MTU: mtu},
		FlowBased: true,
		Port:      VXLANPort,
		SrcAddr:   net.IP(local.AsSlice()),
		Learning:  false,
	}
	if err := netlink.LinkAdd(v); err != nil {
		return 0, fmt.Errorf("create vxlan %s (external, port %d, local %s): %w", OverlayDevice, VXLANPort, local, err)
	}
	l, err := netlink.LinkByName(OverlayDevice)
	if err != nil {
		return 0, fmt.Errorf("look up %s: %w", OverlayDevice, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return 0, fmt.Errorf("set %s up: %w", OverlayDevice, err)
	}
	return l.Attrs().Index, nil
}

// EnsureClusterRoute routes the whole cluster CIDR out of mbr_host, so the
// node's own traffic to pods on other nodes reaches from_host, which
// tunnels it (vxlan mode). The node's own pod CIDR route is more specific.
func EnsureClusterRoute(cluster netip.Prefix, router netip.Addr, mtu int) error {
	l, err := netlink.LinkByName(HostDevice)
	if err != nil {
		return fmt.Errorf("look up %s: %w", HostDevice, err)
	}
	// The route's MTU keeps host-originated packets within what the
	// overlay carries.
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: prefixToIPNet(cluster.Masked()), Src: net.IP(router.AsSlice()), Scope: netlink.SCOPE_LINK, MTU: mtu}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s dev %s: %w", cluster, HostDevice, err)
	}
	return nil
}

// DetectNodeIP returns the first global IPv4 address of an interface that
// is not Membrane's own (mbr_*, lxc*), if any.
func DetectNodeIP() (netip.Addr, bool) {
	var found netip.Addr
	externalAddrs(func(_ netlink.Link, ip netip.Addr) bool {
		if ip.IsGlobalUnicast() {
			found = ip
			return true
		}
		return false
	})
	return found, found.IsValid()
}

// externalAddrs calls fn with each IPv4 address of each interface that is
// not Membrane's own (mbr_*, lxc*) or loopback, until fn returns true.
func externalAddrs(fn func(l netlink.Link, ip netip.Addr) bool) {
	links, err := netlink.LinkList()
	if err != nil {
		return
	}
	for _, l := range links {
		n := l.Attrs().Name
		if strings.HasPrefix(n, "mbr_") || strings.HasPrefix(n, "lxc") || l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && fn(l, ip.Unmap()) {
				return
			}
		}
	}
}

// EnableForwarding sets net.ipv4.ip_forward=1 in the agent's network
// namespace (native routing forwards between the fabric and mbr_host).
func EnableForwarding() error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable net.ipv4.ip_forward: %w", err)
	}
	return nil
}

// ExternalDevice returns the interface that holds ip, unless it is one of
// Membrane's own (mbr_*, lxc*) or loopback: the device where traffic from
// other hosts arrives.
func ExternalDevice(ip netip.Addr) (name string, ifindex int, ok bool) {
	externalAddrs(func(l netlink.Link, got netip.Addr) bool {
		if got == ip {
			name, ifindex, ok = l.Attrs().Name, l.Attrs().Index, true
		}
		return ok
	})
	return name, ifindex, ok
}

// DeviceIndex returns the ifindex of a named interface.
func DeviceIndex(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("interface %q: %w", name, err)
	}
	return l.Attrs().Index, nil
}
