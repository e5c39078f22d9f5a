package loader

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/testutil"
)

func TestPolicyKeyEncoding(t *testing.T) {
	for _, tc := range []struct {
		key     PolicyKey
		plen    uint32
		wantErr string
	}{
		{PolicyKey{Identity: 256, Egress: true}, 40, ""},
		{PolicyKey{Identity: 0, Proto: protoTCP}, 48, ""},
		{PolicyKey{Identity: 1 << 24, Proto: protoTCP, Port: 80, PortPrefixLen: 16}, 64, ""},
		{PolicyKey{Identity: 300, Proto: protoUDP, Port: 8080, PortPrefixLen: 14}, 62, ""},
		{PolicyKey{Proto: 0, Port: 80, PortPrefixLen: 16}, 0, "needs a protocol"},
		{PolicyKey{Proto: protoTCP, Port: 80, PortPrefixLen: 17}, 0, "exceeds 16"},
		{PolicyKey{Proto: protoTCP, Port: 8083, PortPrefixLen: 14}, 0, "bits set beyond"},
		{PolicyKey{Proto: protoTCP, Port: 80}, 0, "bits set beyond"},
	} {
		t.Run(tc.key.String(), func(t *testing.T) {
			enc, err := tc.key.encode()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("encode() = %v, want error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if enc.Prefixlen != tc.plen {
				t.Errorf("prefixlen = %d, want %d", enc.Prefixlen, tc.plen)
			}
			dec, err := decodePolicyKey(enc)
			if err != nil || dec != tc.key {
				t.Errorf("decode(encode(%v)) = %v, %v", tc.key, dec, err)
			}
		})
	}
}

func TestDropReasonString(t *testing.T) {
	for r, want := range map[DropReason]string{
		Forwarded: "forwarded", DropPolicyDenied: "policy denied", DropPolicyNoRule: "policy no rule",
		DropCTMapFull: "conntrack map full", DropUnsupportedL3: "unsupported L3 protocol", 200: "reason 200",
	} {
		if got := r.String(); got != want {
			t.Errorf("DropReason(%d).String() = %q, want %q", uint8(r), got, want)
		}
	}
}

