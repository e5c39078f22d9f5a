package loader

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/internal/testutil"
)

// The client half of the socket-LB tests runs as a separate process (this
// test binary again) so that it can live in the test's cgroup, where the
// socket hooks are attached. It prints one line per answer.
func TestLBClientHelper(t *testing.T) {
	mode := os.Getenv("MBR_LB_CLIENT")
	if mode == "" {
		t.Skip("helper process of the socket-LB tests")
	}
	target := os.Getenv("MBR_LB_TARGET")
	switch mode {
	case "tcp":
		c, err := net.DialTimeout("tcp", target, 2*time.Second)
		if err != nil {
			fmt.Printf("error %v\n", err)
			os.Exit(0)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Printf("error read: %v\n", err)
			os.Exit(0)
		}
		fmt.Printf("answer %s peer %s\n", strings.TrimSpace(line), c.RemoteAddr())
	case "udp":
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			fmt.Printf("error %v\n", err)
			os.Exit(0)
		}
		dst, _ := net.ResolveUDPAddr("udp4", target)
		buf := make([]byte, 64)
		for range 3 {
			if _, err := pc.WriteTo([]byte("ping"), dst); err != nil {
				fmt.Printf("error %v\n", err)
				os.Exit(0)
			}
			pc.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				fmt.Printf("error read: %v\n", err)
				os.Exit(0)
			}
			fmt.Printf("answer %s peer %s\n", buf[:n], from)
		}
	}
	os.Exit(0)
}

// testCgroup mounts cgroup2 in a temporary directory and makes a child
// cgroup; both go when the test ends.
func testCgroup(t *testing.T) string {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount("none", mnt, "cgroup2", 0, ""); err != nil {
		t.Fatalf("mount cgroup2 on %s: %v", mnt, err)
	}
	cg := filepath.Join(mnt, "mbr-lb-test-"+testutil.UniqueSuffix())
	if err := os.Mkdir(cg, 0o755); err != nil {
		unix.Unmount(mnt, unix.MNT_DETACH)
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove cgroup %s: %v", cg, err)
		}
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return cg
}

// runInCgroup runs the client helper inside cg (and the caller's netns:
// the caller's goroutine is locked to a thread in it) and returns its lines.
func runInCgroup(t *testing.T, cg, mode, target string) []string {
	t.Helper()
	fd, err := unix.Open(cg, unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(os.Args[0], "-test.run=^TestLBClientHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "MBR_LB_CLIENT="+mode, "MBR_LB_TARGET="+target)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client %s %s: %v\n%s", mode, target, err, out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "answer ") || strings.HasPrefix(l, "error ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// serveNames starts TCP and UDP servers on 127.0.0.1 that answer name.
func serveNames(t *testing.T, name string) uint16 {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, name)
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name), from)
		}
	}()
	return port
}

