package loader

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/testutil"
)

// evSummary is what most event checks compare: one line per event.
type evSummary struct {
	Type     EventType
	Obs      ObsPoint
	Reason   DropReason
	Egress   bool
	Cookie   uint32
	CT       CTState
	TCPFlags uint8
}

func summarize(evs []Event) []evSummary {
	out := []evSummary{}
	for _, e := range evs {
		out = append(out, evSummary{e.Type, e.ObsPoint, e.Reason, e.Egress, e.Cookie, e.CTState, e.TCPFlags})
	}
	return out
}

// openEvents opens a reader of f's events, closed when the test ends.
func openEvents(t *testing.T, dp *Datapath) *EventReader {
	t.Helper()
	rd, err := dp.OpenEvents()
	if err != nil {
		t.Fatalf("OpenEvents: %v", err)
	}
	t.Cleanup(func() { rd.Close() })
	return rd
}

// drainEvents returns the events in the ring. BPF_PROG_RUN is synchronous:
// once Run returned, the events of its packet are in the ring.
func drainEvents(t *testing.T, rd *EventReader) []Event {
	t.Helper()
	rd.SetDeadline(time.Now())
	var out []Event
	for {
		e, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("read events: %v", err)
		}
		out = append(out, e)
	}
}

// runPkt runs prog on pkt arriving on ifindex and returns the verdict.
func runPkt(t *testing.T, prog *ebpf.Program, ifindex int, pkt []byte) uint32 {
	t.Helper()
	in := append([]byte(nil), pkt...)
	verdict, err := prog.Run(&ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256),
		Context: skbContext{Ifindex: uint32(ifindex)}})
	if err != nil {
		t.Fatalf("run %s: %v", prog, err)
	}
	return verdict
}

// eventSetup is the endpoint, ipcache and policy state of one event test.
type eventSetup struct {
	flagsA, flagsB   uint16
	policyA, policyB map[PolicyKey]PolicyValue // nil: no policy map
}