// policyMapID returns the id of endpoint epID's policy map, 0 if none.
func policyMapID(t *testing.T, dp *Datapath, epID uint16) ebpf.MapID {
	t.Helper()
	m, err := dp.endpointPolicyMap(epID)
	if err != nil {
		t.Fatal(err)
	}
	if m == nil {
		return 0
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

func TestSetEndpointPolicy(t *testing.T) {
	testutil.Privileged(t)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, EndpointMapSize: 8,
		PolicyMapSize: 4, CTTCPSize: 64, CTAnySize: 64})
	const ep = 3
	k := func(id uint32, port uint16) PolicyKey {
		return PolicyKey{Identity: id, Egress: true, Proto: protoTCP, Port: port, PortPrefixLen: 16}
	}
	get := func() map[PolicyKey]PolicyValue {
		t.Helper()
		got, err := dp.EndpointPolicy(ep)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	set := func(p map[PolicyKey]PolicyValue) {
		t.Helper()
		if err := dp.SetEndpointPolicy(ep, p); err != nil {
			t.Fatalf("SetEndpointPolicy: %v", err)
		}
		if diff := cmp.Diff(p, get()); diff != "" {
			t.Fatalf("EndpointPolicy after set (-want +got):\n%s", diff)
		}
	}

	if got := get(); len(got) != 0 {
		t.Fatalf("EndpointPolicy of endpoint without policy = %v, want empty", got)
	}

	// Create.
	p1 := map[PolicyKey]PolicyValue{k(256, 80): {Cookie: 1}, k(257, 80): {Cookie: 2}, k(0, 443): {Cookie: 3}}
	set(p1)
	id := policyMapID(t, dp, ep)

	// Diff in place: update one, delete one, add one, keep one.
	p2 := map[PolicyKey]PolicyValue{k(256, 80): {Deny: true, Cookie: 4}, k(0, 443): {Cookie: 3}, k(258, 22): {Cookie: 5}}
	set(p2)
	if got := policyMapID(t, dp, ep); got != id {
		t.Errorf("policy map id after in-place diff = %d, want %d (same map)", got, id)
	}
	// Idempotent.
	set(p2)

	// Too many entries: refused, map unchanged.
	p5 := map[PolicyKey]PolicyValue{k(1, 1): {}, k(1, 2): {}, k(1, 3): {}, k(1, 4): {}, k(1, 5): {}}
	err := dp.SetEndpointPolicy(ep, p5)
	if !errors.Is(err, ErrPolicyMapFull) {
		t.Fatalf("SetEndpointPolicy with 5 entries into capacity 4 = %v, want ErrPolicyMapFull", err)
	}
	for _, s := range []string{"endpoint 3", "5 entries", "capacity 4"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if diff := cmp.Diff(p2, get()); diff != "" {
		t.Errorf("policy after refused set (-want +got):\n%s", diff)
	}

	// Fits, but not beside the old entries: a new map is swapped in.
	p4 := map[PolicyKey]PolicyValue{k(1, 1): {}, k(1, 2): {}, k(1, 3): {}, k(1, 4): {}}
	set(p4)
	if got := policyMapID(t, dp, ep); got == id || got == 0 {
		t.Errorf("policy map id after overflowing diff = %d, want a new map (old %d)", got, id)
	}

	// Invalid key: refused, map unchanged.
	if err := dp.SetEndpointPolicy(ep, map[PolicyKey]PolicyValue{{Port: 80, PortPrefixLen: 16}: {}}); err == nil {
		t.Errorf("SetEndpointPolicy with a port but no protocol succeeded")
	}
	if diff := cmp.Diff(p4, get()); diff != "" {
		t.Errorf("policy after invalid set (-want +got):\n%s", diff)
	}

	// Empty policy keeps an (empty) map: enforced directions allow nothing.
	set(map[PolicyKey]PolicyValue{})
	if policyMapID(t, dp, ep) == 0 {
		t.Errorf("no policy map after setting an empty policy")
	}

	if err := dp.DeleteEndpointPolicy(ep); err != nil {
		t.Fatal(err)
	}
	if got := policyMapID(t, dp, ep); got != 0 {
		t.Errorf("policy map %d after delete", got)
	}
	if err := dp.DeleteEndpointPolicy(ep); err != nil {
		t.Errorf("DeleteEndpointPolicy of absent policy = %v, want nil", err)
	}
}

// TestPolicySurvivesRestart checks that the policy maps live in the pinned
// outer map, and that a map of an older capacity is replaced on the next
// set after a size change.
func TestPolicySurvivesRestart(t *testing.T) {
	testutil.Privileged(t)
	pinDir := testPinDir(t)
	cfg := Config{PinDir: pinDir, RouterIPv4: routerIP, EndpointMapSize: 8, PolicyMapSize: 4, CTTCPSize: 64, CTAnySize: 64}
	p := map[PolicyKey]PolicyValue{{Identity: 256, Proto: protoTCP}: {Cookie: 1}}

	dp1, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp1.SetEndpointPolicy(5, p); err != nil {
		t.Fatal(err)
	}
	dp1.Close()

	cfg.PolicyMapSize = 8
	dp2 := load(t, cfg)
	got, err := dp2.EndpointPolicy(5)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(p, got); diff != "" {
		t.Errorf("policy after restart (-want +got):\n%s", diff)
	}
	if err := dp2.SetEndpointPolicy(5, p); err != nil {
		t.Fatal(err)
	}
	usage, err := dp2.MapPressure()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(usage, func(u MapUsage) bool { return u.Name == "mbr_policy/5" })
	if i < 0 || usage[i] != (MapUsage{Name: "mbr_policy/5", Entries: 1, Capacity: 8}) {
		t.Errorf("MapPressure = %+v, want mbr_policy/5 with 1 of 8", usage)
	}
}

func TestIPCache(t *testing.T) {
	testutil.Privileged(t)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, IPCacheSize: 4, CTTCPSize: 64, CTAnySize: 64})
	entries := []IPCacheEntry{
		{Prefix: netip.MustParsePrefix("10.1.0.10/32"), Identity: 300, CIDRIdentity: 1<<24 | 1},
		{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Identity: 1<<24 | 1, CIDRIdentity: 1<<24 | 1},
		{Prefix: netip.MustParsePrefix("fd00::/64"), Identity: 1<<24 | 2, CIDRIdentity: 1<<24 | 2},
	}
	for _, e := range entries {
		if err := dp.UpsertIPCache(e); err != nil {
			t.Fatalf("UpsertIPCache(%+v): %v", e, err)
		}
	}
	got, err := dp.ListIPCache()
	if err != nil {
		t.Fatal(err)
	}
	want := []IPCacheEntry{entries[1], entries[0], entries[2]}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("ListIPCache (-want +got):\n%s", diff)
	}

	for _, bad := range []IPCacheEntry{
		{Prefix: netip.MustParsePrefix("10.1.2.3/8"), Identity: 5},
		{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Identity: 0},
		{Identity: 5},
	} {
		if err := dp.UpsertIPCache(bad); err == nil {
			t.Errorf("UpsertIPCache(%+v) succeeded", bad)
		}
	}
	if err := dp.UpsertIPCache(IPCacheEntry{Prefix: netip.MustParsePrefix("10.2.0.0/16"), Identity: 9}); err != nil {
		t.Fatal(err)
	}
	err = dp.UpsertIPCache(IPCacheEntry{Prefix: netip.MustParsePrefix("10.3.0.0/16"), Identity: 9})
	if !errors.Is(err, ErrIPCacheFull) {
		t.Errorf("UpsertIPCache into a full ipcache = %v, want ErrIPCacheFull", err)
	}

	if err := dp.DeleteIPCache(entries[1].Prefix); err != nil {
		t.Fatal(err)
	}
	if err := dp.DeleteIPCache(entries[1].Prefix); err != nil {
		t.Errorf("DeleteIPCache of absent prefix = %v, want nil", err)
	}
	if got, _ := dp.ListIPCache(); len(got) != 3 {
		t.Errorf("ListIPCache after delete = %v, want 3 entries", got)
	}
}