func TestSocketLB(t *testing.T) {
	testutil.Privileged(t)
	inTestNetns(t)
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	dp, err := Load(Config{PinDir: testPinDir(t), RouterIPv4: routerIP, LBMapSize: 64, LBMaglevSize: 251})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	cg := testCgroup(t)
	if err := dp.AttachCgroup(cg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.DetachCgroup(); err != nil {
			t.Errorf("detach: %v", err)
		}
	})

	loopback := netip.MustParseAddr("127.0.0.1")
	p1, p2 := serveNames(t, "backend-1"), serveNames(t, "backend-2")
	vip := netip.MustParseAddrPort("10.96.0.10:80")
	for id, p := range map[uint32]uint16{1: p1, 2: p2} {
		for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			if err := dp.UpsertLBBackend(id+uint32(proto)*10, LBBackend{Addr: netip.AddrPortFrom(loopback, p), Proto: proto}); err != nil {
				t.Fatal(err)
			}
		}
	}
	install := func(proto uint8, ids []uint32, old int) {
		t.Helper()
		if err := dp.UpsertLBService(LBService{Frontend: vip, Proto: proto, RevNatID: uint16(proto), Backends: ids}, old); err != nil {
			t.Fatal(err)
		}
	}
	install(unix.IPPROTO_TCP, []uint32{61, 62}, 0)
	install(unix.IPPROTO_UDP, []uint32{171}, 0)

	// TCP: both backends answer over a few connections, and getpeername
	// shows the service address.
	seen := map[string]bool{}
	for i := 0; i < 20 && len(seen) < 2; i++ {
		lines := runInCgroup(t, cg, "tcp", vip.String())
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "answer backend-") {
			t.Fatalf("tcp to %s: got %q", vip, lines)
		}
		if !strings.HasSuffix(lines[0], "peer "+vip.String()) {
			t.Errorf("getpeername: %q, want peer %s", lines[0], vip)
		}
		seen[strings.Fields(lines[0])[1]] = true
	}
	if len(seen) != 2 {
		t.Errorf("20 connections reached %v, want both backends", seen)
	}

	// UDP: the replies appear to come from the service address, and one
	// socket stays with its backend.
	lines := runInCgroup(t, cg, "udp", vip.String())
	if len(lines) != 3 {
		t.Fatalf("udp: %q", lines)
	}
	for _, l := range lines {
		if l != "answer backend-1 peer "+vip.String() {
			t.Errorf("udp answer %q, want backend-1 from %s", l, vip)
		}
	}

	// A backend that is not ready gets no new connections.
	install(unix.IPPROTO_TCP, []uint32{62}, 2)
	for range 5 {
		lines := runInCgroup(t, cg, "tcp", vip.String())
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "answer backend-2 ") {
			t.Fatalf("after removing backend 1: %q", lines)
		}
	}

	// No backend: connect is refused and counted.
	install(unix.IPPROTO_TCP, nil, 1)
	lines = runInCgroup(t, cg, "tcp", vip.String())
	if len(lines) != 1 || !strings.Contains(lines[0], "operation not permitted") {
		t.Fatalf("service without backends: %q, want operation not permitted", lines)
	}
	m, err := dp.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if c := m[MetricsKey{Reason: DropNoServiceBackend, Egress: true}]; c.Packets < 1 {
		t.Errorf("NO_SERVICE_BACKEND drops = %d, want ≥ 1", c.Packets)
	}

	// Listing shows what was installed.
	svcs, backends, err := dp.ListLB()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 || len(backends) != 4 {
		t.Errorf("ListLB: %d services, %d backends; want 2 and 4: %+v", len(svcs), len(backends), svcs)
	}
	if err := dp.DeleteLBService(vip, unix.IPPROTO_TCP, unix.IPPROTO_TCP, 0); err != nil {
		t.Fatal(err)
	}
	// A deleted service is an ordinary address again: connect goes to
	// the (unroutable) address itself and fails another way.
	lines = runInCgroup(t, cg, "tcp", vip.String())
	if len(lines) != 1 || strings.Contains(lines[0], "operation not permitted") || strings.HasPrefix(lines[0], "answer") {
		t.Errorf("after delete: %q", lines)
	}
}

func TestMaglevTableInstall(t *testing.T) {
	testutil.Privileged(t)
	dp, err := Load(Config{PinDir: testPinDir(t), RouterIPv4: routerIP, LBMapSize: 64, LBMaglevSize: 251})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	fe := netip.MustParseAddrPort("10.96.0.11:53")
	table := make([]uint32, 251)
	for i := range table {
		table[i] = uint32(1 + i%3)
	}
	if err := dp.UpsertLBService(LBService{Frontend: fe, Proto: unix.IPPROTO_UDP, RevNatID: 7, Flags: LBFlagMaglev, Backends: []uint32{1, 2, 3}, Maglev: table}, 0); err != nil {
		t.Fatal(err)
	}
	svcs, _, err := dp.ListLB()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || svcs[0].MaglevSlots[1] != 84 || svcs[0].MaglevSlots[3] != 83 {
		t.Fatalf("Maglev shares: %+v", svcs)
	}
	if err := dp.UpsertLBService(LBService{Frontend: fe, Proto: unix.IPPROTO_UDP, RevNatID: 7, Backends: []uint32{1}, Maglev: table[:10], Flags: LBFlagMaglev}, 3); err == nil {
		t.Error("a Maglev table of the wrong size was accepted")
	}
}
