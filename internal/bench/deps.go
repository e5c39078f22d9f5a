package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"
)

// dep is an executable the harness runs and the Debian package that
// provides it. bench/deps.sh installs the same list.
type dep struct {
	name string // command name, or absolute path
	pkg  string
}

// Deps lists what a config needs, in the order bench/deps.sh installs it.
func Deps(cfg Config) []dep {
	cfg = cfg.withDefaults()
	deps := []dep{{"ip", "iproute2"}, {"nsenter", "util-linux"}, {"taskset", "util-linux"}, {"ss", "iproute2"}, {"sysctl", "procps"}, {"ping", "iputils-ping"}}
	for _, w := range cfg.Workloads {
		switch w {
		case WorkloadTCPRR, WorkloadUDPRR:
			deps = append(deps, dep{"sockperf", "sockperf"})
		case WorkloadTCPStream:
			deps = append(deps, dep{"iperf3", "iperf3"})
		case WorkloadTCPCRR:
			deps = append(deps, dep{"wrk", "wrk"}, dep{"nginx", "nginx-light"})
		}
	}
	for _, t := range cfg.Topologies {
		switch t.Kind {
		case KindIPTables:
			deps = append(deps, dep{"iptables-restore", "iptables"})
		case KindNFTSet:
			deps = append(deps, dep{"nft", "nftables"})
		case KindBridge:
			deps = append(deps, dep{filepath.Join(cfg.CNIPluginDir, "bridge"), "containernetworking-plugins"},
				dep{filepath.Join(cfg.CNIPluginDir, "host-local"), "containernetworking-plugins"})
		case KindKernelVXLAN:
			// FDB entries for the vxlan device.
			deps = append(deps, dep{"bridge", "iproute2"})
		}
	}
	if slices.Contains(cfg.CNI.Plugins, "ptp") {
		deps = append(deps, dep{filepath.Join(cfg.CNIPluginDir, "ptp"), "containernetworking-plugins"},
			dep{filepath.Join(cfg.CNIPluginDir, "host-local"), "containernetworking-plugins"})
	}
	return slices.CompactFunc(deps, func(a, b dep) bool { return a.name == b.name })
}

// CheckDeps returns an error naming every missing tool and the Debian
// package to install for it.
func CheckDeps(cfg Config) error {
	var missing []string
	var pkgs []string
	seen := map[string]bool{}
	for _, d := range Deps(cfg) {
		if seen[d.name] {
			continue
		}
		seen[d.name] = true
		if depPresent(d.name) {
			continue
		}
		missing = append(missing, fmt.Sprintf("%s (Debian package %s)", d.name, d.pkg))
		if !slices.Contains(pkgs, d.pkg) {
			pkgs = append(pkgs, d.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing benchmark tools: %s; install them with `apt-get install %s` (or run bench/deps.sh)",
		strings.Join(missing, ", "), strings.Join(pkgs, " "))
}

func depPresent(name string) bool {
	if filepath.IsAbs(name) {
		fi, err := os.Stat(name)
		return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
	}
	_, err := exec.LookPath(name)
	return err == nil
}

// hostInfo records the kernel, CPU and tool versions.
func hostInfo(ctx context.Context, cfg Config) Host {
	h := Host{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), Tools: map[string]string{}}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`(?m)^model name\s*:\s*(.+)$`).FindSubmatch(b); m != nil {
			h.CPUModel = strings.TrimSpace(string(m[1]))
		}
	}
	if b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		h.BridgeNFIP = strings.TrimSpace(string(b))
	} else {
		h.BridgeNFIP = "br_netfilter not loaded"
	}
	version := func(name string, args ...string) string {
		vctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(vctx, name, args...).CombinedOutput()
		return string(out)
	}
	first := func(re, s string) string {
		s = ansiRE.ReplaceAllString(s, "")
		if m := regexp.MustCompile(re).FindStringSubmatch(s); m != nil {
			return m[1]
		}
		return ""
	}
	for _, d := range Deps(cfg) {
		switch d.name {
		case "sockperf":
			h.Tools["sockperf"] = first(`version #?\s*([0-9][^\s=]*)`, version("sockperf", "--version"))
		case "iperf3":
			h.Tools["iperf3"] = first(`iperf (\S+)`, version("iperf3", "--version"))
		case "wrk":
			h.Tools["wrk"] = first(`wrk (\S+)`, version("wrk", "--version"))
		case "nginx":
			h.Tools["nginx"] = first(`nginx/(\S+)`, version("nginx", "-v"))
		case "iptables-restore":
			v := version("iptables", "--version")
			h.Tools["iptables"] = first(`v(\S+)`, v)
			h.IPTables = first(`\((\w+)\)`, v)
		case "nft":
			h.Tools["nftables"] = first(`v(\S+)`, version("nft", "--version"))
		}
		if strings.HasPrefix(d.name, cfg.withDefaults().CNIPluginDir) {
			// The Debian build prints "version unknown"; ask dpkg.
			h.Tools["cni-plugins"] = strings.TrimSpace(version("dpkg-query", "-W", "-f=${Version}", d.pkg))
		}
	}
	return h
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}