// TestConntrack drives a TCP connection through its states with
// BPF_PROG_RUN and checks lifetimes, GC and flush.
func TestConntrack(t *testing.T) {
	testutil.Privileged(t)
	ns := inTestNetns(t)
	_ = ns
	sfx := testutil.UniqueSuffix()
	lxcA := addVeth(t, "lxca"+sfx, "poda"+sfx)
	lxcB := addVeth(t, "lxcb"+sfx, "podb"+sfx)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, CTTCPSize: 64, CTAnySize: 64,
		CTTimeouts: CTTimeouts{TCPSyn: 5 * time.Second, TCPEstablished: time.Hour, Any: 30 * time.Second}})
	for _, e := range []EndpointEntry{
		{IP: ipA, EndpointInfo: EndpointInfo{IfIndex: uint32(lxcA.index), PodMAC: lxcA.peerMAC, HostMAC: lxcA.mac, EndpointID: 1, Identity: idA}},
		{IP: ipB, EndpointInfo: EndpointInfo{IfIndex: uint32(lxcB.index), PodMAC: lxcB.peerMAC, HostMAC: lxcB.mac, EndpointID: 2, Identity: idB}},
	} {
		if err := dp.UpsertEndpoint(e.IP, e.EndpointInfo); err != nil {
			t.Fatal(err)
		}
	}
	run := func(ifindex int, pkt []byte) {
		t.Helper()
		opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256), Context: skbContext{Ifindex: uint32(ifindex)}}
		if v, err := dp.objs.FromContainer.Run(opts); err != nil || v != tcActRedirect {
			t.Fatalf("run = %d, %v; want redirect", v, err)
		}
	}
	one := func() CTEntry {
		t.Helper()
		ct, err := dp.ListCT()
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != 1 {
			t.Fatalf("ListCT = %+v, want one entry", ct)
		}
		return ct[0]
	}
	a := func(flags uint8) []byte {
		return ipv4Pkt(lxcA.mac, lxcA.peerMAC, ipA, ipB, protoTCP, tcpSeg(40000, 80, flags))
	}
	b := func(flags uint8) []byte {
		return ipv4Pkt(lxcB.mac, lxcB.peerMAC, ipB, ipA, protoTCP, tcpSeg(80, 40000, flags))
	}
	within := func(what string, got, lo, hi time.Duration) {
		t.Helper()
		if got <= lo || got > hi {
			t.Errorf("%s: expires in %s, want in (%s, %s]", what, got, lo, hi)
		}
	}

	run(lxcA.index, a(tcpSYN))
	e := one()
	within("after SYN", e.Expires, 4*time.Second, 5*time.Second)
	if e.SeenReply || e.Closing || e.SrcIdentity != idA || e.Packets != 1 {
		t.Errorf("after SYN: %+v", e)
	}
	run(lxcB.index, b(tcpSYN|tcpACK))
	e = one()
	within("after SYN-ACK", e.Expires, 59*time.Minute, time.Hour)
	if !e.SeenReply || e.Packets != 2 {
		t.Errorf("after SYN-ACK: %+v", e)
	}
	run(lxcA.index, a(tcpFIN|tcpACK))
	e = one()
	within("after one FIN (half-close)", e.Expires, 59*time.Minute, time.Hour)
	if !e.Closing {
		t.Errorf("after FIN: not closing: %+v", e)
	}
	run(lxcB.index, b(tcpFIN|tcpACK))
	within("after both FINs", one().Expires, 9*time.Second, 10*time.Second)

	// GC: only expired entries go.
	seedCT(t, dp, ctSeed{protoUDP, ap(ipA, 1), ap(ipB, 2), -time.Second, idA})
	seedCT(t, dp, ctSeed{protoTCP, ap(ipA, 3), ap(ipB, 4), -time.Millisecond, idA})
	seedCT(t, dp, ctSeed{protoUDP, ap(ipA, 5), ap(ipB, 6), time.Minute, idA})
	n, err := dp.GCCT()
	if err != nil || n != 2 {
		t.Errorf("GCCT = %d, %v; want 2", n, err)
	}
	ct, err := dp.ListCT()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ct {
		left = append(left, e.Src.String()+">"+e.Dst.String())
	}
	if want := []string{"10.1.0.10:40000>10.1.0.11:80", "10.1.0.10:5>10.1.0.11:6"}; !slices.Equal(left, want) {
		t.Errorf("conntrack after GC = %v, want %v", left, want)
	}

	n, err = dp.FlushCT()
	if err != nil || n != 2 {
		t.Errorf("FlushCT = %d, %v; want 2", n, err)
	}
	if ct, _ := dp.ListCT(); len(ct) != 0 {
		t.Errorf("conntrack after flush = %+v", ct)
	}

	// An RST closes at once.
	run(lxcA.index, a(tcpSYN))
	run(lxcB.index, b(tcpRST|tcpACK))
	if e := one(); !e.Closing {
		t.Errorf("after RST: not closing: %+v", e)
	}
}