// apply sets up s on f (A, B with identities idA, idB, the ipcache of the
// policy tests), flushes conntrack and drains the ring.
func (s eventSetup) apply(t *testing.T, f *progFixture, rd *EventReader) {
	t.Helper()
	enterNetns(t, f.ns)
	epA, epB := f.epA, f.epB
	epA.Identity, epA.Flags = idA, s.flagsA
	epB.Identity, epB.Flags = idB, s.flagsB
	f.setEndpoints(t, []EndpointEntry{epA, epB})
	setIPCache(t, f.dp, []IPCacheEntry{
		{Prefix: netip.PrefixFrom(ipA, 32), Identity: idA},
		{Prefix: netip.PrefixFrom(ipB, 32), Identity: idB},
		{Prefix: netip.PrefixFrom(hostIP, 32), Identity: idHost},
	})
	for id, pol := range map[uint16]map[PolicyKey]PolicyValue{epA.EndpointID: s.policyA, epB.EndpointID: s.policyB} {
		if err := f.dp.DeleteEndpointPolicy(id); err != nil {
			t.Fatal(err)
		}
		if pol != nil {
			if err := f.dp.SetEndpointPolicy(id, pol); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := f.dp.FlushCT(); err != nil {
		t.Fatal(err)
	}
	drainEvents(t, rd)
}

func eg(id uint32, proto uint8, port uint16, plen uint8) PolicyKey {
	return PolicyKey{Identity: id, Egress: true, Proto: proto, Port: port, PortPrefixLen: plen}
}

func ing(id uint32, proto uint8, port uint16, plen uint8) PolicyKey {
	return PolicyKey{Identity: id, Proto: proto, Port: port, PortPrefixLen: plen}
}

var addrPortEqual = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

// TestEventsPolicy checks the drop and policy-verdict events of denied new
// connections, with the deciding rule's cookie, at the default level.
func TestEventsPolicy(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixture(t)
	rd := openEvents(t, f.dp)
	podA, hostA := f.epA.PodMAC, f.epA.HostMAC
	hostMAC, netMAC := f.net.peerMAC, f.net.mac
	syn80 := ipv4Pkt(hostA, podA, ipA, ipB, protoTCP, tcpSeg(40000, 80, tcpSYN))
	deny, allow := PolicyValue{Deny: true, Cookie: 9}, PolicyValue{Cookie: 7}

	for _, tc := range []struct {
		name    string
		setup   eventSetup
		host    bool
		in      []byte
		verdict uint32
		want    []evSummary
	}{
		{
			name: "egress deny: trace, denied verdict and drop with the deny cookie",
			setup: eventSetup{flagsA: FlagEgressEnforced, policyA: map[PolicyKey]PolicyValue{
				eg(idB, protoTCP, 80, 16): deny, eg(0, protoTCP, 80, 16): allow}},
			in: syn80, verdict: tcActShot,
			want: []evSummary{
				{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, tcpSYN},
				{EventPolicyVerdict, ObsFromEndpoint, DropPolicyDenied, true, 9, CTStateNew, tcpSYN},
				{EventDrop, ObsFromEndpoint, DropPolicyDenied, true, 9, CTStateNew, tcpSYN},
			},
		},
		{
			name:  "destination ingress without a rule: verdict and drop, ingress, no cookie",
			setup: eventSetup{flagsB: FlagIngressEnforced, policyB: map[PolicyKey]PolicyValue{ing(idA, protoTCP, 81, 16): allow}},
			in:    syn80, verdict: tcActShot,
			want: []evSummary{
				{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, tcpSYN},
				{EventPolicyVerdict, ObsFromEndpoint, DropPolicyNoRule, false, 0, CTStateNew, tcpSYN},
				{EventDrop, ObsFromEndpoint, DropPolicyNoRule, false, 0, CTStateNew, tcpSYN},
			},
		},
		{
			name: "source allowed, destination denies: two verdicts",
			setup: eventSetup{
				flagsA: FlagEgressEnforced, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 80, 16): allow},
				flagsB: FlagIngressEnforced, policyB: map[PolicyKey]PolicyValue{ing(0, 0, 0, 0): deny},
			},
			in: syn80, verdict: tcActShot,
			want: []evSummary{
				{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, tcpSYN},
				{EventPolicyVerdict, ObsFromEndpoint, Forwarded, true, 7, CTStateNew, tcpSYN},
				{EventPolicyVerdict, ObsFromEndpoint, DropPolicyDenied, false, 9, CTStateNew, tcpSYN},
				{EventDrop, ObsFromEndpoint, DropPolicyDenied, false, 9, CTStateNew, tcpSYN},
			},
		},
		{
			name:  "from host: ingress deny",
			setup: eventSetup{flagsB: FlagIngressEnforced, policyB: map[PolicyKey]PolicyValue{ing(idHost, protoUDP, 0, 0): deny}},
			host:  true, in: ipv4Pkt(netMAC, hostMAC, hostIP, ipB, protoUDP, udpDgram(40000, 53)), verdict: tcActShot,
			want: []evSummary{
				{EventTrace, ObsFromHost, Forwarded, false, 0, CTStateNew, 0},
				{EventPolicyVerdict, ObsFromHost, DropPolicyDenied, false, 9, CTStateNew, 0},
				{EventDrop, ObsFromHost, DropPolicyDenied, false, 9, CTStateNew, 0},
			},
		},
		{
			name: "spoofed source: drop only, before conntrack",
			in:   ipv4Pkt(hostA, podA, ipStray, ipB, protoTCP, tcpSeg(40000, 80, tcpSYN)), verdict: tcActShot,
			want: []evSummary{{EventDrop, ObsFromEndpoint, DropSpoofedSource, true, 0, CTStateNone, 0}},
		},
		{
			name: "from host: not IPv4: drop without addresses",
			host: true, in: append(ethHdr(netMAC, hostMAC, 0x86dd), make([]byte, 60)...), verdict: tcActShot,
			want: []evSummary{{EventDrop, ObsFromHost, DropUnsupportedL3, false, 0, CTStateNone, 0}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup.apply(t, f, rd)
			prog, ifindex := f.dp.objs.FromContainer, f.lxcA.index
			if tc.host {
				prog, ifindex = f.dp.objs.FromHost, f.net.index
			}
			if v := runPkt(t, prog, ifindex, tc.in); v != tc.verdict {
				t.Errorf("verdict = %d, want %d", v, tc.verdict)
			}
			evs := drainEvents(t, rd)
			if diff := cmp.Diff(tc.want, summarize(evs)); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}

	// Every field of one drop event.
	t.Run("fields of a drop", func(t *testing.T) {
		eventSetup{flagsA: FlagEgressEnforced, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 80, 16): deny}}.apply(t, f, rd)
		start := time.Now()
		runPkt(t, f.dp.objs.FromContainer, f.lxcA.index, syn80)
		evs := drainEvents(t, rd)
		if len(evs) != 3 {
			t.Fatalf("got %d events, want 3: %v", len(evs), evs)
		}
		got := evs[2]
		want := Event{
			Type: EventDrop, Reason: DropPolicyDenied, ObsPoint: ObsFromEndpoint, Dropped: true, Egress: true,
			Proto: protoTCP, TCPFlags: tcpSYN, SrcEP: 1, DstEP: 2, SrcIdentity: idA, DstIdentity: idB, Cookie: 9,
			IfIndex: uint32(f.lxcA.index), Len: uint32(len(syn80)),
			Src: ap(ipA, 40000), Dst: ap(ipB, 80), CTState: CTStateNew,
		}
		if d := got.Time.Sub(start); d < -time.Second || d > 5*time.Second {
			t.Errorf("event time %v is %v from the time of the run %v", got.Time, d, start)
		}
		got.Time = time.Time{}
		if diff := cmp.Diff(want, got, addrPortEqual); diff != "" {
			t.Errorf("drop event (-want +got):\n%s", diff)
		}
		if evs[0].Dropped || !evs[1].Dropped {
			t.Errorf("trace Dropped = %v, denied verdict Dropped = %v; want false, true", evs[0].Dropped, evs[1].Dropped)
		}
	})
}

