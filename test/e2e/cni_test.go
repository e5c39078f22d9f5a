package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
	"github.com/membrane-net/membrane/internal/testutil"
)

// testNetns creates a network namespace with a unique name and deletes it
// at cleanup.
func testNetns(t *testing.T, prefix string) string {
	t.Helper()
	name := prefix + testutil.UniqueSuffix()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// lxcLinks counts endpoint veths in the node namespace.
func lxcLinks(t *testing.T, nodeNetns string) int {
	t.Helper()
	h, err := netns.GetFromName(nodeNetns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	links, err := nh.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "lxc") {
			n++
		}
	}
	return n
}

// TestCNITool drives the plugin with the CNI project's own client, cnitool:
// add (with capability args for labels and ports), check, status, del, gc.
func TestCNITool(t *testing.T) {
	l := newLab(t, nil)
	bin := binaries(t)
	n := node(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := api.NewClient(n.Socket)

	confDir := t.TempDir()
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"mbrtest","plugins":[{"type":"membrane-cni","socketPath":%q,"capabilities":{"labels":true,"containerPorts":true}}]}`, n.Socket)
	if err := os.WriteFile(filepath.Join(confDir, "10-mbrtest.conflist"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	ns := testNetns(t, "mbr-cnitool-")
	nsPath := "/run/netns/" + ns
	// cnitool keeps libcni's result cache in /var/lib/cni; drop ours even
	// when the test fails half-way.
	t.Cleanup(func() {
		leftovers, _ := filepath.Glob("/var/lib/cni/results/mbrtest-*")
		for _, f := range leftovers {
			os.Remove(f)
		}
	})
	cnitool := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "cnitool"), args...)
		cmd.Env = append(os.Environ(),
			"CNI_PATH="+bin,
			"NETCONFPATH="+confDir,
			`CAP_ARGS={"labels":{"app":"tool","tier":"cli"},"containerPorts":[{"name":"http","containerPort":80,"protocol":"TCP"}]}`,
			"CNI_ARGS=K8S_POD_NAMESPACE=tools;K8S_POD_NAME=cnitool-pod",
		)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if err != nil {
			return out.String(), fmt.Errorf("cnitool %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out.String(), errb.String())
		}
		return out.String(), nil
	}

	out, err := cnitool("add", "mbrtest", nsPath)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
		IPs []struct {
			Address string `json:"address"`
			Gateway string `json:"gateway"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("decode add result %q: %v", out, err)
	}
	if res.CNIVersion != "1.1.0" || len(res.IPs) != 1 {
		t.Fatalf("add result = %s", out)
	}
	addr := netip.MustParsePrefix(res.IPs[0].Address)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.PodCIDR.Contains(addr.Addr()) || res.IPs[0].Gateway != st.RouterIP.String() {
		t.Errorf("address %s gateway %s, want inside %s via %s", addr, res.IPs[0].Gateway, st.PodCIDR, st.RouterIP)
	}
	sandboxSeen := false
	for _, i := range res.Interfaces {
		if i.Name == "eth0" && i.Sandbox == nsPath {
			sandboxSeen = true
		}
	}
	if !sandboxSeen {
		t.Errorf("result lacks eth0 in sandbox %s: %s", nsPath, out)
	}
	ep, err := c.Endpoint(ctx, "tools/cnitool-pod")
	if err != nil {
		t.Fatalf("endpoint created by cnitool not found: %v", err)
	}
	if ep.Labels["app"] != "tool" || ep.Labels["tier"] != "cli" || len(ep.Ports) != 1 || ep.Ports[0].Name != "http" {
		t.Errorf("endpoint metadata = labels %v ports %v", ep.Labels, ep.Ports)
	}
	// The pod answers through the datapath: ping the router from inside.
	if out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", st.RouterIP.String()).CombinedOutput(); err != nil {
		t.Errorf("ping router from cnitool pod: %v\n%s", err, out)
	}

	if _, err := cnitool("check", "mbrtest", nsPath); err != nil {
		t.Error(err)
	}
	if _, err := cnitool("status", "mbrtest", nsPath); err != nil {
		t.Error(err)
	}
	if _, err := cnitool("del", "mbrtest", nsPath); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Endpoint(ctx, "tools/cnitool-pod"); err == nil {
		t.Error("endpoint still present after cnitool del")
	}
	if _, err := cnitool("del", "mbrtest", nsPath); err != nil {
		t.Errorf("second del must succeed: %v", err)
	}
	if got := lxcLinks(t, n.Netns); got != 0 {
		t.Errorf("%d lxc links after del, want 0", got)
	}

	// GC: cnitool passes no valid attachments, so everything is collected.
	if _, err := cnitool("add", "mbrtest", nsPath); err != nil {
		t.Fatal(err)
	}
	if _, err := cnitool("gc", "mbrtest", nsPath); err != nil {
		t.Fatal(err)
	}
	eps, err := c.Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, _ = c.Status(ctx)
	if len(eps) != 0 || st.IPAM.Allocated != 0 || lxcLinks(t, n.Netns) != 0 {
		t.Errorf("after gc: %d endpoints, %d addresses, %d links; want none", len(eps), st.IPAM.Allocated, lxcLinks(t, n.Netns))
	}
}