func TestMapPressureAndMetrics(t *testing.T) {
	testutil.Privileged(t)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, EndpointMapSize: 8, IPCacheSize: 16,
		PolicyMapSize: 4, CTTCPSize: 32, CTAnySize: 16})
	if err := dp.UpsertEndpoint(ipA, testEndpoint(3, 1)); err != nil {
		t.Fatal(err)
	}
	if err := dp.UpsertIPCache(IPCacheEntry{Prefix: netip.PrefixFrom(ipA, 32), Identity: 300}); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetEndpointPolicy(1, map[PolicyKey]PolicyValue{{Identity: 1}: {}, {Identity: 2}: {}}); err != nil {
		t.Fatal(err)
	}
	seedCT(t, dp, ctSeed{protoUDP, ap(ipA, 1), ap(ipB, 2), time.Minute, 300})

	got, err := dp.MapPressure()
	if err != nil {
		t.Fatal(err)
	}
	want := []MapUsage{
		{"mbr_endpoints", 1, 8},
		{"mbr_ipcache", 1, 16},
		{"mbr_tunnel", 0, 65536},
		{"mbr_policy", 1, 8},
		{"mbr_ct_tcp", 0, 32},
		{"mbr_ct_any", 1, 16},
		{"mbr_metrics", 0, 512},
		{"mbr_policy/1", 2, 4},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("MapPressure (-want +got):\n%s", diff)
	}

	m, err := dp.Metrics()
	if err != nil || len(m) != 0 {
		t.Errorf("Metrics of a fresh datapath = %v, %v; want empty", m, err)
	}
}

// TestLoadRejectsResizedMaps checks that every sized map refuses a pin of
// another size, naming it, rather than replacing it.
func TestLoadRejectsResizedMaps(t *testing.T) {
	testutil.Privileged(t)
	pinDir := testPinDir(t)
	cfg := Config{PinDir: pinDir, RouterIPv4: routerIP, IPCacheSize: 16, CTTCPSize: 32, CTAnySize: 16}
	dp := load(t, cfg)
	dp.Close()
	for _, tc := range []struct {
		name string
		mod  func(*Config)
	}{
		{"mbr_ipcache", func(c *Config) { c.IPCacheSize = 32 }},
		{"mbr_ct_tcp", func(c *Config) { c.CTTCPSize = 64 }},
		{"mbr_ct_any", func(c *Config) { c.CTAnySize = 64 }},
	} {
		c := cfg
		tc.mod(&c)
		_, err := Load(c)
		if !errors.Is(err, ebpf.ErrMapIncompatible) || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("Load with resized %s = %v, want ErrMapIncompatible naming it", tc.name, err)
		}
	}
	load(t, cfg) // the original config still loads
}