// TestEventsConnection follows an allowed TCP connection through its
// handshake and close at the default level: the allowing verdicts with
// their cookies, traces of the first packet in each direction and of new
// TCP flags, nothing for repeated flags.
func TestEventsConnection(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixture(t)
	rd := openEvents(t, f.dp)
	podA, hostA := f.epA.PodMAC, f.epA.HostMAC
	podB, hostB := f.epB.PodMAC, f.epB.HostMAC
	aToB := func(flags uint8) []byte {
		return ipv4Pkt(hostA, podA, ipA, ipB, protoTCP, tcpSeg(40000, 80, flags))
	}
	bToA := func(flags uint8) []byte {
		return ipv4Pkt(hostB, podB, ipB, ipA, protoTCP, tcpSeg(80, 40000, flags))
	}
	eventSetup{
		flagsA: FlagEgressEnforced, policyA: map[PolicyKey]PolicyValue{eg(idB, protoTCP, 80, 16): {Cookie: 7}},
		flagsB: FlagIngressEnforced, policyB: map[PolicyKey]PolicyValue{ing(idA, protoTCP, 80, 16): {Cookie: 8}},
	}.apply(t, f, rd)

	const (
		synAck = tcpSYN | tcpACK
		finAck = tcpFIN | tcpACK
	)
	trace2 := func(ct CTState, egress bool, flags uint8) []evSummary {
		// from_container sees the packet leave its pod, then deliver it.
		return []evSummary{
			{EventTrace, ObsFromEndpoint, Forwarded, true, 0, ct, flags},
			{EventTrace, ObsToEndpoint, Forwarded, false, 0, ct, flags},
		}
	}
	for _, step := range []struct {
		name    string
		fromB   bool
		flags   uint8
		want    []evSummary
		srcEP   uint16
		srcAddr netip.Addr
	}{
		{name: "SYN: new, both verdicts allow with their cookies", flags: tcpSYN, want: []evSummary{
			{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, tcpSYN},
			{EventPolicyVerdict, ObsFromEndpoint, Forwarded, true, 7, CTStateNew, tcpSYN},
			{EventPolicyVerdict, ObsFromEndpoint, Forwarded, false, 8, CTStateNew, tcpSYN},
			{EventTrace, ObsToEndpoint, Forwarded, false, 0, CTStateNew, tcpSYN},
		}},
		{name: "SYN again: same flags, nothing", flags: tcpSYN, want: []evSummary{}},
		{name: "SYN-ACK: first reply", fromB: true, flags: synAck, want: trace2(CTStateReply, true, synAck)},
		{name: "ACK: new flag, but not one that opens or closes: nothing", flags: tcpACK, want: []evSummary{}},
		{name: "PSH-ACK: nothing either", flags: tcpPSH | tcpACK, want: []evSummary{}},
		{name: "ACK again: nothing", flags: tcpACK, want: []evSummary{}},
		{name: "ACK from B: flags already seen in the reply direction", fromB: true, flags: tcpACK, want: []evSummary{}},
		{name: "FIN: new flag", flags: finAck, want: trace2(CTStateEstablished, true, finAck)},
		{name: "FIN again: nothing", flags: finAck, want: []evSummary{}},
		{name: "FIN from B: new flag in the reply direction", fromB: true, flags: finAck, want: trace2(CTStateReply, true, finAck)},
	} {
		pkt, ifindex := aToB(step.flags), f.lxcA.index
		if step.fromB {
			pkt, ifindex = bToA(step.flags), f.lxcB.index
		}
		if v := runPkt(t, f.dp.objs.FromContainer, ifindex, pkt); v != tcActRedirect {
			t.Errorf("%s: verdict = %d, want redirect", step.name, v)
		}
		evs := drainEvents(t, rd)
		if diff := cmp.Diff(step.want, summarize(evs)); diff != "" {
			t.Errorf("%s: events (-want +got):\n%s", step.name, diff)
		}
		for _, e := range evs {
			wantSrc, wantSrcEP, wantDstEP := ap(ipA, 40000), uint16(1), uint16(2)
			if step.fromB {
				wantSrc, wantSrcEP, wantDstEP = ap(ipB, 80), 2, 1
			}
			if e.Src != wantSrc || e.SrcEP != wantSrcEP || e.DstEP != wantDstEP {
				t.Errorf("%s: event %v: want source %v, endpoints %d -> %d", step.name, e, wantSrc, wantSrcEP, wantDstEP)
			}
		}
	}
}

