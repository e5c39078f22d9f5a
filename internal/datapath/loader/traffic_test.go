package loader

import (
	"io"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/testutil"
)

// inNetns runs fn on a fresh OS thread inside ns. The thread is discarded
// afterwards (left locked), so no goroutine ever runs in the wrong netns.
// Sockets opened by fn stay in ns whatever thread uses them later.
func inNetns(t *testing.T, ns netns.NsHandle, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// testPod is a pod network namespace behind an lxc veth of the node.
type testPod struct {
	ns  netns.NsHandle
	ip  netip.Addr
	lxc veth // host side in the node; peer is the pod's eth0
}

// addPod creates a named pod netns whose eth0 is the peer of a new lxc veth
// in the node (current) netns, configured as the CNI would: a /32 address,
// the router as on-link gateway of the default route.
func addPod(t *testing.T, node netns.NsHandle, ip netip.Addr) testPod {
	t.Helper()
	return addPodVia(t, node, ip, routerIP)
}

// addPodVia is addPod with the given router address. It leaves the calling
// thread in node.
func addPodVia(t *testing.T, node netns.NsHandle, ip, routerIP netip.Addr) testPod {
	t.Helper()
	sfx := testutil.UniqueSuffix()
	name := "mbr-test-pod-" + sfx
	pod, err := netns.NewNamed(name) // switches this thread into it
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	if err := netns.Set(node); err != nil {
		t.Fatalf("return to node netns: %v", err)
	}
	t.Cleanup(func() {
		pod.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})

	lxc := addVeth(t, "lxc"+sfx, "eth"+sfx)
	peer, err := netlink.LinkByName(lxc.peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetNsFd(peer, int(pod)); err != nil {
		t.Fatalf("move %s to %s: %v", lxc.peer, name, err)
	}

	h, err := netlink.NewHandleAt(pod)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName(lxc.peer)
	if err != nil {
		t.Fatal(err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func() error{
		func() error { return h.LinkSetName(eth, "eth0") },
		func() error { return h.LinkSetUp(lo) },
		func() error { return h.LinkSetUp(eth) },
		func() error {
			return h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(32, 32)}})
		},
		func() error {
			return h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Scope: netlink.SCOPE_LINK,
				Dst: &net.IPNet{IP: routerIP.AsSlice(), Mask: net.CIDRMask(32, 32)}})
		},
		func() error {
			return h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: routerIP.AsSlice()})
		},
	} {
		if err := step(); err != nil {
			t.Fatalf("configure pod %s: %v", name, err)
		}
	}
	return testPod{ns: pod, ip: ip, lxc: lxc}
}

// udpEcho opens a UDP echo server on addr:5201 inside ns and returns its
// address. It stops when the test ends.
func udpEcho(t *testing.T, ns netns.NsHandle, addr netip.Addr) netip.AddrPort {
	t.Helper()
	ap := netip.AddrPortFrom(addr, 5201)
	var conn *net.UDPConn
	inNetns(t, ns, func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
		return err
	})
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return ap
}

// udpRoundTrip sends a datagram from ns to server and waits for the echo.
func udpRoundTrip(t *testing.T, ns netns.NsHandle, server netip.AddrPort) {
	t.Helper()
	if !udpEchoes(t, ns, server, 5) {
		t.Fatalf("no UDP echo from %s", server)
	}
}

// udpEchoes reports whether a datagram from ns to server is echoed, trying
// up to tries times.
func udpEchoes(t *testing.T, ns netns.NsHandle, server netip.AddrPort, tries int) bool {
	t.Helper()
	var conn *net.UDPConn
	inNetns(t, ns, func() (err error) {
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(server))
		return err
	})
	defer conn.Close()
	msg := []byte("membrane " + testutil.UniqueSuffix())
	buf := make([]byte, 1500)
	// A few tries: the first datagram may wait on ARP resolution.
	for try := 0; try < tries; try++ {
		if _, err := conn.Write(msg); err != nil {
			continue // e.g. ECONNREFUSED from an earlier ICMP error
		}
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := conn.Read(buf)
		if err == nil && string(buf[:n]) == string(msg) {
			return true
		}
	}
	return false
}

