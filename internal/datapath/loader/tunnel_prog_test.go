package loader

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/testutil"
)

var (
	remoteCIDR = netip.MustParsePrefix("10.2.0.0/24") // a pod CIDR of another node
	remotePod  = netip.MustParseAddr("10.2.0.5")
	remoteNode = netip.MustParseAddr("172.30.0.12")
	overlayMAC = mac("02:6d:62:72:00:01") // MBR_OVERLAY_MAC of bpf/include/tunnel.h
)

func TestTunnelMap(t *testing.T) {
	testutil.Privileged(t)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, TunnelMapSize: 2})
	for _, e := range []TunnelEntry{
		{PodCIDR: netip.MustParsePrefix("10.3.0.0/24"), NodeIP: netip.MustParseAddr("172.30.0.13")},
		{PodCIDR: remoteCIDR, NodeIP: remoteNode},
		{PodCIDR: remoteCIDR, NodeIP: netip.MustParseAddr("::ffff:172.30.0.14")}, // replaces, unmapped
	} {
		if err := dp.UpsertTunnel(e); err != nil {
			t.Fatalf("UpsertTunnel(%+v): %v", e, err)
		}
	}
	got, err := dp.ListTunnels()
	if err != nil {
		t.Fatal(err)
	}
	want := []TunnelEntry{
		{PodCIDR: remoteCIDR, NodeIP: netip.MustParseAddr("172.30.0.14")},
		{PodCIDR: netip.MustParsePrefix("10.3.0.0/24"), NodeIP: netip.MustParseAddr("172.30.0.13")},
	}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ListTunnels (-want +got):\n%s", diff)
	}

	err = dp.UpsertTunnel(TunnelEntry{PodCIDR: netip.MustParsePrefix("10.4.0.0/24"), NodeIP: remoteNode})
	if !errors.Is(err, ErrTunnelMapFull) {
		t.Errorf("UpsertTunnel beyond capacity = %v, want ErrTunnelMapFull", err)
	}
	for _, bad := range []TunnelEntry{
		{PodCIDR: netip.MustParsePrefix("10.2.0.1/24"), NodeIP: remoteNode}, // host bits
		{PodCIDR: remoteCIDR}, // no node IP
		{PodCIDR: remoteCIDR, NodeIP: netip.MustParseAddr("0.0.0.0")},     // unspecified
		{PodCIDR: remoteCIDR, NodeIP: netip.MustParseAddr("2001:db8::1")}, // IPv6 underlay
		{NodeIP: remoteNode}, // no prefix
		{PodCIDR: netip.MustParsePrefix("::ffff:10.2.0.0/120"), NodeIP: remoteNode}, // mapped prefix
	} {
		if err := dp.UpsertTunnel(bad); err == nil {
			t.Errorf("UpsertTunnel(%+v) succeeded", bad)
		}
	}
	if err := dp.UpsertTunnel(TunnelEntry{PodCIDR: remoteCIDR, NodeIP: netip.MustParseAddr("2001:db8::1")}); !errors.Is(err, ErrNotSupported) {
		t.Errorf("UpsertTunnel with an IPv6 node = %v, want ErrNotSupported", err)
	}

	for _, p := range []netip.Prefix{remoteCIDR, remoteCIDR, netip.MustParsePrefix("10.3.0.0/24")} {
		if err := dp.DeleteTunnel(p); err != nil { // the second delete is of a missing entry
			t.Fatalf("DeleteTunnel(%s): %v", p, err)
		}
	}
	if got, err := dp.ListTunnels(); err != nil || len(got) != 0 {
		t.Errorf("ListTunnels after deleting all = %v, %v", got, err)
	}
}

func TestRoutingConfig(t *testing.T) {
	testutil.Privileged(t)
	if err := (Config{PinDir: "/sys/fs/bpf/x", RouterIPv4: routerIP, RoutingMode: "bgp"}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "routing mode") {
		t.Errorf("Validate with routing mode bgp = %v, want a routing mode error", err)
	}
	pinDir := testPinDir(t)
	dp := load(t, Config{PinDir: pinDir, RouterIPv4: routerIP, RoutingMode: RoutingNative, MonitorLevel: MonitorAll})
	check := func(wantMode string, wantIfindex int, wantLevel MonitorLevel) {
		t.Helper()
		mode, err := dp.RoutingMode()
		if err != nil || mode != wantMode {
			t.Errorf("RoutingMode() = %q, %v; want %q", mode, err, wantMode)
		}
		idx, err := dp.OverlayDevice()
		if err != nil || idx != wantIfindex {
			t.Errorf("OverlayDevice() = %d, %v; want %d", idx, err, wantIfindex)
		}
		l, err := dp.MonitorLevel()
		if err != nil || l != wantLevel {
			t.Errorf("MonitorLevel() = %v, %v; want %v", l, err, wantLevel)
		}
	}
	check(RoutingNative, 0, MonitorAll)
	if err := dp.SetOverlayDevice(42); err != nil {
		t.Fatal(err)
	}
	// Each setter keeps the others.
	if err := dp.SetMonitorLevel(MonitorDrops); err != nil {
		t.Fatal(err)
	}
	check(RoutingNative, 42, MonitorDrops)
	if err := dp.SetRoutingMode(""); err != nil {
		t.Fatal(err)
	}
	check(RoutingVXLAN, 42, MonitorDrops)
	if err := dp.SetRoutingMode("bogus"); err == nil {
		t.Errorf("SetRoutingMode(bogus) succeeded")
	}
	if err := dp.SetOverlayDevice(-1); err == nil {
		t.Errorf("SetOverlayDevice(-1) succeeded")
	}
	check(RoutingVXLAN, 42, MonitorDrops)

	// A restarted agent: the mode and level come from its config, the
	// overlay device stays until it is set again.
	dp.Close()
	dp = load(t, Config{PinDir: pinDir, RouterIPv4: routerIP})
	check(RoutingVXLAN, 42, MonitorDefault)
}