// TestEventsMonitorLevels checks what each level reports for the same
// packets, and that the level changes at run time.
func TestEventsMonitorLevels(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixture(t)
	rd := openEvents(t, f.dp)
	podA, hostA := f.epA.PodMAC, f.epA.HostMAC
	if l, err := f.dp.MonitorLevel(); err != nil || l != MonitorDefault {
		t.Fatalf("MonitorLevel() after Load with a zero config = %v, %v; want default", l, err)
	}
	if err := f.dp.SetMonitorLevel(MonitorAll + 1); err == nil {
		t.Errorf("SetMonitorLevel(%d) succeeded", MonitorAll+1)
	}
	// The zero value means the default; the datapath's number for "off" is 0.
	for _, l := range []MonitorLevel{MonitorOff, 0} {
		if err := f.dp.SetMonitorLevel(l); err != nil {
			t.Fatal(err)
		}
		var c datapathDpConfig
		if err := f.dp.objs.MbrConfig.Lookup(uint32(0), &c); err != nil {
			t.Fatal(err)
		}
		got, err := f.dp.MonitorLevel()
		if err != nil {
			t.Fatal(err)
		}
		if want, wantBPF := l.orDefault(), map[MonitorLevel]uint32{MonitorOff: 0, 0: 2}[l]; got != want || c.MonitorLevel != wantBPF {
			t.Errorf("after SetMonitorLevel(%d): MonitorLevel() = %v, mbr_config = %d; want %v, %d",
				uint32(l), got, c.MonitorLevel, want, wantBPF)
		}
	}

	setup := eventSetup{flagsA: FlagEgressEnforced, policyA: map[PolicyKey]PolicyValue{
		eg(idB, protoUDP, 5201, 16): {Cookie: 7},
		eg(idB, protoUDP, 81, 16):   {Deny: true, Cookie: 9},
	}}
	allowed := ipv4Pkt(hostA, podA, ipA, ipB, protoUDP, udpDgram(40000, 5201))
	denied := ipv4Pkt(hostA, podA, ipA, ipB, protoUDP, udpDgram(40000, 81))
	type pkt struct {
		in      []byte
		verdict uint32
	}
	// A new allowed flow, two more packets of it, a denied packet.
	pkts := []pkt{{allowed, tcActRedirect}, {allowed, tcActRedirect}, {allowed, tcActRedirect}, {denied, tcActShot}}
	var (
		fromEP = evSummary{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateEstablished, 0}
		toEP   = evSummary{EventTrace, ObsToEndpoint, Forwarded, false, 0, CTStateEstablished, 0}
		newFr  = evSummary{EventTrace, ObsFromEndpoint, Forwarded, true, 0, CTStateNew, 0}
		newTo  = evSummary{EventTrace, ObsToEndpoint, Forwarded, false, 0, CTStateNew, 0}
		allow  = evSummary{EventPolicyVerdict, ObsFromEndpoint, Forwarded, true, 7, CTStateNew, 0}
		denyV  = evSummary{EventPolicyVerdict, ObsFromEndpoint, DropPolicyDenied, true, 9, CTStateNew, 0}
		denyD  = evSummary{EventDrop, ObsFromEndpoint, DropPolicyDenied, true, 9, CTStateNew, 0}
	)
	for _, tc := range []struct {
		level MonitorLevel
		want  []evSummary
	}{
		{MonitorOff, []evSummary{}},
		{MonitorDrops, []evSummary{allow, denyV, denyD}},
		{MonitorDefault, []evSummary{newFr, allow, newTo, newFr, denyV, denyD}},
		{MonitorAll, []evSummary{newFr, allow, newTo, fromEP, toEP, fromEP, toEP, newFr, denyV, denyD}},
	} {
		t.Run(tc.level.String(), func(t *testing.T) {
			setup.apply(t, f, rd)
			if err := f.dp.SetMonitorLevel(tc.level); err != nil {
				t.Fatal(err)
			}
			if l, err := f.dp.MonitorLevel(); err != nil || l != tc.level {
				t.Fatalf("MonitorLevel() = %v, %v; want %v", l, err, tc.level)
			}
			before, err := f.dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range pkts {
				if v := runPkt(t, f.dp.objs.FromContainer, f.lxcA.index, p.in); v != p.verdict {
					t.Errorf("packet %d: verdict = %d, want %d", i, v, p.verdict)
				}
			}
			if diff := cmp.Diff(tc.want, summarize(drainEvents(t, rd))); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
			// Metrics count every verdict whatever the level.
			after, err := f.dp.Metrics()
			if err != nil {
				t.Fatal(err)
			}
			wantMetrics := map[MetricsKey]Counter{
				{Reason: Forwarded, Egress: true}:        {Packets: 3, Bytes: 3 * uint64(len(allowed))},
				{Reason: DropPolicyDenied, Egress: true}: {Packets: 1, Bytes: uint64(len(denied))},
			}
			if diff := cmp.Diff(wantMetrics, metricsDelta(before, after)); diff != "" {
				t.Errorf("metrics delta (-want +got):\n%s", diff)
			}
		})
	}
}

