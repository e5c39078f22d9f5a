package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// withNetlink runs fn with a netlink handle bound to the named namespace;
// no thread changes namespace.
func withNetlink(nsName string, fn func(h *netlink.Handle) error) error {
	ns, err := netns.GetFromPath(netnsPath(nsName))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsName, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", nsName, err)
	}
	defer h.Close()
	return fn(h)
}

// createFabric creates the fabric namespace with its bridge up. The bridge
// has no address: the fabric only switches frames between lab namespaces.
func createFabric(ctx context.Context, name string) error {
	if err := createNetns(ctx, name); err != nil {
		return err
	}
	return withNetlink(name, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fabricBridge}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s in %s: %w", fabricBridge, name, err)
		}
		l, err := h.LinkByName(fabricBridge)
		if err != nil {
			return fmt.Errorf("find bridge in %s: %w", name, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set bridge up in %s: %w", name, err)
		}
		return nil
	})
}

// attachToFabric creates a veth pair from inside the fabric namespace: the
// end called port stays there, enslaved to the bridge; the other end is
// created directly in peerNs as eth0 with addr. Neither end ever exists in
// the machine's own namespace.
func attachToFabric(fabricNs, port, peerNs string, addr netip.Prefix) error {
	if len(port) > 15 {
		return fmt.Errorf("fabric port name %q is longer than 15 characters", port)
	}
	peer, err := netns.GetFromPath(netnsPath(peerNs))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", peerNs, err)
	}
	defer peer.Close()
	err = withNetlink(fabricNs, func(h *netlink.Handle) error {
		br, err := h.LinkByName(fabricBridge)
		if err != nil {
			return fmt.Errorf("find bridge in %s: %w", fabricNs, err)
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: port},
			PeerName:      fabricVethName,
			PeerNamespace: netlink.NsFd(int(peer)),
		}
		if err := h.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s (peer eth0 in %s): %w", port, peerNs, err)
		}
		l, err := h.LinkByName(port)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", port, fabricNs, err)
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", port, fabricBridge, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", port, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return withNetlink(peerNs, func(h *netlink.Handle) error {
		l, err := h.LinkByName(fabricVethName)
		if err != nil {
			return fmt.Errorf("find eth0 in %s: %w", peerNs, err)
		}
		a := &netlink.Addr{IPNet: prefixToIPNet(addr)}
		if err := h.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s to eth0 in %s: %w", addr, peerNs, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set eth0 up in %s: %w", peerNs, err)
		}
		return nil
	})
}

// addDefaultRoute adds "default via gw dev eth0" in the namespace. The
// gateway is the lab router, itself a namespace without a default route:
// nothing can leave the machine through it.
func addDefaultRoute(nsName string, gw netip.Addr) error {
	return withNetlink(nsName, func(h *netlink.Handle) error {
		l, err := h.LinkByName(fabricVethName)
		if err != nil {
			return fmt.Errorf("find eth0 in %s: %w", nsName, err)
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(gw.AsSlice())}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("add default via %s in %s: %w", gw, nsName, err)
		}
		return nil
	})
}

// setSysctl writes a /proc/sys/net value from a thread inside the
// namespace: net sysctls are per namespace, so the machine's own are never
// touched.
func setSysctl(nsName, key, value string) error {
	if !strings.HasPrefix(key, "net/") || strings.Contains(key, "..") {
		return fmt.Errorf("sysctl %q: only net/ keys", key)
	}
	path := filepath.Join("/proc/sys", key)
	return inNetns(netnsPath(nsName), func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("set %s=%s in %s: %w", key, value, nsName, err)
		}
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) != value {
			return fmt.Errorf("set %s=%s in %s: reads back %q (%v)", key, value, nsName, strings.TrimSpace(string(b)), err)
		}
		return nil
	})
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// waitTCP waits until addr accepts a TCP connection made from inside the
// namespace, or timeout passes, or alive() turns false.
func waitTCP(ctx context.Context, nsName string, addr netip.AddrPort, timeout time.Duration, alive func() bool) error {
	deadline := time.Now().Add(timeout)
	for {
		var c net.Conn
		err := inNetns(netnsPath(nsName), func() error {
			var err error
			d := net.Dialer{Timeout: time.Second}
			c, err = d.DialContext(ctx, "tcp4", addr.String())
			return err
		})
		if err == nil {
			c.Close()
			return nil
		}
		if !alive() {
			return fmt.Errorf("process exited before %s accepted connections", addr)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("%s not accepting connections after %s: %v", addr, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
