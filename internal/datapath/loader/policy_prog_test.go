package loader

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/membrane-net/membrane/internal/testutil"
)

// IP protocols used by the tests.
const (
	protoICMP = 1
	protoTCP  = 6
	protoUDP  = 17
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

// Identities of the policy fixtures.
const (
	idHost  = 1
	idWorld = 2
	idA     = 1001      // endpoint A
	idB     = 1002      // endpoint B
	idCIDRA = 1<<24 | 1 // a policy CIDR containing A
	idCIDRB = 1<<24 | 2 // a policy CIDR containing B
	idNet   = 1<<24 | 3 // 192.0.2.0/24
)

// ipv4Pkt builds Ethernet + IPv4 (TTL 64, valid checksum) + the given L4 bytes.
func ipv4Pkt(ethDst, ethSrc net.HardwareAddr, src, dst netip.Addr, proto uint8, l4 []byte) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[4:6], 0x4242)
	ip[8] = 64
	ip[9] = proto
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:12], ipChecksum(ip))
	b := ethHdr(ethDst, ethSrc, 0x0800)
	b = append(b, ip...)
	return append(b, l4...)
}

// tcpSeg is a 20-byte TCP header (checksum not filled: nobody checks it here).
func tcpSeg(sport, dport uint16, flags uint8) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	b[12] = 5 << 4
	b[13] = flags
	binary.BigEndian.PutUint16(b[14:16], 65535)
	return b
}

func udpDgram(sport, dport uint16) []byte {
	b := make([]byte, 8, 16)
	binary.BigEndian.PutUint16(b[0:2], sport)
	binary.BigEndian.PutUint16(b[2:4], dport)
	binary.BigEndian.PutUint16(b[4:6], 16)
	return append(b, "membrane"...)
}

func icmpEcho(typ uint8, id uint16) []byte {
	b := make([]byte, 16)
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:6], id)
	binary.BigEndian.PutUint16(b[6:8], 1)
	return b
}

// ctSeed is a conntrack entry written before a case runs.
type ctSeed struct {
	proto       uint8
	src, dst    netip.AddrPort
	expiresIn   time.Duration // negative: already expired
	srcIdentity uint32
}