// TestEventsOverflow fills a one-page ring without reading it: every
// packet keeps its verdict, and every event is either in the ring or
// counted as lost.
func TestEventsOverflow(t *testing.T) {
	testutil.Privileged(t)
	f := newProgFixtureWith(t, Config{EventsRingSize: 4096, MonitorLevel: MonitorAll})
	enterNetns(t, f.ns)
	podA, hostA := f.epA.PodMAC, f.epA.HostMAC
	epA, epB := f.epA, f.epB
	epA.Identity, epB.Identity = idA, idB
	epB.Flags = FlagIngressEnforced
	f.setEndpoints(t, []EndpointEntry{epA, epB})
	if err := f.dp.SetEndpointPolicy(epB.EndpointID, map[PolicyKey]PolicyValue{
		ing(idA, protoUDP, 5201, 16): {Cookie: 7},
	}); err != nil {
		t.Fatal(err)
	}
	allowed := ipv4Pkt(hostA, podA, ipA, ipB, protoUDP, udpDgram(40000, 5201))
	denied := ipv4Pkt(hostA, podA, ipA, ipB, protoUDP, udpDgram(40000, 81))

	lost0, err := f.dp.EventsLost()
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if v := runPkt(t, f.dp.objs.FromContainer, f.lxcA.index, allowed); v != tcActRedirect {
			t.Fatalf("allowed packet %d: verdict = %d, want redirect", i, v)
		}
		if v := runPkt(t, f.dp.objs.FromContainer, f.lxcA.index, denied); v != tcActShot {
			t.Fatalf("denied packet %d: verdict = %d, want drop", i, v)
		}
	}
	lost, err := f.dp.EventsLost()
	if err != nil {
		t.Fatal(err)
	}
	lost -= lost0
	rd := openEvents(t, f.dp)
	read := uint64(len(drainEvents(t, rd)))
	// Allowed: the first packet is new (trace, verdict, trace), the
	// others established (two traces); denied: trace, verdict, drop.
	const emitted = 3 + 2*(n-1) + 3*n
	if lost == 0 {
		t.Errorf("no events lost although %d did not fit a one-page ring (%d read)", emitted, read)
	}
	if lost+read != emitted {
		t.Errorf("lost %d + read %d = %d events, want %d emitted", lost, read, lost+read, emitted)
	}
	t.Logf("%d events emitted: %d read, %d lost", emitted, read, lost)
}

