package endpoint

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/link"
	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/ipam"
)

// fakeOS records what the manager asks of the kernel as text lines and
// keeps enough state to answer lookups.
type fakeOS struct {
	ops      []string
	links    map[string]int // host ifname → ifindex
	entries  map[netip.Addr]loader.EndpointInfo
	attached map[string]int
	next     int
	failOn   string // op prefix that fails once
}

func newFakeOS() *fakeOS {
	return &fakeOS{links: map[string]int{}, entries: map[netip.Addr]loader.EndpointInfo{}, attached: map[string]int{}, next: 10}
}

func (f *fakeOS) op(s string) error {
	f.ops = append(f.ops, s)
	if f.failOn != "" && strings.HasPrefix(s, f.failOn) {
		f.failOn = ""
		return fmt.Errorf("injected failure: %s", s)
	}
	return nil
}

func (f *fakeOS) CreateVeth(r link.VethRequest) (link.VethResult, error) {
	if err := f.op(fmt.Sprintf("ip link add %s netns %s peer %s addr %s via %s mtu %d", r.HostIfName, r.Netns, r.IfName, r.Addr, r.Router, r.MTU)); err != nil {
		return link.VethResult{}, err
	}
	f.next++
	f.links[r.HostIfName] = f.next
	return link.VethResult{HostIfIndex: f.next, HostMAC: net.HardwareAddr{2, 0, 0, 0, 0, byte(f.next)}, PodMAC: net.HardwareAddr{2, 1, 0, 0, 0, byte(f.next)}}, nil
}
func (f *fakeOS) DeleteVeth(n string) error {
	if err := f.op("ip link del " + n); err != nil {
		return err
	}
	delete(f.links, n)
	return nil
}
func (f *fakeOS) HostLink(n string) (int, net.HardwareAddr, bool, error) {
	i, ok := f.links[n]
	return i, net.HardwareAddr{2, 0, 0, 0, 0, byte(i)}, ok, nil
}
func (f *fakeOS) CheckVeth(r link.VethRequest) error {
	if _, ok := f.links[r.HostIfName]; !ok {
		return fmt.Errorf("check: %s missing", r.HostIfName)
	}
	return nil
}
func (f *fakeOS) AttachEndpoint(n string, i int) error {
	if err := f.op(fmt.Sprintf("bpf attach %s ifindex %d", n, i)); err != nil {
		return err
	}
	f.attached[n] = i
	return nil
}
func (f *fakeOS) DetachEndpoint(n string) error {
	delete(f.attached, n)
	return f.op("bpf detach " + n)
}
func (f *fakeOS) UpsertEndpoint(a netip.Addr, i loader.EndpointInfo) error {
	if err := f.op(fmt.Sprintf("bpf map endpoints set %s ifindex %d id %d", a, i.IfIndex, i.EndpointID)); err != nil {
		return err
	}
	f.entries[a] = i
	return nil
}
func (f *fakeOS) DeleteEndpoint(a netip.Addr) error {
	delete(f.entries, a)
	return f.op("bpf map endpoints del " + a.String())
}
func (f *fakeOS) LookupEndpoint(a netip.Addr) (loader.EndpointInfo, bool, error) {
	i, ok := f.entries[a]
	return i, ok, nil
}

type rig struct {
	m     *Manager
	os    *fakeOS
	store *ipam.MemStore
	alloc *ipam.HostScope
	dir   string
	netns string
}

func newRig(t *testing.T, pool string) *rig {
	t.Helper()
	dir := t.TempDir()
	netns := filepath.Join(dir, "netns-a")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r := &rig{os: newFakeOS(), store: ipam.NewMemStore(), dir: dir, netns: netns}
	r.restart(t, pool)
	return r
}

func (r *rig) restart(t *testing.T, pool string) {
	t.Helper()
	p := netip.MustParsePrefix(pool)
	alloc, err := ipam.NewHostScope(context.Background(), p, r.store)
	if err != nil {
		t.Fatal(err)
	}
	r.alloc = alloc
	m, err := NewManager(Config{StateDir: r.dir, Router: ipam.RouterAddr(p), MTU: 1500,
		Logger: slog.New(slog.DiscardHandler), Now: func() time.Time { return time.Unix(0, 0) }}, alloc, r.os, r.os)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.m = m
}

func (r *rig) add(t *testing.T, cid string) api.CNIAddResponse {
	t.Helper()
	resp, err := r.m.Add(context.Background(), api.CNIAddRequest{ContainerID: cid, Netns: r.netns, IfName: "eth0", Namespace: "ns1", PodName: "pod-" + cid})
	if err != nil {
		t.Fatalf("add %s: %v", cid, err)
	}
	return resp
}