func seedCT(t *testing.T, dp *Datapath, s ctSeed) {
	t.Helper()
	now, err := monotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	var key datapathCtKey
	s4, d4 := s.src.Addr().As4(), s.dst.Addr().As4()
	copy(key.Saddr[:], s4[:])
	copy(key.Daddr[:], d4[:])
	key.Sport, key.Dport = hton16(s.src.Port()), hton16(s.dst.Port())
	key.Protocol, key.Family = s.proto, familyIPv4
	val := datapathCtEntry{Expires: uint64(int64(now) + int64(s.expiresIn)), SrcIdentity: s.srcIdentity, Packets: 1}
	m := dp.objs.MbrCtAny
	if s.proto == protoTCP {
		m = dp.objs.MbrCtTcp
	}
	if err := m.Update(&key, &val, ebpf.UpdateAny); err != nil {
		t.Fatalf("seed conntrack %+v: %v", s, err)
	}
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// metricsDelta returns after - before, without the unchanged counters.
func metricsDelta(before, after map[MetricsKey]Counter) map[MetricsKey]Counter {
	out := make(map[MetricsKey]Counter)
	for k, a := range after {
		b := before[k]
		if a != b {
			out[k] = Counter{Packets: a.Packets - b.Packets, Bytes: a.Bytes - b.Bytes}
		}
	}
	return out
}

// policyCase is one BPF_PROG_RUN fixture: endpoint flags, policies, ipcache
// and conntrack state set up, one packet in, the verdict, the one counter
// that moves and the conntrack state after.
type policyCase struct {
	name           string
	host           bool   // run from_host on the mbr_net stand-in; else from_container
	ifindex        int    // from_container: the lxc the packet arrives on
	flagsA, flagsB uint16 // endpoint flags
	policyA        map[PolicyKey]PolicyValue
	policyB        map[PolicyKey]PolicyValue // nil: no policy map at all
	ipcache        []IPCacheEntry            // in addition to the fixture's
	ct             []ctSeed
	in             []byte
	verdict        uint32
	reason         DropReason // the one counter that moves, by one packet
	egress         bool
	wantCT         []CTEntry // entries after the run (Expires and Bytes ignored); nil: none
}

func TestPolicyProg(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixture(t)
	dp := f.dp
	podA, hostA := f.epA.PodMAC, f.epA.HostMAC
	podB, hostB := f.epB.PodMAC, f.epB.HostMAC
	hostMAC, netMAC := f.net.peerMAC, f.net.mac
	ipNet := netip.MustParseAddr("192.0.2.7") // in 192.0.2.0/24 (idNet)

	baseIPCache := []IPCacheEntry{
		{Prefix: netip.PrefixFrom(ipA, 32), Identity: idA, CIDRIdentity: idCIDRA},
		{Prefix: netip.PrefixFrom(ipB, 32), Identity: idB, CIDRIdentity: idCIDRB},
		{Prefix: netip.PrefixFrom(routerIP, 32), Identity: idHost, CIDRIdentity: idHost},
		{Prefix: netip.PrefixFrom(hostIP, 32), Identity: idHost, CIDRIdentity: idHost},
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Identity: idNet, CIDRIdentity: idNet},
	}

	aToB := func(proto uint8, l4 []byte) []byte { return ipv4Pkt(hostA, podA, ipA, ipB, proto, l4) }
	bToA := func(proto uint8, l4 []byte) []byte { return ipv4Pkt(hostB, podB, ipB, ipA, proto, l4) }
	hostToB := func(src netip.Addr, proto uint8, l4 []byte) []byte {
		return ipv4Pkt(netMAC, hostMAC, src, ipB, proto, l4)
	}
	syn80 := tcpSeg(40000, 80, tcpSYN)
	eg := func(id uint32, proto uint8, port uint16, plen uint8) PolicyKey {
		return PolicyKey{Identity: id, Egress: true, Proto: proto, Port: port, PortPrefixLen: plen}
	}
	in := func(id uint32, proto uint8, port uint16, plen uint8) PolicyKey {
		return PolicyKey{Identity: id, Proto: proto, Port: port, PortPrefixLen: plen}
	}
	allow := PolicyValue{Cookie: 7}
	deny := PolicyValue{Deny: true, Cookie: 9}
	ctAB := func(proto uint8, sport, dport uint16, pkts uint64) []CTEntry {
		return []CTEntry{{Proto: proto, Src: ap(ipA, sport), Dst: ap(ipB, dport), SrcIdentity: idA, Packets: pkts}}
	}
	ctABReplied := func(proto uint8, sport, dport uint16, pkts uint64) []CTEntry {
		e := ctAB(proto, sport, dport, pkts)
		e[0].SeenReply = true
		return e
	}
	const (
		egEnf = FlagEgressEnforced
		inEnf = FlagIngressEnforced
	)
	lxcA, lxcB := f.lxcA.index, f.lxcB.index

	cases := []policyCase{
		// Egress of A, from_container.
		{
			name:    "not enforced: forwarded and tracked",
			ifindex: lxcA, in: aToB(protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 80, 1),
		},
		{
			name:    "enforced, identity allow: forwarded, tracked with source identity",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 80, 16): allow},
			in:      aToB(protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 80, 1),
		},
		{
			name:    "enforced, no rule: dropped",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 81, 16): allow},
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: true,
		},
		{
			name:    "enforced, no policy map: dropped",
			ifindex: lxcA, flagsA: egEnf,
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: true,
		},
		{
			name:    "identity deny wins over ANY allow",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{
				eg(idB, protoTCP, 80, 16): deny,
				eg(0, protoTCP, 80, 16):   allow,
			},
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyDenied, egress: true,
		},
		{
			name:    "ANY deny wins over identity allow",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{
				eg(idB, protoTCP, 80, 16): allow,
				eg(0, 0, 0, 0):            deny,
			},
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyDenied, egress: true,
		},
		{
			name:    "wildcard identity allow",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(0, protoTCP, 80, 16): allow},
			in:      aToB(protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 80, 1),
		},
		{
			name:    "wildcard port allow (prefix 48)",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 0, 0): allow},
			in:      aToB(protoTCP, tcpSeg(40000, 31337, tcpSYN)),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 31337, 1),
		},
		{
			name:    "port range 8080-8083 (/14) allows 8082",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 8080, 14): allow},
			in:      aToB(protoTCP, tcpSeg(40000, 8082, tcpSYN)),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 8082, 1),
		},
		{
			name:    "port range 8080-8083 (/14) does not allow 8084",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 8080, 14): allow},
			in:      aToB(protoTCP, tcpSeg(40000, 8084, tcpSYN)),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: true,
		},
		{
			name:    "port rule does not allow another protocol",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 5201, 16): allow},
			in:      aToB(protoUDP, udpDgram(40000, 5201)),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: true,
		},
		{
			name:    "protocol wildcard (prefix 40) allows UDP",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, 0, 0, 0): allow},
			in:      aToB(protoUDP, udpDgram(40000, 5201)),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoUDP, 40000, 5201, 1),
		},
		{
			name:    "CIDR identity of a pod address matches a CIDR rule",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idCIDRB, protoTCP, 80, 16): allow},
			in:      aToB(protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 80, 1),
		},
		{
			name:    "CIDR identity deny wins over pod identity allow",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{
				eg(idB, protoTCP, 80, 16):     allow,
				eg(idCIDRB, protoTCP, 80, 16): deny,
			},
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyDenied, egress: true,
		},
		{
			name:    "CIDR rule to the world: forwarded to the stack",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idNet, protoUDP, 53, 16): allow},
			in:      ipv4Pkt(hostA, podA, ipA, ipNet, protoUDP, udpDgram(40000, 53)),
			verdict: tcActOK, reason: Forwarded, egress: true,
			wantCT: []CTEntry{{Proto: protoUDP, Src: ap(ipA, 40000), Dst: ap(ipNet, 53), SrcIdentity: idA, Packets: 1}},
		},
		{
			name:    "address in no ipcache prefix is world",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idWorld, protoUDP, 53, 16): allow},
			in:      ipv4Pkt(hostA, podA, ipA, ipWorld2, protoUDP, udpDgram(40000, 53)),
			verdict: tcActOK, reason: Forwarded, egress: true,
			wantCT: []CTEntry{{Proto: protoUDP, Src: ap(ipA, 40000), Dst: ap(ipWorld2, 53), SrcIdentity: idA, Packets: 1}},
		},
		{
			name:    "ICMP echo request allowed by ICMP type 8",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{eg(idB, protoICMP, 8, 16): allow},
			in:      aToB(protoICMP, icmpEcho(8, 77)),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoICMP, 77, 0, 1),
		},
		// Conntrack.
		{
			name:    "reply passes through conntrack although B's egress allows nothing",
			ifindex: lxcB, flagsB: egEnf, policyB: map[PolicyKey]PolicyValue{},
			ct:      []ctSeed{{protoTCP, ap(ipA, 40000), ap(ipB, 80), time.Minute, idA}},
			in:      bToA(protoTCP, tcpSeg(80, 40000, tcpSYN|tcpACK)),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctABReplied(protoTCP, 40000, 80, 2),
		},
		{
			name:    "ICMP echo reply passes through conntrack",
			ifindex: lxcB, flagsB: egEnf, policyB: map[PolicyKey]PolicyValue{},
			ct:      []ctSeed{{protoICMP, ap(ipA, 77), ap(ipB, 0), time.Minute, idA}},
			in:      bToA(protoICMP, icmpEcho(0, 77)),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctABReplied(protoICMP, 77, 0, 2),
		},
		{
			name:    "expired conntrack entry is not used",
			ifindex: lxcB, flagsB: egEnf, policyB: map[PolicyKey]PolicyValue{},
			ct:      []ctSeed{{protoTCP, ap(ipA, 40000), ap(ipB, 80), -time.Second, idA}},
			in:      bToA(protoTCP, tcpSeg(80, 40000, tcpSYN|tcpACK)),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: true,
			wantCT: ctAB(protoTCP, 40000, 80, 1), // the seed, untouched
		},
		{
			name:    "established packet skips policy",
			ifindex: lxcA, flagsA: egEnf, policyA: map[PolicyKey]PolicyValue{},
			ct:      []ctSeed{{protoUDP, ap(ipA, 40000), ap(ipB, 5201), time.Minute, idA}},
			in:      aToB(protoUDP, udpDgram(40000, 5201)),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoUDP, 40000, 5201, 2),
		},
		// Ingress of B checked in A's from_container (local delivery).
		{
			name:    "destination ingress enforced, no rule: dropped (ingress)",
			ifindex: lxcA, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{in(idA, protoTCP, 81, 16): allow},
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: false,
		},
		{
			name:    "destination ingress allows source identity",
			ifindex: lxcA, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{in(idA, protoTCP, 80, 16): allow},
			in:      aToB(protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 80, 1),
		},
		{
			name:    "destination ingress allows source CIDR identity",
			ifindex: lxcA, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{in(idCIDRA, protoTCP, 80, 16): allow},
			in:      aToB(protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: true,
			wantCT: ctAB(protoTCP, 40000, 80, 1),
		},
		{
			name:    "destination ingress deny",
			ifindex: lxcA, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{
				in(0, 0, 0, 0):            allow,
				in(idA, protoTCP, 80, 16): deny,
			},
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyDenied, egress: false,
		},
		{
			name:    "source egress allows but destination ingress does not",
			ifindex: lxcA, flagsA: egEnf, flagsB: inEnf,
			policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 80, 16): allow},
			policyB: map[PolicyKey]PolicyValue{},
			in:      aToB(protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: false,
		},
		// Ingress of B, from_host.
		{
			name: "from host: not enforced: forwarded and tracked with host identity",
			host: true, in: hostToB(hostIP, protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: false,
			wantCT: []CTEntry{{Proto: protoTCP, Src: ap(hostIP, 40000), Dst: ap(ipB, 80), SrcIdentity: idHost, Packets: 1}},
		},
		{
			name: "from host: ingress enforced, no rule: dropped",
			host: true, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{in(idWorld, protoTCP, 80, 16): allow},
			in:      hostToB(hostIP, protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyNoRule, egress: false,
		},
		{
			name: "from host: ingress allows the host identity",
			host: true, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{in(idHost, protoTCP, 80, 16): allow},
			in:      hostToB(hostIP, protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: false,
			wantCT: []CTEntry{{Proto: protoTCP, Src: ap(hostIP, 40000), Dst: ap(ipB, 80), SrcIdentity: idHost, Packets: 1}},
		},
		{
			name: "from host: world source allowed by world rule",
			host: true, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{in(idWorld, protoTCP, 80, 16): allow},
			in:      hostToB(ipWorld2, protoTCP, syn80),
			verdict: tcActRedirect, reason: Forwarded, egress: false,
			wantCT: []CTEntry{{Proto: protoTCP, Src: ap(ipWorld2, 40000), Dst: ap(ipB, 80), SrcIdentity: idWorld, Packets: 1}},
		},
		{
			name: "from host: ingress deny",
			host: true, flagsB: inEnf, policyB: map[PolicyKey]PolicyValue{in(idNet, protoTCP, 0, 0): deny, in(0, 0, 0, 0): allow},
			in:      hostToB(ipNet, protoTCP, syn80),
			verdict: tcActShot, reason: DropPolicyDenied, egress: false,
		},
		{
			name: "from host: reply to a connection B opened passes",
			host: true, flagsB: inEnf | egEnf, policyB: map[PolicyKey]PolicyValue{},
			ct:      []ctSeed{{protoUDP, ap(ipB, 40000), ap(hostIP, 53), time.Minute, idB}},
			in:      hostToB(hostIP, protoUDP, udpDgram(53, 40000)),
			verdict: tcActRedirect, reason: Forwarded, egress: false,
			wantCT: []CTEntry{{Proto: protoUDP, Src: ap(ipB, 40000), Dst: ap(hostIP, 53), SeenReply: true, SrcIdentity: idB, Packets: 2}},
		},
		// Other drop reasons.
		{
			name:    "spoofed source",
			ifindex: lxcA, in: ipv4Pkt(hostA, podA, ipStray, ipB, protoTCP, syn80),
			verdict: tcActShot, reason: DropSpoofedSource, egress: true,
		},
		{
			name:    "truncated TCP header",
			ifindex: lxcA, in: aToB(protoTCP, syn80[:8]),
			verdict: tcActShot, reason: DropInvalidPacket, egress: true,
		},
		{
			name: "from host: unknown endpoint",
			host: true, in: ipv4Pkt(netMAC, hostMAC, hostIP, ipStray, protoTCP, syn80),
			verdict: tcActShot, reason: DropUnknownEndpoint, egress: false,
		},
		{
			name: "from host: not IPv4",
			host: true, in: append(ethHdr(netMAC, hostMAC, 0x86dd), make([]byte, 60)...),
			verdict: tcActShot, reason: DropUnsupportedL3, egress: false,
		},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			enterNetns(t, f.ns)
			epA, epB := f.epA, f.epB
			epA.Identity, epA.Flags = idA, tc.flagsA
			epB.Identity, epB.Flags = idB, tc.flagsB
			f.setEndpoints(t, []EndpointEntry{epA, epB})
			setIPCache(t, dp, append(append([]IPCacheEntry(nil), baseIPCache...), tc.ipcache...))
			for id, pol := range map[uint16]map[PolicyKey]PolicyValue{epA.EndpointID: tc.policyA, epB.EndpointID: tc.policyB} {
				if err := dp.DeleteEndpointPolicy(id); err != nil {
					t.Fatal(err)
				}
				if pol != nil {
					if err := dp.SetEndpointPolicy(id, pol); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, err := dp.FlushCT(); err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.ct {
				seedCT(t, dp, s)
			}
			before, err := dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}

			prog, ifindex := dp.objs.FromContainer, tc.ifindex
			if tc.host {
				prog, ifindex = dp.objs.FromHost, f.net.index
			}
			pkt := append([]byte(nil), tc.in...)
			opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256),
				Context: skbContext{Ifindex: uint32(ifindex)}}
			verdict, err := prog.Run(opts)
			if err != nil {
				t.Fatalf("run %s: %v", prog, err)
			}
			if verdict != tc.verdict {
				t.Errorf("verdict = %d, want %d", verdict, tc.verdict)
			}

			after, err := dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			wantMetrics := map[MetricsKey]Counter{
				{Reason: tc.reason, Egress: tc.egress}: {Packets: 1, Bytes: uint64(len(tc.in))},
			}
			if diff := cmp.Diff(wantMetrics, metricsDelta(before, after)); diff != "" {
				t.Errorf("metrics delta (-want +got):\n%s", diff)
			}

			ct, err := dp.ListCT()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.wantCT, ct, cmpopts.EquateEmpty(),
				cmpopts.IgnoreFields(CTEntry{}, "Expires", "Bytes"),
				cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("conntrack after (-want +got):\n%s", diff)
			}
		})
	}
}

var ipWorld2 = netip.MustParseAddr("203.0.113.9") // in no ipcache prefix

// setIPCache makes the ipcache hold exactly entries.
func setIPCache(t *testing.T, dp *Datapath, entries []IPCacheEntry) {
	t.Helper()
	old, err := dp.ListIPCache()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range old {
		if err := dp.DeleteIPCache(e.Prefix); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range entries {
		if err := dp.UpsertIPCache(e); err != nil {
			t.Fatal(err)
		}
	}
}
