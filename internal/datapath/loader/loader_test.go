package loader

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/membrane-net/membrane/internal/testutil"
)

func TestConfigValidate(t *testing.T) {
	router := netip.MustParseAddr("10.1.0.1")
	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string // substring; "" means valid
	}{
		{"valid", Config{PinDir: "/sys/fs/bpf/membrane/n1", RouterIPv4: router}, ""},
		{"empty pin dir", Config{RouterIPv4: router}, "pin dir is empty"},
		{"relative pin dir", Config{PinDir: "membrane", RouterIPv4: router}, "not an absolute path"},
		{"root pin dir", Config{PinDir: "/", RouterIPv4: router}, "must not be /"},
		{"no router", Config{PinDir: "/sys/fs/bpf/m"}, "router IPv4 address is unset"},
		{"ipv6 router", Config{PinDir: "/sys/fs/bpf/m", RouterIPv4: netip.MustParseAddr("fd00::1")}, "not IPv4"},
		{"unspecified router", Config{PinDir: "/sys/fs/bpf/m", RouterIPv4: netip.IPv4Unspecified()}, "unspecified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func testEndpoint(ifindex uint32, id uint16) EndpointInfo {
	return EndpointInfo{
		IfIndex:    ifindex,
		PodMAC:     mac("02:00:00:00:01:01"),
		HostMAC:    mac("02:00:00:00:02:02"),
		EndpointID: id,
		Flags:      0x5,
		Identity:   70000 + uint32(id),
	}
}

func load(t *testing.T, cfg Config) *Datapath {
	t.Helper()
	dp, err := Load(cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

func TestEndpointMap(t *testing.T) {
	testutil.Privileged(t)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, EndpointMapSize: 8})

	if got := dp.EndpointMapCapacity(); got != 8 {
		t.Errorf("EndpointMapCapacity() = %d, want 8", got)
	}
	ips := []netip.Addr{
		netip.MustParseAddr("10.1.0.20"),
		netip.MustParseAddr("10.1.0.3"),
		netip.MustParseAddr("10.1.0.100"),
	}
	for i, ip := range ips {
		if err := dp.UpsertEndpoint(ip, testEndpoint(uint32(10+i), uint16(i))); err != nil {
			t.Fatalf("UpsertEndpoint(%s): %v", ip, err)
		}
	}
	// Upsert replaces.
	if err := dp.UpsertEndpoint(ips[0], testEndpoint(42, 7)); err != nil {
		t.Fatalf("UpsertEndpoint(%s) again: %v", ips[0], err)
	}

	got, ok, err := dp.LookupEndpoint(ips[0])
	if err != nil || !ok {
		t.Fatalf("LookupEndpoint(%s) = %v, %v", ips[0], ok, err)
	}
	if diff := cmp.Diff(testEndpoint(42, 7), got); diff != "" {
		t.Errorf("LookupEndpoint(%s) (-want +got):\n%s", ips[0], diff)
	}
	// A 4in6 address is the same endpoint.
	if _, ok, err := dp.LookupEndpoint(netip.AddrFrom16(ips[0].As16())); err != nil || !ok {
		t.Errorf("LookupEndpoint(4in6 %s) = %v, %v; want found", ips[0], ok, err)
	}
	if _, ok, err := dp.LookupEndpoint(netip.MustParseAddr("10.9.9.9")); err != nil || ok {
		t.Errorf("LookupEndpoint(absent) = %v, %v; want not found, nil", ok, err)
	}

	list, err := dp.ListEndpoints()
	if err != nil {
		t.Fatalf("ListEndpoints: %v", err)
	}
	want := []EndpointEntry{
		{IP: ips[1], EndpointInfo: testEndpoint(11, 1)},
		{IP: ips[0], EndpointInfo: testEndpoint(42, 7)},
		{IP: ips[2], EndpointInfo: testEndpoint(12, 2)},
	}
	if diff := cmp.Diff(want, list, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ListEndpoints (-want +got):\n%s", diff)
	}

	if err := dp.DeleteEndpoint(ips[1]); err != nil {
		t.Fatalf("DeleteEndpoint(%s): %v", ips[1], err)
	}
	if err := dp.DeleteEndpoint(ips[1]); err != nil {
		t.Errorf("DeleteEndpoint(%s) of absent entry = %v, want nil", ips[1], err)
	}
	if _, ok, _ := dp.LookupEndpoint(ips[1]); ok {
		t.Errorf("LookupEndpoint(%s) after delete: found", ips[1])
	}

	v6 := netip.MustParseAddr("fd00::10")
	if err := dp.UpsertEndpoint(v6, testEndpoint(1, 1)); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "fd00::10") {
		t.Errorf("UpsertEndpoint(%s) = %v, want ErrNotSupported naming the IP", v6, err)
	}
	bad := testEndpoint(1, 1)
	bad.PodMAC = bad.PodMAC[:4]
	if err := dp.UpsertEndpoint(ips[1], bad); err == nil {
		t.Errorf("UpsertEndpoint with a 4-byte MAC succeeded")
	}
	if err := dp.UpsertEndpoint(netip.Addr{}, testEndpoint(1, 1)); err == nil {
		t.Errorf("UpsertEndpoint with a zero IP succeeded")
	}
}

