package agent

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/internal/datapath/link"
	"github.com/membrane-net/membrane/internal/datapath/loader"
)

// defaultCgroup2Mount is where the agent mounts cgroup v2 when the machine
// has none (a cgroup v1 host): BPF socket hooks need a v2 directory, and
// the v2 hierarchy exists beside v1 without controllers.
const defaultCgroup2Mount = "/run/membrane/cgroupv2"

// cgroupRoot returns the cgroup v2 directory the socket hooks attach to:
// --cgroup-root if set (it must be cgroup v2), else /sys/fs/cgroup if that
// is cgroup v2, else cgroup2 mounted at /run/membrane/cgroupv2 (mounting it
// if needed; the mount stays for the node's lifetime, like the BPF pins).
func (c Config) cgroupRoot() (string, error) {
	if c.CgroupRoot != "" {
		if !loader.IsCgroup2(c.CgroupRoot) {
			return "", fmt.Errorf("--cgroup-root %s: not a cgroup v2 directory", c.CgroupRoot)
		}
		return c.CgroupRoot, nil
	}
	if loader.IsCgroup2("/sys/fs/cgroup") {
		return "/sys/fs/cgroup", nil
	}
	if loader.IsCgroup2(defaultCgroup2Mount) {
		return defaultCgroup2Mount, nil
	}
	if err := os.MkdirAll(defaultCgroup2Mount, 0o755); err != nil {
		return "", fmt.Errorf("mount cgroup v2 for the socket hooks: %w", err)
	}
	if err := unix.Mount("none", defaultCgroup2Mount, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("mount cgroup v2 at %s for the socket hooks: %w", defaultCgroup2Mount, err)
	}
	return defaultCgroup2Mount, nil
}

// attachNodePort attaches from_netdev to --nodeport-devices, or to the
// device holding the node IP. A node without such a device (a single node
// whose only address is its router IP) answers NodePorts only locally.
func (a *Agent) attachNodePort() error {
	devs := a.cfg.NodePortDevices
	if len(devs) == 0 {
		name, _, ok := link.ExternalDevice(a.nodeIP)
		if !ok {
			a.log.Info("no external device holds the node IP; NodePorts answer only on this node", "nodeIP", a.nodeIP)
			return nil
		}
		devs = []string{name}
	}
	for _, d := range devs {
		idx, err := link.DeviceIndex(d)
		if err != nil {
			return fmt.Errorf("--nodeport-devices: %w", err)
		}
		if err := a.dp.AttachNetdev(d, idx); err != nil {
			return fmt.Errorf("attach NodePort program to %s: %w", d, err)
		}
		a.log.Info("NodePort program attached", "device", d)
	}
	return nil
}
