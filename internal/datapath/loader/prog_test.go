package loader

import (
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/testutil"
)

// tc verdicts (linux/pkt_cls.h).
const (
	tcActOK       = 0
	tcActShot     = 2
	tcActRedirect = 7
)

// skbContext is the head of struct __sk_buff up to ifindex, the one field
// the tests set. The kernel takes a shorter context and zero-fills the rest;
// with ifindex set, BPF_PROG_RUN resolves that device in the calling
// thread's network namespace and makes it skb->dev.
type skbContext struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto,
	Priority, IngressIfindex, Ifindex uint32
}

var (
	routerIP = netip.MustParseAddr("10.1.0.1")
	ipA      = netip.MustParseAddr("10.1.0.10")
	ipB      = netip.MustParseAddr("10.1.0.11")
	ipStray  = netip.MustParseAddr("10.1.0.99")
	ipWorld  = netip.MustParseAddr("192.0.2.7")
	hostIP   = netip.MustParseAddr("198.51.100.1")
	bcast    = mac("ff:ff:ff:ff:ff:ff")
	zeroMAC  = mac("00:00:00:00:00:00")
	strayMAC = mac("02:00:00:00:00:99")
)

// progFixture is a loaded datapath plus two endpoints, A and B, each behind
// a real lxc veth in the test's network namespace, and an mbr_net device.
type progFixture struct {
	ns   netns.NsHandle // the test netns; subtests enter it
	dp   *Datapath
	lxcA veth // lxcA.mac is A's host MAC, lxcA.peerMAC its pod MAC
	lxcB veth
	net  veth // the mbr_host/mbr_net stand-in; from_host sees net.index
	epA  EndpointEntry
	epB  EndpointEntry
	both []EndpointEntry
}

func newProgFixture(t *testing.T) *progFixture {
	t.Helper()
	return newProgFixtureWith(t, Config{})
}

// newProgFixtureWith is newProgFixture with cfg's settings; PinDir,
// RouterIPv4 and EndpointMapSize are the fixture's.
func newProgFixtureWith(t *testing.T, cfg Config) *progFixture {
	t.Helper()
	ns := inTestNetns(t)
	sfx := testutil.UniqueSuffix()
	f := &progFixture{
		ns:   ns,
		lxcA: addVeth(t, "lxca"+sfx, "poda"+sfx),
		lxcB: addVeth(t, "lxcb"+sfx, "podb"+sfx),
		net:  addVeth(t, "mbrn"+sfx, "mbrh"+sfx),
	}
	cfg.PinDir, cfg.RouterIPv4, cfg.EndpointMapSize = testPinDir(t), routerIP, 64
	dp, err := Load(cfg)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	f.dp = dp
	f.epA = EndpointEntry{IP: ipA, EndpointInfo: EndpointInfo{
		IfIndex: uint32(f.lxcA.index), PodMAC: f.lxcA.peerMAC, HostMAC: f.lxcA.mac, EndpointID: 1}}
	f.epB = EndpointEntry{IP: ipB, EndpointInfo: EndpointInfo{
		IfIndex: uint32(f.lxcB.index), PodMAC: f.lxcB.peerMAC, HostMAC: f.lxcB.mac, EndpointID: 2}}
	f.both = []EndpointEntry{f.epA, f.epB}
	return f
}

// setEndpoints makes the endpoint map hold exactly eps.
func (f *progFixture) setEndpoints(t *testing.T, eps []EndpointEntry) {
	t.Helper()
	old, err := f.dp.ListEndpoints()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range old {
		if err := f.dp.DeleteEndpoint(e.IP); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range eps {
		if err := f.dp.UpsertEndpoint(e.IP, e.EndpointInfo); err != nil {
			t.Fatal(err)
		}
	}
}

type progCase struct {
	name      string
	endpoints []EndpointEntry
	ifindex   int    // skb->ifindex: the device the packet arrives on
	in        []byte // packet in
	verdict   uint32
	out       []byte // packet out; nil means unchanged
}

func runProgCases(t *testing.T, f *progFixture, prog *ebpf.Program, cases []progCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			enterNetns(t, f.ns) // skb->ifindex is resolved in the caller's netns
			f.setEndpoints(t, tc.endpoints)
			in := append([]byte(nil), tc.in...)
			opts := &ebpf.RunOptions{
				Data:    in,
				DataOut: make([]byte, len(in)+256),
				Context: skbContext{Ifindex: uint32(tc.ifindex)},
			}
			verdict, err := prog.Run(opts)
			if err != nil {
				t.Fatalf("run %s: %v", prog, err)
			}
			if verdict != tc.verdict {
				t.Errorf("verdict = %d, want %d", verdict, tc.verdict)
			}
			want := tc.out
			if want == nil {
				want = tc.in
			}
			if diff := cmp.Diff(want, opts.DataOut); diff != "" {
				t.Errorf("packet out differs (-want +got):\n%s", diff)
			}
			if verdict == tcActRedirect && len(opts.DataOut) >= 34 && opts.DataOut[12] == 0x08 && opts.DataOut[13] == 0x00 {
				if sum := ipChecksum(opts.DataOut[14:34]); sum != 0 {
					t.Errorf("IPv4 header checksum invalid (residue %#04x)", sum)
				}
			}
		})
	}
}