func TestEndpointMapFull(t *testing.T) {
	testutil.Privileged(t)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, EndpointMapSize: 2})

	a, b, c := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.3"), netip.MustParseAddr("10.1.0.4")
	for _, ip := range []netip.Addr{a, b} {
		if err := dp.UpsertEndpoint(ip, testEndpoint(5, 1)); err != nil {
			t.Fatalf("UpsertEndpoint(%s): %v", ip, err)
		}
	}
	err := dp.UpsertEndpoint(c, testEndpoint(5, 1))
	if !errors.Is(err, ErrEndpointMapFull) {
		t.Fatalf("UpsertEndpoint(%s) into a full map = %v, want ErrEndpointMapFull", c, err)
	}
	for _, s := range []string{"10.1.0.4", "capacity 2", "full"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	// Replacing an existing entry still works when full.
	if err := dp.UpsertEndpoint(a, testEndpoint(6, 2)); err != nil {
		t.Errorf("UpsertEndpoint(%s) replacing in a full map: %v", a, err)
	}
}

func TestLoadReusesPinnedMap(t *testing.T) {
	testutil.Privileged(t)
	pinDir := testPinDir(t)
	ip := netip.MustParseAddr("10.1.0.5")

	dp1, err := Load(Config{PinDir: pinDir, RouterIPv4: routerIP, EndpointMapSize: 16})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if err := dp1.UpsertEndpoint(ip, testEndpoint(9, 3)); err != nil {
		t.Fatal(err)
	}
	if err := dp1.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(pinDir, "mbr_endpoints")); err != nil {
		t.Fatalf("map not pinned after Close: %v", err)
	}

	dp2 := load(t, Config{PinDir: pinDir, RouterIPv4: routerIP, EndpointMapSize: 16})
	got, ok, err := dp2.LookupEndpoint(ip)
	if err != nil || !ok {
		t.Fatalf("LookupEndpoint(%s) after reload = %v, %v; want found", ip, ok, err)
	}
	if diff := cmp.Diff(testEndpoint(9, 3), got); diff != "" {
		t.Errorf("endpoint after reload (-want +got):\n%s", diff)
	}

	// Another size would need a new map: refuse, naming map and pin.
	_, err = Load(Config{PinDir: pinDir, RouterIPv4: routerIP, EndpointMapSize: 32})
	if !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Fatalf("Load with another map size = %v, want ErrMapIncompatible", err)
	}
	for _, s := range []string{"mbr_endpoints", filepath.Join(pinDir, "mbr_endpoints")} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if _, ok, _ := dp2.LookupEndpoint(ip); !ok {
		t.Errorf("endpoint lost after refused incompatible load")
	}
}

func TestLoadRejectsNonBPFFS(t *testing.T) {
	testutil.Privileged(t)
	_, err := Load(Config{PinDir: t.TempDir(), RouterIPv4: routerIP})
	if err == nil || !strings.Contains(err.Error(), "not on a BPF filesystem") {
		t.Fatalf("Load on tmpfs = %v, want not on a BPF filesystem", err)
	}
}

// tcxIngress returns the program and link IDs attached at tcx ingress of ifindex.
func tcxIngress(t *testing.T, ifindex int) []link.AttachedProgram {
	t.Helper()
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		t.Fatalf("query tcx ingress of ifindex %d: %v", ifindex, err)
	}
	return res.Programs
}