type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

// TestCNIBadInput runs the real plugin binary against a real agent with bad
// input, an exhausted pool and an unreachable agent: each gets the right
// CNI error code and a clear message, and nothing is left behind.
func TestCNIBadInput(t *testing.T) {
	l := newLab(t, func(c *lab.Config) { c.PodCIDR = netip.MustParsePrefix("10.200.9.0/30") }) // one usable address
	bin := binaries(t)
	n := node(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := api.NewClient(n.Socket)
	if _, err := l.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: "only"}); err != nil {
		t.Fatal(err)
	}
	ns := testNetns(t, "mbr-bad-")
	nsPath := "/run/netns/" + ns
	good := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"membrane","type":"membrane-cni","socketPath":%q}`, n.Socket)

	for _, tc := range []struct {
		name    string
		command string
		stdin   string
		netns   string
		code    int
		msg     string
	}{
		{"malformed json", "ADD", `{"cniVersion":"1.0.0",`, nsPath, 6, ""},
		{"unknown version", "ADD", strings.Replace(good, "1.0.0", "9.9.9", 1), nsPath, 1, "9.9.9"},
		{"missing name", "ADD", strings.Replace(good, `"name":"membrane",`, "", 1), nsPath, 7, "name"},
		{"missing netns", "ADD", good, "", 4, "CNI_NETNS"},
		{"exhausted pool", "ADD", good, nsPath, 100, "exhausted"},
		{"agent down", "ADD", strings.Replace(good, n.Socket, "/nonexistent/membrane.sock", 1), nsPath, 11, "/nonexistent/membrane.sock"},
		{"agent down on del", "DEL", strings.Replace(good, n.Socket, "/nonexistent/membrane.sock", 1), nsPath, 11, "membrane-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.CommandContext(ctx, filepath.Join(bin, "membrane-cni"))
			cmd.Env = []string{"CNI_COMMAND=" + tc.command, "CNI_CONTAINERID=bad-" + testutil.UniqueSuffix(),
				"CNI_IFNAME=eth0", "CNI_PATH=" + bin, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
			if tc.netns != "" {
				cmd.Env = append(cmd.Env, "CNI_NETNS="+tc.netns)
			}
			cmd.Stdin = strings.NewReader(tc.stdin)
			out, err := cmd.Output()
			if err == nil {
				t.Fatalf("plugin succeeded, want error code %d; stdout %s", tc.code, out)
			}
			var e cniError
			if err := json.Unmarshal(out, &e); err != nil {
				t.Fatalf("stdout is not a CNI error object: %q", out)
			}
			if e.Code != tc.code {
				t.Errorf("code = %d (%s), want %d", e.Code, e.Msg, tc.code)
			}
			if !strings.Contains(e.Msg+" "+e.Details, tc.msg) {
				t.Errorf("message %q / details %q does not mention %q", e.Msg, e.Details, tc.msg)
			}
			eps, err := c.Endpoints(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st, err := c.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(eps) != 1 || st.IPAM.Allocated != 1 || lxcLinks(t, n.Netns) != 1 {
				t.Errorf("state changed: %d endpoints, %d addresses, %d links; want 1 each", len(eps), st.IPAM.Allocated, lxcLinks(t, n.Netns))
			}
		})
	}
}
