package lab

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/testutil"
)

// newTestNetns creates a lab-style namespace removed at cleanup.
func newTestNetns(t *testing.T, name string) string {
	t.Helper()
	ctx := context.Background()
	if err := createNetns(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := deleteNetns(context.Background(), name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return name
}

func TestNetnsCreateDelete(t *testing.T) {
	testutil.Privileged(t)
	ctx := context.Background()
	name := "mbr-t" + testutil.UniqueSuffix() + "-x"
	newTestNetns(t, name)
	if !netnsExists(name) {
		t.Fatal("namespace missing after create")
	}
	if err := createNetns(ctx, name); err == nil {
		t.Error("second create of the same namespace: want an error")
	}
	// lo is up inside, and the namespace is not the test's own.
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if lo.Attrs().Flags&net.FlagUp == 0 {
		t.Error("lo is down")
	}
	links, _ := h.LinkList()
	if len(links) != 1 {
		t.Errorf("new namespace has %d links, want only lo", len(links))
	}

	// A process left inside is killed by delete.
	sleeper := exec.Command("ip", "netns", "exec", name, "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(waited) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := netnsProcs(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 1 && pids[0] == sleeper.Process.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes in netns: %v, want [%d]", pids, sleeper.Process.Pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := deleteNetns(ctx, name); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Error("process in the namespace survived delete")
	}
	if netnsExists(name) {
		t.Error("namespace still exists")
	}
	if err := deleteNetns(ctx, name); err != nil {
		t.Errorf("second delete: %v", err)
	}
	for _, bad := range []string{"eth0", "mbr-../x", ""} {
		if err := deleteNetns(ctx, bad); err == nil {
			t.Errorf("deleteNetns(%q) = nil, want a refusal", bad)
		}
	}
}

func TestProcStop(t *testing.T) {
	testutil.Privileged(t)
	dir := t.TempDir()
	// A process that ignores SIGTERM is killed after the grace period.
	p, err := startDetached([]string{"sh", "-c", "trap '' TERM; sleep 30"}, nil, filepath.Join(dir, "log"), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.stop(context.Background(), 0) })
	time.Sleep(100 * time.Millisecond)
	if !p.Alive() {
		t.Fatal("process not alive")
	}
	if (Proc{PID: p.PID, StartTime: p.StartTime + 1}).Alive() {
		t.Error("a different start time must not count as the same process")
	}
	if err := p.stop(context.Background(), 300*time.Millisecond); err == nil {
		t.Error("stop of a TERM-ignoring process: want a 'killed' error")
	}
	if p.Alive() {
		t.Error("still alive after stop")
	}
	if err := p.stop(context.Background(), time.Second); err != nil {
		t.Errorf("stop of a stopped process: %v", err)
	}
}

// TestServeProbeVeth wires two namespaces with a plain veth pair (no
// agent), runs detached traffic servers in both, and probes tcp, udp and
// icmp in every direction, then a port nobody serves.
func TestServeProbeVeth(t *testing.T) {
	testutil.Privileged(t)
	ctx := context.Background()
	sfx := testutil.UniqueSuffix()
	nsA := newTestNetns(t, "mbr-t"+sfx+"-a")
	nsB := newTestNetns(t, "mbr-t"+sfx+"-b")
	// TEST-NET-1 addresses, only ever configured inside the two namespaces.
	ipA, ipB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")

	hA := nsHandle(t, nsA)
	fdB, err := netns.GetFromName(nsB)
	if err != nil {
		t.Fatal(err)
	}
	defer fdB.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1", PeerNamespace: netlink.NsFd(int(fdB))}
	if err := hA.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	hB := nsHandle(t, nsB)
	for _, x := range []struct {
		h     *netlink.Handle
		ifc   string
		addr  netip.Addr
		label string
	}{{hA, "eth0", ipA, nsA}, {hB, "eth1", ipB, nsB}} {
		l, err := x.h.LinkByName(x.ifc)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(x.addr.String() + "/24")
		if err := x.h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := x.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}

	targets := []probeTarget{
		{Key: "test/a", NetnsPath: netnsPath(nsA), IP: ipA},
		{Key: "test/b", NetnsPath: netnsPath(nsB), IP: ipB},
	}
	dir := t.TempDir()
	for _, tg := range targets {
		cfg := ServeConfig{Name: tg.Key, Listen: []netip.Addr{tg.IP, netip.MustParseAddr("127.0.0.1")}, TCP: []uint16{8080, 9090}, UDP: []uint16{8080}}
		js, _ := json.Marshal(cfg)
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		log := filepath.Join(dir, filepath.Base(tg.NetnsPath)+".log")
		argv := []string{"ip", "netns", "exec", filepath.Base(tg.NetnsPath), self}
		p, err := startServer(argv, []string{serveEnv + "=" + string(js)}, log, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.stop(context.Background(), 3*time.Second); err != nil {
				t.Errorf("stop server: %v", err)
			}
		})
		if err := waitServer(ctx, tg.NetnsPath, tg.Key, []Port{{8080, "tcp"}}, p, log); err != nil {
			t.Fatal(err)
		}
	}

	for _, spec := range []ProbeSpec{{Proto: "tcp", Port: 8080}, {Proto: "tcp", Port: 9090}, {Proto: "udp", Port: 8080}, {Proto: "icmp"}} {
		m, err := probeMatrix(ctx, targets, spec)
		if err != nil {
			t.Fatal(err)
		}
		if !m.Full() {
			t.Errorf("%s/%d: not full: %v", spec.Proto, spec.Port, m.Err)
		}
	}
	// Nobody serves 7777: TCP is refused, UDP times out.
	m, err := probeMatrix(ctx, targets, ProbeSpec{Proto: "tcp", Port: 7777})
	if err != nil {
		t.Fatal(err)
	}
	if m.OK[0][1] || m.Err[0][1] != "connection refused" {
		t.Errorf("tcp/7777 a→b: ok=%v err=%q, want connection refused", m.OK[0][1], m.Err[0][1])
	}
	m, err = probeMatrix(ctx, targets, ProbeSpec{Proto: "udp", Port: 7777, Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if m.OK[1][0] {
		t.Error("udp/7777 b→a: ok, want a failure")
	}

	// The probing goroutines' threads switched namespaces; the test's own
	// namespace must be untouched.
	self, _ := netns.Get()
	defer self.Close()
	host, _ := netns.GetFromPath("/proc/self/ns/net")
	defer host.Close()
	if !self.Equal(host) {
		t.Error("test thread left in a lab namespace")
	}
}

func nsHandle(t *testing.T, name string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}