func progID(t *testing.T, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func pinnedLinkID(t *testing.T, path string) link.ID {
	t.Helper()
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		t.Fatalf("load pinned link %s: %v", path, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

func TestAttachReattachDetach(t *testing.T) {
	testutil.Privileged(t)
	inTestNetns(t)
	pinDir := testPinDir(t)
	sfx := testutil.UniqueSuffix()
	lxc := addVeth(t, "lxc"+sfx, "pod"+sfx)
	hostPair := addVeth(t, "mbrn"+sfx, "mbrh"+sfx)
	lxcPin := filepath.Join(pinDir, "links", "lxc_"+lxc.name)
	hostPin := filepath.Join(pinDir, "links", "host_"+hostPair.name)

	// First agent: fresh attachments.
	dp1, err := Load(Config{PinDir: pinDir, RouterIPv4: routerIP})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp1.AttachEndpoint(lxc.name, lxc.index); err != nil {
		t.Fatalf("AttachEndpoint: %v", err)
	}
	if err := dp1.AttachHost(hostPair.name, hostPair.index); err != nil {
		t.Fatalf("AttachHost: %v", err)
	}
	linkID := pinnedLinkID(t, lxcPin)
	hostLinkID := pinnedLinkID(t, hostPin)
	if progs := tcxIngress(t, lxc.index); len(progs) != 1 || progs[0].ID != progID(t, dp1.objs.FromContainer) {
		t.Fatalf("tcx ingress of %s = %+v, want from_container of the first load", lxc.name, progs)
	}
	// Attaching again in the same process is idempotent.
	if err := dp1.AttachEndpoint(lxc.name, lxc.index); err != nil {
		t.Fatalf("AttachEndpoint again: %v", err)
	}
	if got := pinnedLinkID(t, lxcPin); got != linkID {
		t.Errorf("link ID after repeated attach = %d, want %d", got, linkID)
	}
	if err := dp1.Close(); err != nil {
		t.Fatal(err)
	}
	// Programs stay attached without the agent.
	if progs := tcxIngress(t, lxc.index); len(progs) != 1 {
		t.Fatalf("tcx ingress of %s after Close = %+v, want 1 program", lxc.name, progs)
	}

	// Restarted agent: the same links get the new programs.
	dp2 := load(t, Config{PinDir: pinDir, RouterIPv4: routerIP})
	if err := dp2.AttachEndpoint(lxc.name, lxc.index); err != nil {
		t.Fatalf("AttachEndpoint after restart: %v", err)
	}
	if err := dp2.AttachHost(hostPair.name, hostPair.index); err != nil {
		t.Fatalf("AttachHost after restart: %v", err)
	}
	if got := pinnedLinkID(t, lxcPin); got != linkID {
		t.Errorf("endpoint link ID after restart = %d, want %d (updated in place)", got, linkID)
	}
	if got := pinnedLinkID(t, hostPin); got != hostLinkID {
		t.Errorf("host link ID after restart = %d, want %d (updated in place)", got, hostLinkID)
	}
	progs := tcxIngress(t, lxc.index)
	if len(progs) != 1 || progs[0].ID != progID(t, dp2.objs.FromContainer) {
		t.Fatalf("tcx ingress of %s after restart = %+v, want only from_container of the second load", lxc.name, progs)
	}

	// The device is recreated under the same name: the pinned link is stale.
	l, err := netlink.LinkByName(lxc.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	lxc2 := addVeth(t, lxc.name, lxc.peer)
	if lxc2.index == lxc.index {
		t.Fatalf("recreated %s has the same ifindex %d", lxc.name, lxc.index)
	}
	if err := dp2.AttachEndpoint(lxc2.name, lxc2.index); err != nil {
		t.Fatalf("AttachEndpoint on recreated device: %v", err)
	}
	if got := pinnedLinkID(t, lxcPin); got == linkID {
		t.Errorf("link ID on recreated device = %d, want a new link", got)
	}
	if progs := tcxIngress(t, lxc2.index); len(progs) != 1 {
		t.Fatalf("tcx ingress of recreated %s = %+v, want 1 program", lxc2.name, progs)
	}

	// Detach removes the pin and the program; detaching again is fine.
	if err := dp2.DetachEndpoint(lxc2.name); err != nil {
		t.Fatalf("DetachEndpoint: %v", err)
	}
	if _, err := os.Stat(lxcPin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link pin %s after detach: %v, want not exist", lxcPin, err)
	}
	if progs := tcxIngress(t, lxc2.index); len(progs) != 0 {
		t.Errorf("tcx ingress of %s after detach = %+v, want none", lxc2.name, progs)
	}
	if err := dp2.DetachEndpoint(lxc2.name); err != nil {
		t.Errorf("DetachEndpoint of detached endpoint = %v, want nil", err)
	}
	if err := dp2.DetachEndpoint("nosuch0"); err != nil {
		t.Errorf("DetachEndpoint of unknown endpoint = %v, want nil", err)
	}
}

func TestUnpin(t *testing.T) {
	testutil.Privileged(t)
	inTestNetns(t)
	pinDir := testPinDir(t)
	sfx := testutil.UniqueSuffix()
	lxc := addVeth(t, "lxc"+sfx, "pod"+sfx)
	hostPair := addVeth(t, "mbrn"+sfx, "mbrh"+sfx)

	dp, err := Load(Config{PinDir: pinDir, RouterIPv4: routerIP})
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.AttachEndpoint(lxc.name, lxc.index); err != nil {
		t.Fatal(err)
	}
	if err := dp.AttachHost(hostPair.name, hostPair.index); err != nil {
		t.Fatal(err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}

	if err := Unpin(pinDir); err != nil {
		t.Fatalf("Unpin: %v", err)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir after Unpin: %v, want not exist", err)
	}
	for _, v := range []veth{lxc, hostPair} {
		if progs := tcxIngress(t, v.index); len(progs) != 0 {
			t.Errorf("tcx ingress of %s after Unpin = %+v, want none", v.name, progs)
		}
	}
	if err := Unpin(pinDir); err != nil {
		t.Errorf("Unpin of missing dir = %v, want nil", err)
	}
	if err := Unpin("/sys/fs/bpf"); err == nil {
		t.Errorf("Unpin of the bpffs mount point succeeded")
	}
}