// TestEventReaderClose checks that Close ends a blocked Read.
func TestEventReaderClose(t *testing.T) {
	testutil.Privileged(t)
	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP, EndpointMapSize: 64})
	rd, err := dp.OpenEvents()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := rd.Read()
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := rd.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrEventsClosed) || !errors.Is(err, os.ErrClosed) || !errors.Is(err, ringbuf.ErrClosed) {
			t.Errorf("Read after Close = %v, want ErrEventsClosed (os.ErrClosed)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5s after Close")
	}
	if _, err := rd.Read(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read on a closed reader = %v, want os.ErrClosed", err)
	}
}

// TestLoadReplacesEventRingOfAnotherSize reloads with another ring size:
// the ring is recreated, the other maps are reused.
func TestLoadReplacesEventRingOfAnotherSize(t *testing.T) {
	testutil.Privileged(t)
	pinDir := testPinDir(t)
	cfg := Config{PinDir: pinDir, RouterIPv4: routerIP, EndpointMapSize: 64, EventsRingSize: 4096}
	dp := load(t, cfg)
	if err := dp.UpsertEndpoint(ipA, testEndpoint(5, 1)); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	cfg.EventsRingSize = 8192
	dp = load(t, cfg)
	if n := dp.objs.MbrEvents.MaxEntries(); n != 8192 {
		t.Errorf("ring size after reload = %d, want 8192", n)
	}
	if _, ok, err := dp.LookupEndpoint(ipA); err != nil || !ok {
		t.Errorf("endpoint lost across the reload: %v, %v", ok, err)
	}
}
