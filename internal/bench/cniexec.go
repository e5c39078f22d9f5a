package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// cniTimeout bounds one CNI operation.
const cniTimeout = 30 * time.Second

// nsExec runs CNI plugins with a node namespace as their current network
// namespace (`nsenter --net=<node> -- <plugin>`), as a runtime on that node
// would: the host-side interfaces, the bridge and the ip_forward sysctl they
// create or set land in the node namespace, never in the machine's own. It
// implements libcni's invoke.Exec.
type nsExec struct {
	nodeNetns string // path, /run/netns/<name>
}

var _ invoke.Exec = nsExec{}

func (e nsExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+e.nodeNetns, "--", pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		// A plugin reports failure as a CNI error object on stdout.
		var cerr cnitypes.Error
		if json.Unmarshal(stdout.Bytes(), &cerr) == nil && (cerr.Code != 0 || cerr.Msg != "") {
			return nil, &cerr
		}
		return nil, fmt.Errorf("run %s in %s: %w: %s", filepath.Base(pluginPath), e.nodeNetns, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

func (e nsExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e nsExec) Decode(b []byte) (version.PluginInfo, error) {
	var d version.PluginDecoder
	return d.Decode(b)
}

// cniNet is one network configuration and the way to invoke its plugins.
type cniNet struct {
	list *libcni.NetworkConfigList
	cni  *libcni.CNIConfig
}

// newCNINet parses a conflist; plugins are looked up in pluginDirs and run
// inside nodeNetns.
func newCNINet(conf map[string]any, pluginDirs []string, cacheDir, nodeNetns string) (*cniNet, error) {
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("parse cni config: %w", err)
	}
	return &cniNet{
		list: list,
		cni:  libcni.NewCNIConfigWithCacheDir(pluginDirs, cacheDir, nsExec{nodeNetns: netnsPath(nodeNetns)}),
	}, nil
}

func runtimeConf(containerID, netns, podName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: containerID,
		NetNS:       netnsPath(netns),
		IfName:      "eth0",
		// As container runtimes do: the reference plugins reject K8S_* keys
		// they do not know unless IgnoreUnknown is set.
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "bench"}, {"K8S_POD_NAME", podName}},
	}
}

// add attaches a namespace and returns its IPv4 address.
func (n *cniNet) add(ctx context.Context, containerID, netns, podName string) (netip.Addr, error) {
	ctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	res, err := n.cni.AddNetworkList(ctx, n.list, runtimeConf(containerID, netns, podName))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cni add %s (%s): %w", podName, n.list.Name, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cni add %s: convert result: %w", podName, err)
	}
	for _, ipc := range r.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("cni add %s: result has no IPv4 address", podName)
}

// del detaches a namespace.
func (n *cniNet) del(ctx context.Context, containerID, netns, podName string) error {
	ctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	if err := n.cni.DelNetworkList(ctx, n.list, runtimeConf(containerID, netns, podName)); err != nil {
		return fmt.Errorf("cni del %s (%s): %w", podName, n.list.Name, err)
	}
	return nil
}

// membraneConf is the network configuration a runtime on a Membrane node
// finds in /etc/cni/net.d.
func membraneConf(socket string) map[string]any {
	return map[string]any{
		"cniVersion": "1.0.0",
		"name":       "membrane",
		"plugins":    []map[string]any{{"type": "membrane-cni", "socketPath": socket}},
	}
}

// ptpConf is the reference ptp plugin with host-local IPAM.
func ptpConf(subnet netip.Prefix, dataDir string) map[string]any {
	return map[string]any{
		"cniVersion": "1.0.0",
		"name":       "mbb-ptp",
		"plugins": []map[string]any{{
			"type":   "ptp",
			"ipMasq": false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": subnet.String()}}},
				"dataDir": dataDir,
			},
		}},
	}
}

// bridgeConf is the reference bridge plugin with host-local IPAM: a Linux
// bridge in the node namespace with the gateway address on it, no masquerade
// and no routes (the pods share one subnet).
func bridgeConf(bridgeName string, subnet netip.Prefix, dataDir string) map[string]any {
	return map[string]any{
		"cniVersion": "1.0.0",
		"name":       "mbb-bridge",
		"plugins": []map[string]any{{
			"type":      "bridge",
			"bridge":    bridgeName,
			"isGateway": true,
			"ipMasq":    false,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": subnet.String()}}},
				"dataDir": dataDir,
			},
		}},
	}
}