func TestAddDelRendersKernelOps(t *testing.T) {
	r := newRig(t, "10.10.0.0/24")
	resp := r.add(t, "c1")
	if resp.Address.String() != "10.10.0.2/32" || resp.Gateway.String() != "10.10.0.1" {
		t.Errorf("response address %s gateway %s", resp.Address, resp.Gateway)
	}
	hostIf := link.HostIfName("c1", "eth0")
	// ADD is idempotent: no further kernel operation.
	if again := r.add(t, "c1"); again.Endpoint.ID != resp.Endpoint.ID {
		t.Errorf("second ADD returned endpoint %d, want %d", again.Endpoint.ID, resp.Endpoint.ID)
	}
	if err := r.m.Del(context.Background(), api.CNIDelRequest{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	// DEL of an unknown attachment succeeds and touches nothing.
	if err := r.m.Del(context.Background(), api.CNIDelRequest{ContainerID: "c1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ip link add " + hostIf + " netns " + r.netns + " peer eth0 addr 10.10.0.2/32 via 10.10.0.1 mtu 1500",
		"bpf attach " + hostIf + " ifindex 11",
		"bpf map endpoints set 10.10.0.2 ifindex 11 id 1",
		"bpf map endpoints del 10.10.0.2",
		"bpf detach " + hostIf,
		"ip link del " + hostIf,
	}
	if d := cmp.Diff(want, r.os.ops); d != "" {
		t.Errorf("kernel ops (-want +got):\n%s", d)
	}
	if n := len(r.alloc.Allocations()); n != 0 {
		t.Errorf("%d addresses still allocated after DEL", n)
	}
	if files, _ := filepath.Glob(filepath.Join(r.dir, "endpoints", "*.json")); len(files) != 0 {
		t.Errorf("state files left after DEL: %v", files)
	}
}

func TestAddFailureRollsBack(t *testing.T) {
	for _, failOn := range []string{"ip link add", "bpf attach", "bpf map endpoints set"} {
		t.Run(failOn, func(t *testing.T) {
			r := newRig(t, "10.10.0.0/24")
			r.os.failOn = failOn
			_, err := r.m.Add(context.Background(), api.CNIAddRequest{ContainerID: "c1", Netns: r.netns, IfName: "eth0"})
			if err == nil {
				t.Fatal("ADD succeeded despite injected failure")
			}
			if n := len(r.alloc.Allocations()); n != 0 {
				t.Errorf("address leaked: %v", r.alloc.Allocations())
			}
			if len(r.os.links) != 0 || len(r.os.entries) != 0 || len(r.os.attached) != 0 {
				t.Errorf("kernel state leaked: links %v entries %v attached %v", r.os.links, r.os.entries, r.os.attached)
			}
			if r.m.Count() != 0 {
				t.Errorf("endpoint recorded after failed ADD")
			}
		})
	}
}

func TestAddInvalidInputChangesNothing(t *testing.T) {
	r := newRig(t, "10.10.0.0/24")
	for _, tc := range []struct {
		name string
		req  api.CNIAddRequest
	}{
		{"empty container", api.CNIAddRequest{Netns: r.netns, IfName: "eth0"}},
		{"bad container", api.CNIAddRequest{ContainerID: "a b", Netns: r.netns, IfName: "eth0"}},
		{"relative netns", api.CNIAddRequest{ContainerID: "c", Netns: "netns", IfName: "eth0"}},
		{"missing netns", api.CNIAddRequest{ContainerID: "c", Netns: "/nonexistent/ns", IfName: "eth0"}},
		{"long ifname", api.CNIAddRequest{ContainerID: "c", Netns: r.netns, IfName: "abcdefghijklmnop"}},
		{"bad label", api.CNIAddRequest{ContainerID: "c", Netns: r.netns, IfName: "eth0", Labels: map[string]string{"-x": "y"}}},
		{"bad port", api.CNIAddRequest{ContainerID: "c", Netns: r.netns, IfName: "eth0", Ports: []api.NamedPort{{Name: "http", Port: 80, Protocol: "ICMP"}}}},
		{"dup port", api.CNIAddRequest{ContainerID: "c", Netns: r.netns, IfName: "eth0", Ports: []api.NamedPort{{Name: "a", Port: 80}, {Name: "a", Port: 81}}}},
		{"bad mtu", api.CNIAddRequest{ContainerID: "c", Netns: r.netns, IfName: "eth0", MTU: 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := r.m.Add(context.Background(), tc.req)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
		})
	}
	if len(r.os.ops) != 0 || len(r.alloc.Allocations()) != 0 {
		t.Errorf("invalid input changed state: ops %v allocations %v", r.os.ops, r.alloc.Allocations())
	}
}

func TestExhaustedPool(t *testing.T) {
	r := newRig(t, "10.10.0.0/30") // one usable address
	r.add(t, "c1")
	_, err := r.m.Add(context.Background(), api.CNIAddRequest{ContainerID: "c2", Netns: r.netns, IfName: "eth0"})
	if !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
	if len(r.os.links) != 1 {
		t.Errorf("links = %v, want only c1's", r.os.links)
	}
}

func TestRestore(t *testing.T) {
	r := newRig(t, "10.10.0.0/24")
	a := r.add(t, "c1")
	b := r.add(t, "c2")
	// c2's interface disappears while the agent is down.
	delete(r.os.links, b.Endpoint.HostIfName)
	r.os.ops = nil
	r.restart(t, "10.10.0.0/24")

	eps := r.m.List()
	if len(eps) != 1 || eps[0].ContainerID != "c1" || eps[0].IPv4 != a.Endpoint.IPv4 {
		t.Fatalf("restored endpoints = %+v, want only c1", eps)
	}
	got := r.alloc.Allocations()
	if len(got) != 1 || got[a.Endpoint.IPv4] != "c1/eth0" {
		t.Errorf("allocations after restore = %v", got)
	}
	hostIf := a.Endpoint.HostIfName
	want := []string{
		"bpf attach " + hostIf + " ifindex 11",
		"bpf map endpoints set 10.10.0.2 ifindex 11 id 1",
		"bpf map endpoints del " + b.Endpoint.IPv4.String(),
		"bpf detach " + b.Endpoint.HostIfName,
	}
	if d := cmp.Diff(want, r.os.ops); d != "" {
		t.Errorf("restore ops (-want +got):\n%s", d)
	}
	// A new endpoint does not reuse c1's address or id.
	c := r.add(t, "c3")
	if c.Endpoint.IPv4 == a.Endpoint.IPv4 || c.Endpoint.ID == a.Endpoint.ID {
		t.Errorf("c3 got %s id %d, clashing with c1", c.Endpoint.IPv4, c.Endpoint.ID)
	}
}

func TestRestoreKeepsUnreadableState(t *testing.T) {
	r := newRig(t, "10.10.0.0/24")
	bad := filepath.Join(r.dir, "endpoints", "7.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := r.m.Restore(context.Background())
	if err == nil || !strings.Contains(err.Error(), "7.json") {
		t.Fatalf("restore error = %v, want one naming 7.json", err)
	}
	if _, err := os.Stat(bad); err != nil {
		t.Fatalf("unreadable state file was removed: %v", err)
	}
}

func TestGCReleasesStaleAndLeaked(t *testing.T) {
	r := newRig(t, "10.10.0.0/24")
	r.add(t, "keep")
	gone := r.add(t, "gone")
	// A leaked allocation: owner without endpoint.
	leaked, err := r.alloc.Allocate(context.Background(), "crashed/eth0")
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.m.GC(context.Background(), api.CNIGCRequest{Valid: []api.Attachment{{ContainerID: "keep", IfName: "eth0"}}})
	if err != nil {
		t.Fatal(err)
	}
	wantIPs := []netip.Addr{gone.Endpoint.IPv4, leaked}
	if d := cmp.Diff(wantIPs, out.ReleasedIPs, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("released (-want +got):\n%s", d)
	}
	if len(out.RemovedEndpoints) != 1 || out.RemovedEndpoints[0].ContainerID != "gone" {
		t.Errorf("removed endpoints = %v", out.RemovedEndpoints)
	}
	if r.m.Count() != 1 || len(r.alloc.Allocations()) != 1 {
		t.Errorf("after GC: %d endpoints, allocations %v", r.m.Count(), r.alloc.Allocations())
	}
}

func TestGetAndPatch(t *testing.T) {
	r := newRig(t, "10.10.0.0/24")
	a := r.add(t, "c1")
	for _, ref := range []string{"1", "c1", "ns1/pod-c1", "pod-c1", "10.10.0.2"} {
		ep, err := r.m.Get(ref)
		if err != nil || ep.ID != a.Endpoint.ID {
			t.Errorf("Get(%q) = %d, %v", ref, ep.ID, err)
		}
	}
	if _, err := r.m.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(nope) err = %v", err)
	}
	labels := map[string]string{"app": "web", "app.kubernetes.io/tier": "fe"}
	ports := []api.NamedPort{{Name: "http", Port: 80}}
	ep, err := r.m.Patch("1", api.EndpointPatch{Labels: &labels, Ports: &ports})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Labels["app"] != "web" || ep.Ports[0].Protocol != "TCP" {
		t.Errorf("patched endpoint = %+v", ep)
	}
	bad := map[string]string{"app": "-bad-"}
	if _, err := r.m.Patch("1", api.EndpointPatch{Labels: &bad}); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad patch err = %v", err)
	}
	// Survives a restart.
	r.restart(t, "10.10.0.0/24")
	ep, _ = r.m.Get("1")
	if ep.Labels["app.kubernetes.io/tier"] != "fe" || len(ep.Ports) != 1 {
		t.Errorf("after restart endpoint = %+v", ep)
	}
}