// TestTraffic runs real traffic through the attached programs: pod to pod
// on the same node (from_container, ARP for the router, redirect_peer) and
// pod to host (host stack out, from_host back in).
func TestTraffic(t *testing.T) {
	testutil.Privileged(t)
	node := inTestNetns(t)
	sfx := testutil.UniqueSuffix()

	// mbr_host carries the router IP and the pod CIDR route; it is NOARP,
	// so the host stack sends pod traffic to mbr_net without resolving.
	hostPair := addVeth(t, "mbrn"+sfx, "mbrh"+sfx)
	mbrHost, err := netlink.LinkByName(hostPair.peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetARPOff(mbrHost); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(mbrHost, &netlink.Addr{IPNet: &net.IPNet{IP: routerIP.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: mbrHost.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: net.IPv4(10, 1, 0, 0), Mask: net.CIDRMask(24, 32)}, Src: routerIP.AsSlice()}); err != nil {
		t.Fatal(err)
	}

	podA := addPod(t, node, ipA)
	podB := addPod(t, node, ipB)

	dp := load(t, Config{PinDir: testPinDir(t), RouterIPv4: routerIP})
	if err := dp.AttachHost(hostPair.name, hostPair.index); err != nil {
		t.Fatal(err)
	}
	epInfo := func(p testPod, id uint16, identity uint32, flags uint16) EndpointInfo {
		return EndpointInfo{IfIndex: uint32(p.lxc.index), PodMAC: p.lxc.peerMAC, HostMAC: p.lxc.mac,
			EndpointID: id, Identity: identity, Flags: flags}
	}
	for i, p := range []testPod{podA, podB} {
		if err := dp.UpsertEndpoint(p.ip, epInfo(p, uint16(i+1), idA+uint32(i), 0)); err != nil {
			t.Fatal(err)
		}
		if err := dp.UpsertIPCache(IPCacheEntry{Prefix: netip.PrefixFrom(p.ip, 32), Identity: idA + uint32(i)}); err != nil {
			t.Fatal(err)
		}
		if err := dp.AttachEndpoint(p.lxc.name, p.lxc.index); err != nil {
			t.Fatal(err)
		}
	}

	// IP forwarding is off in the test netns: only the BPF redirect can
	// carry pod-to-pod traffic.
	echoB := udpEcho(t, podB.ns, podB.ip)
	t.Run("pod to pod", func(t *testing.T) {
		udpRoundTrip(t, podA.ns, echoB)
	})
	t.Run("pod unknown to the endpoint map is cut off", func(t *testing.T) {
		if err := dp.DeleteEndpoint(podA.ip); err != nil {
			t.Fatal(err)
		}
		if udpEchoes(t, podA.ns, echoB, 2) {
			t.Errorf("pod A reached pod B without an endpoint entry")
		}
		if err := dp.UpsertEndpoint(podA.ip, epInfo(podA, 1, idA, 0)); err != nil {
			t.Fatal(err)
		}
		udpRoundTrip(t, podA.ns, echoB)
	})
	t.Run("pod to host", func(t *testing.T) {
		udpRoundTrip(t, podB.ns, udpEcho(t, node, routerIP))
	})
	t.Run("router resolves to the lxc MAC", func(t *testing.T) {
		h, err := netlink.NewHandleAt(podA.ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		neighs, err := h.NeighList(0, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range neighs {
			if n.IP.Equal(routerIP.AsSlice()) {
				if n.HardwareAddr.String() != podA.lxc.mac.String() {
					t.Errorf("router %s resolves to %s in pod A, want lxc MAC %s", routerIP, n.HardwareAddr, podA.lxc.mac)
				}
				return
			}
		}
		t.Errorf("no neighbour entry for router %s in pod A: %v", routerIP, neighs)
	})

	// Enforcement on both pods: A may open TCP/8080 connections (egress),
	// B accepts them from A (ingress) and may open nothing itself (egress):
	// its replies pass only through conntrack.
	echoTCP := tcpEcho(t, podB.ns, podB.ip, 8080)
	echoA := udpEcho(t, podA.ns, podA.ip)
	t.Run("policy allows only TCP/8080", func(t *testing.T) {
		if n, err := dp.FlushCT(); err != nil {
			t.Fatalf("FlushCT = %d, %v", n, err)
		}
		if err := dp.SetEndpointPolicy(1, map[PolicyKey]PolicyValue{
			{Identity: idB, Egress: true, Proto: protoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 1},
		}); err != nil {
			t.Fatal(err)
		}
		if err := dp.SetEndpointPolicy(2, map[PolicyKey]PolicyValue{
			{Identity: idA, Proto: protoTCP, Port: 8080, PortPrefixLen: 16}: {Cookie: 2},
		}); err != nil {
			t.Fatal(err)
		}
		for _, u := range []struct {
			p        testPod
			id       uint16
			identity uint32
		}{{podA, 1, idA}, {podB, 2, idB}} {
			if err := dp.UpsertEndpoint(u.p.ip, epInfo(u.p, u.id, u.identity,
				FlagIngressEnforced|FlagEgressEnforced)); err != nil {
				t.Fatal(err)
			}
		}
		before, err := dp.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		events := openEvents(t, dp)
		drainEvents(t, events)
		start := time.Now()

		if udpEchoes(t, podA.ns, echoB, 2) {
			t.Errorf("UDP from pod A reached pod B under a TCP/8080-only policy")
		}
		after, err := dp.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if d := metricsDelta(before, after)[MetricsKey{Reason: DropPolicyNoRule, Egress: true}]; d.Packets == 0 {
			t.Errorf("no egress policy drop counted for the UDP flow: %v", metricsDelta(before, after))
		}

		tcpRoundTrip(t, podA.ns, echoTCP)

		ct, err := dp.ListCT()
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(ct, func(e CTEntry) bool { return e.Proto == protoTCP && e.Dst == echoTCP })
		if i < 0 || !ct[i].SeenReply || ct[i].SrcIdentity != idA || ct[i].Packets < 4 {
			t.Errorf("no replied conntrack entry with source identity %d for %s: %+v", idA, echoTCP, ct)
		}
		checkTrafficEvents(t, drainEvents(t, events), start, podA.ip, echoB, echoTCP)
		// The other way round: B's egress allows nothing, A's ingress
		// nothing from B; B's egress drops it first.
		before, err = dp.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if udpEchoes(t, podB.ns, echoA, 1) {
			t.Errorf("pod B opened a UDP flow to pod A although its egress allows nothing")
		}
		after, err = dp.Metrics()
		if err != nil {
			t.Fatal(err)
		}
		if d := metricsDelta(before, after)[MetricsKey{Reason: DropPolicyNoRule, Egress: true}]; d.Packets == 0 {
			t.Errorf("no egress policy drop counted for B's UDP flow: %v", metricsDelta(before, after))
		}
	})
}

// tcpEcho opens a TCP echo server on addr:port inside ns and returns its
// address. It stops when the test ends.
func tcpEcho(t *testing.T, ns netns.NsHandle, addr netip.Addr, port uint16) netip.AddrPort {
	t.Helper()
	ap := netip.AddrPortFrom(addr, port)
	var ln *net.TCPListener
	inNetns(t, ns, func() (err error) {
		ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ap))
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ap
}

// tcpRoundTrip connects from ns to server, sends a message and waits for
// its echo: data flows in both directions of one connection.
func tcpRoundTrip(t *testing.T, ns netns.NsHandle, server netip.AddrPort) {
	t.Helper()
	var conn net.Conn
	inNetns(t, ns, func() (err error) {
		conn, err = net.DialTimeout("tcp4", server.String(), 3*time.Second)
		return err
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	msg := []byte("membrane " + testutil.UniqueSuffix())
	if _, err := conn.Write(msg); err != nil {
		t.Fatalf("write to %s: %v", server, err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("read echo from %s: %v", server, err)
	}
	if string(buf) != string(msg) {
		t.Fatalf("echo from %s = %q, want %q", server, buf, msg)
	}
}

// checkTrafficEvents checks the flow events of the "policy allows only
// TCP/8080" traffic, at the default monitor level: the dropped UDP flow from
// client to udpServer, and the TCP connection from client to tcpServer with
// both allowing verdicts (cookies 1 and 2), the trace of its SYN and of its
// first reply.
func checkTrafficEvents(t *testing.T, evs []Event, start time.Time, client netip.Addr, udpServer, tcpServer netip.AddrPort) {
	t.Helper()
	for _, e := range evs {
		if e.Time.Before(start.Add(-time.Second)) || e.Time.After(time.Now().Add(time.Second)) {
			t.Errorf("event time %v outside the test's run from %v: %v", e.Time, start, e)
		}
	}
	for _, want := range []struct {
		what  string
		match func(Event) bool
	}{
		{"UDP drop without a rule", func(e Event) bool {
			return e.Type == EventDrop && e.Reason == DropPolicyNoRule && e.Egress && e.Dropped &&
				e.Src.Addr() == client && e.Dst == udpServer && e.Proto == protoUDP && e.SrcIdentity == idA
		}},
		{"egress verdict allowing the connection with cookie 1", func(e Event) bool {
			return e.Type == EventPolicyVerdict && !e.Dropped && e.Egress && e.Cookie == 1 &&
				e.Src.Addr() == client && e.Dst == tcpServer && e.CTState == CTStateNew
		}},
		{"ingress verdict allowing the connection with cookie 2", func(e Event) bool {
			return e.Type == EventPolicyVerdict && !e.Dropped && !e.Egress && e.Cookie == 2 &&
				e.Src.Addr() == client && e.Dst == tcpServer && e.DstIdentity == idB
		}},
		{"trace of the SYN leaving the client", func(e Event) bool {
			return e.Type == EventTrace && e.ObsPoint == ObsFromEndpoint && e.TCPFlags&tcpSYN != 0 &&
				e.Src.Addr() == client && e.Dst == tcpServer && e.CTState == CTStateNew && e.SrcEP == 1 && e.DstEP == 2
		}},
		{"trace of the SYN delivered to the server", func(e Event) bool {
			return e.Type == EventTrace && e.ObsPoint == ObsToEndpoint && e.Dst == tcpServer && e.CTState == CTStateNew
		}},
		{"trace of the first reply", func(e Event) bool {
			return e.Type == EventTrace && e.ObsPoint == ObsFromEndpoint && e.Src == tcpServer &&
				e.Dst.Addr() == client && e.CTState == CTStateReply && e.TCPFlags == tcpSYN|tcpACK
		}},
	} {
		if !slices.ContainsFunc(evs, want.match) {
			t.Errorf("no event: %s; got %d events:", want.what, len(evs))
			for _, e := range evs {
				t.Logf("  %v", e)
			}
		}
	}
}