// TestOverlayProg runs the overlay decisions of from_container, from_host
// and from_overlay with BPF_PROG_RUN. The tunnel metadata itself is only
// visible on a real device (TestOverlayTraffic); here the verdicts, the
// rewritten inner frames, the counters and events are checked.
func TestOverlayProg(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixture(t)
	enterNetns(t, f.ns)
	dp := f.dp
	podA, hostA := f.epA.PodMAC, f.epA.HostMAC
	epA, epB := f.epA, f.epB
	epA.Identity, epB.Identity = idA, idB
	f.setEndpoints(t, []EndpointEntry{epA, epB})
	if err := dp.UpsertTunnel(TunnelEntry{PodCIDR: remoteCIDR, NodeIP: remoteNode}); err != nil {
		t.Fatal(err)
	}
	rd := openEvents(t, dp)

	toRemote := ipv4Pkt(hostA, podA, ipA, remotePod, protoUDP, udpDgram(40000, 5201))
	encapsulated := setMACs(setTTL(toRemote, 63), overlayMAC, hostA)
	hostMAC, netMAC := f.net.peerMAC, f.net.mac
	hostToRemote := setTTL(ipv4Pkt(netMAC, hostMAC, routerIP, remotePod, protoUDP, udpDgram(40001, 5201)), 63)

	type step struct {
		name       string
		mode       string
		overlay    int // overlay ifindex; -1: the fixture's mbr_net stand-in
		prog       *ebpf.Program
		ifindex    int
		in, out    []byte // out nil: unchanged
		verdict    uint32
		reason     DropReason
		egress     bool
		wantEvents []evSummary // at the default level
	}
	steps := []step{
		{
			name: "vxlan mode without an overlay device drops", mode: RoutingVXLAN, overlay: 0,
			prog: dp.objs.FromContainer, ifindex: f.lxcA.index, in: toRemote,
			verdict: tcActShot, reason: DropNoTunnel, egress: true,
			wantEvents: []evSummary{
				{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, 0},
				{EventDrop, ObsFromEndpoint, DropNoTunnel, true, 0, CTStateNew, 0},
			},
		},
		{
			name: "native mode hands it to the stack", mode: RoutingNative, overlay: -1,
			prog: dp.objs.FromContainer, ifindex: f.lxcA.index, in: toRemote,
			verdict: tcActOK, reason: Forwarded, egress: true,
			wantEvents: []evSummary{}, // the connection was created by the first step: established
		},
		{
			name: "vxlan mode encapsulates established packets too", mode: RoutingVXLAN, overlay: -1,
			prog: dp.objs.FromContainer, ifindex: f.lxcA.index, in: toRemote, out: encapsulated,
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantEvents: []evSummary{},
		},
		{
			name: "vxlan mode encapsulates a new connection and traces it to the overlay", mode: RoutingVXLAN, overlay: -1,
			prog: dp.objs.FromContainer, ifindex: f.lxcA.index,
			in:      ipv4Pkt(hostA, podA, ipA, remotePod, protoUDP, udpDgram(40002, 5201)),
			out:     setMACs(setTTL(ipv4Pkt(hostA, podA, ipA, remotePod, protoUDP, udpDgram(40002, 5201)), 63), overlayMAC, hostA),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantEvents: []evSummary{
				{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, 0},
				{EventTrace, ObsToOverlay, Forwarded, true, 0, CTStateNew, 0},
			},
		},
		{
			name: "a destination without a tunnel entry goes to the stack", mode: RoutingVXLAN, overlay: -1,
			prog: dp.objs.FromContainer, ifindex: f.lxcA.index,
			in:      ipv4Pkt(hostA, podA, ipA, ipWorld, protoUDP, udpDgram(40000, 5201)),
			verdict: tcActOK, reason: Forwarded, egress: true,
			wantEvents: []evSummary{
				{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, 0},
				{EventTrace, ObsToStack, Forwarded, true, 0, CTStateNew, 0},
			},
		},
		{
			name: "TTL 1 goes to the stack", mode: RoutingVXLAN, overlay: -1,
			prog: dp.objs.FromContainer, ifindex: f.lxcA.index, in: setTTL(toRemote, 1),
			verdict: tcActOK, reason: Forwarded, egress: true,
			wantEvents: []evSummary{},
		},
		{
			name: "host traffic is encapsulated, TTL kept", mode: RoutingVXLAN, overlay: -1,
			prog: dp.objs.FromHost, ifindex: f.net.index, in: hostToRemote,
			out:     setMACs(hostToRemote, overlayMAC, hostMAC),
			verdict: tcActRedirect, reason: Forwarded, egress: false,
			wantEvents: []evSummary{}, // not tracked on this node: traced at level all only
		},
		{
			name: "host traffic without an overlay device drops", mode: RoutingVXLAN, overlay: 0,
			prog: dp.objs.FromHost, ifindex: f.net.index, in: hostToRemote,
			verdict: tcActShot, reason: DropNoTunnel, egress: false,
			wantEvents: []evSummary{{EventDrop, ObsFromHost, DropNoTunnel, false, 0, CTStateNone, 0}},
		},
		{
			name: "host traffic for a remote pod in native mode is no endpoint", mode: RoutingNative, overlay: -1,
			prog: dp.objs.FromHost, ifindex: f.net.index, in: hostToRemote,
			verdict: tcActShot, reason: DropUnknownEndpoint, egress: false,
			wantEvents: []evSummary{{EventDrop, ObsFromHost, DropUnknownEndpoint, false, 0, CTStateNone, 0}},
		},
		{
			name: "overlay: ARP is dropped", mode: RoutingVXLAN, overlay: -1,
			prog: dp.objs.FromOverlay, ifindex: f.net.index,
			in:      arpPacket(bcast, strayMAC, 1, strayMAC, remotePod, zeroMAC, ipB),
			verdict: tcActShot, reason: DropUnsupportedL3, egress: false,
			wantEvents: []evSummary{{EventDrop, ObsFromOverlay, DropUnsupportedL3, false, 0, CTStateNone, 0}},
		},
		{
			name: "overlay: a packet without tunnel metadata is dropped", mode: RoutingVXLAN, overlay: -1,
			prog: dp.objs.FromOverlay, ifindex: f.net.index,
			in:      ipv4Pkt(overlayMAC, strayMAC, remotePod, ipB, protoUDP, udpDgram(40000, 5201)),
			verdict: tcActShot, reason: DropNoTunnel, egress: false,
			wantEvents: []evSummary{{EventDrop, ObsFromOverlay, DropNoTunnel, false, 0, CTStateNone, 0}},
		},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			enterNetns(t, f.ns)
			if err := dp.SetRoutingMode(s.mode); err != nil {
				t.Fatal(err)
			}
			overlay := s.overlay
			if overlay < 0 {
				overlay = f.net.index
			}
			if err := dp.SetOverlayDevice(overlay); err != nil {
				t.Fatal(err)
			}
			drainEvents(t, rd)
			before, err := dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			in := append([]byte(nil), s.in...)
			opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256),
				Context: skbContext{Ifindex: uint32(s.ifindex)}}
			verdict, err := s.prog.Run(opts)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if verdict != s.verdict {
				t.Errorf("verdict = %d, want %d", verdict, s.verdict)
			}
			want := s.out
			if want == nil {
				want = s.in
			}
			if diff := cmp.Diff(want, opts.DataOut); diff != "" {
				t.Errorf("packet out differs (-want +got):\n%s", diff)
			}
			after, err := dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			wantDelta := map[MetricsKey]Counter{{Reason: s.reason, Egress: s.egress}: {Packets: 1, Bytes: uint64(len(s.in))}}
			if diff := cmp.Diff(wantDelta, metricsDelta(before, after)); diff != "" {
				t.Errorf("metrics delta (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(s.wantEvents, summarize(drainEvents(t, rd))); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("an identity that is no VNI is not sent", func(t *testing.T) {
		enterNetns(t, f.ns)
		for _, id := range []uint32{0, 1 << 24} {
			e := epA
			e.Identity = id
			f.setEndpoints(t, []EndpointEntry{e, epB})
			if _, err := dp.FlushCT(); err != nil {
				t.Fatal(err)
			}
			before, _ := dp.Metrics()
			if v := runPkt(t, dp.objs.FromContainer, f.lxcA.index, toRemote); v != tcActShot {
				t.Errorf("identity %d: verdict %d, want drop", id, v)
			}
			after, _ := dp.Metrics()
			if d := metricsDelta(before, after)[MetricsKey{Reason: DropInvalidIdentity, Egress: true}]; d.Packets != 1 {
				t.Errorf("identity %d: INVALID_IDENTITY not counted: %v", id, metricsDelta(before, after))
			}
		}
	})
}
