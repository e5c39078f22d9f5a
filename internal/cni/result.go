package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/membrane-net/membrane/internal/api"
)

// BuildResult turns the agent's ADD answer into a CNI result at the
// library's current result version (1.1.0); the caller converts it to the
// config's cniVersion when printing. Interfaces: the host-side veth first
// (no sandbox) when the agent names it, then the pod interface in netns.
// The single IP points at the pod interface.
func BuildResult(ifName, netns string, resp api.CNIAddResponse) (*types100.Result, error) {
	if !resp.Address.IsValid() {
		return nil, errors.New("membrane-agent returned no pod address")
	}
	res := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	if resp.Endpoint.HostIfName != "" {
		res.Interfaces = append(res.Interfaces, &types100.Interface{
			Name: resp.Endpoint.HostIfName,
			Mac:  resp.Endpoint.HostMAC,
		})
	}
	podIdx := len(res.Interfaces)
	res.Interfaces = append(res.Interfaces, &types100.Interface{
		Name:    ifName,
		Mac:     resp.Endpoint.MAC,
		Sandbox: netns,
	})

	ipc := &types100.IPConfig{
		Interface: types100.Int(podIdx),
		Address:   prefixToIPNet(resp.Address),
	}
	if resp.Gateway.IsValid() {
		ipc.Gateway = addrToIP(resp.Gateway)
	}
	res.IPs = []*types100.IPConfig{ipc}

	for i, r := range resp.Routes {
		if !r.Dst.IsValid() {
			return nil, fmt.Errorf("membrane-agent returned route %d without a destination", i)
		}
		rt := &types.Route{Dst: prefixToIPNet(r.Dst.Masked())}
		if r.GW.IsValid() {
			rt.GW = addrToIP(r.GW)
		}
		res.Routes = append(res.Routes, rt)
	}
	return res, nil
}

// prefixToIPNet keeps the address bits (not the masked network): a CNI
// result's address is "10.1.0.5/32", the address with its prefix length.
func prefixToIPNet(p netip.Prefix) net.IPNet {
	a := p.Addr().Unmap()
	return net.IPNet{IP: addrToIP(a), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}

func addrToIP(a netip.Addr) net.IP { return net.IP(a.Unmap().AsSlice()) }

// prevResultAddress returns the address the previous result gave the
// sandbox interface ifName, or the first address when no entry names it.
// It returns the zero Prefix when the result has no addresses.
func prevResultAddress(prev *types100.Result, ifName string) (netip.Prefix, error) {
	pick := func(ipc *types100.IPConfig) (netip.Prefix, error) {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok {
			return netip.Prefix{}, fmt.Errorf("prevResult address %q is not an IP address", ipc.Address.String())
		}
		ones, _ := ipc.Address.Mask.Size()
		return netip.PrefixFrom(a.Unmap(), ones), nil
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface == nil {
			continue
		}
		idx := *ipc.Interface
		if idx < 0 || idx >= len(prev.Interfaces) {
			return netip.Prefix{}, fmt.Errorf("prevResult ip %s points at interface %d, result has %d", ipc.Address.String(), idx, len(prev.Interfaces))
		}
		if prev.Interfaces[idx].Name == ifName && prev.Interfaces[idx].Sandbox != "" {
			return pick(ipc)
		}
	}
	if len(prev.IPs) > 0 {
		return pick(prev.IPs[0])
	}
	return netip.Prefix{}, nil
}