func TestFromContainer(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixture(t)
	podA, hostA := f.epA.PodMAC, f.epA.HostMAC
	podB, hostB := f.epB.PodMAC, f.epB.HostMAC

	arpReq := func(sha net.HardwareAddr, sip, tip netip.Addr) []byte {
		return arpPacket(bcast, sha, 1, sha, sip, zeroMAC, tip)
	}
	aToB := ipv4UDP(hostA, podA, ipA, ipB, 64)
	aToWorld := ipv4UDP(hostA, podA, ipA, ipWorld, 64)
	ipv6 := append(ethHdr(hostA, podA, 0x86dd), make([]byte, 60)...)

	runProgCases(t, f, f.dp.objs.FromContainer, []progCase{
		// ARP.
		{
			name:      "arp request for router from its endpoint is answered with the lxc MAC",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      arpReq(podA, ipA, routerIP),
			verdict: tcActRedirect,
			out:     arpPacket(podA, hostA, 2, hostA, routerIP, podA, ipA),
		},
		{
			name:      "arp request for router from unknown sender is dropped",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      arpReq(strayMAC, ipStray, routerIP),
			verdict: tcActShot,
		},
		{
			name:      "arp request for router from endpoint on the wrong lxc is dropped",
			endpoints: f.both, ifindex: f.lxcB.index,
			in:      arpReq(podA, ipA, routerIP),
			verdict: tcActShot,
		},
		{
			name:      "arp request for router with no endpoints is dropped",
			endpoints: nil, ifindex: f.lxcA.index,
			in:      arpReq(podA, ipA, routerIP),
			verdict: tcActShot,
		},
		{
			name:      "arp request for another address goes to the stack",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      arpReq(podA, ipA, ipB),
			verdict: tcActOK,
		},
		{
			name:      "arp reply goes to the stack",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      arpPacket(hostA, podA, 2, podA, ipA, hostA, routerIP),
			verdict: tcActOK,
		},
		// IPv4.
		{
			name:      "ipv4 to local endpoint is redirected with MACs rewritten and TTL decremented",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      aToB,
			verdict: tcActRedirect,
			out:     setMACs(setTTL(aToB, 63), podB, hostB),
		},
		{
			name:      "ipv4 to unknown destination goes to the stack unchanged",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      aToWorld,
			verdict: tcActOK,
		},
		{
			name:      "ipv4 with spoofed source is dropped",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      ipv4UDP(hostA, podA, ipStray, ipB, 64),
			verdict: tcActShot,
		},
		{
			name:      "ipv4 with another endpoint's source is dropped",
			endpoints: f.both, ifindex: f.lxcB.index,
			in:      aToB,
			verdict: tcActShot,
		},
		{
			name:      "ipv4 to local endpoint with TTL 1 goes to the stack unchanged",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      setTTL(aToB, 1),
			verdict: tcActOK,
		},
		// (A truncated IPv4 header cannot be tested here: BPF_PROG_RUN
		// itself rejects it with EINVAL.)
		{
			name:      "ipv4 header with ihl < 5 is dropped",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      badIHL(aToB),
			verdict: tcActShot,
		},
		// Other protocols.
		{
			name:      "ipv6 goes to the stack",
			endpoints: f.both, ifindex: f.lxcA.index,
			in:      ipv6,
			verdict: tcActOK,
		},
	})
}

func TestFromHost(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixture(t)
	hostMAC, netMAC := f.net.peerMAC, f.net.mac // mbr_host sends, mbr_net receives
	toB := ipv4UDP(netMAC, hostMAC, hostIP, ipB, 63)

	runProgCases(t, f, f.dp.objs.FromHost, []progCase{
		{
			name:      "ipv4 to local endpoint is redirected with MACs rewritten, TTL kept",
			endpoints: f.both, ifindex: f.net.index,
			in:      toB,
			verdict: tcActRedirect,
			out:     setMACs(toB, f.epB.PodMAC, f.epB.HostMAC),
		},
		{
			name:      "ipv4 to unknown destination is dropped",
			endpoints: f.both, ifindex: f.net.index,
			in:      ipv4UDP(netMAC, hostMAC, hostIP, ipStray, 63),
			verdict: tcActShot,
		},
		{
			name:      "arp is dropped (mbr_host is NOARP)",
			endpoints: f.both, ifindex: f.net.index,
			in:      arpPacket(bcast, hostMAC, 1, hostMAC, routerIP, zeroMAC, ipB),
			verdict: tcActShot,
		},
		{
			name:      "ipv6 is dropped",
			endpoints: f.both, ifindex: f.net.index,
			in:      append(ethHdr(netMAC, hostMAC, 0x86dd), make([]byte, 60)...),
			verdict: tcActShot,
		},
	})
}

// badIHL returns a copy of an IPv4 packet claiming a 16-byte header.
func badIHL(pkt []byte) []byte {
	out := append([]byte(nil), pkt...)
	out[14] = 0x44
	return out
}
