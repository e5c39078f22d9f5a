package lab

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// startLoopbackServer serves on 127.0.0.1 with kernel-chosen ports, in the
// test's own namespace (no root).
func startLoopbackServer(t *testing.T, name string) (tcpPort, udpPort uint16) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveOn(ctx, name, []net.Listener{ln}, []net.PacketConn{pc}, nil) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("server did not stop within 5s")
		}
	})
	return uint16(ln.Addr().(*net.TCPAddr).Port), uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

func TestServeAndProbeLoopback(t *testing.T) {
	tcpPort, udpPort := startLoopbackServer(t, "default/web")
	lo := netip.MustParseAddr("127.0.0.1")
	if err := probeOne("", lo, tcpPort, "tcp", "default/web", time.Second); err != nil {
		t.Errorf("tcp probe: %v", err)
	}
	if err := probeOne("", lo, udpPort, "udp", "default/web", time.Second); err != nil {
		t.Errorf("udp probe: %v", err)
	}
	// The reply names the server; a probe expecting another pod fails.
	if err := probeOne("", lo, tcpPort, "tcp", "default/other", time.Second); err == nil || !strings.Contains(err.Error(), "unexpected reply") {
		t.Errorf("tcp probe with the wrong name: %v, want unexpected reply", err)
	}

	// Matrix over loopback: one "pod" probing itself.
	m, err := probeMatrix(context.Background(), []probeTarget{{Key: "default/web", IP: lo}}, ProbeSpec{Port: tcpPort, Proto: "tcp"})
	if err != nil || !m.Full() {
		t.Errorf("matrix = %+v, %v", m, err)
	}
	if _, err := probeMatrix(context.Background(), nil, ProbeSpec{Proto: "sctp"}); err == nil {
		t.Error("sctp probe: want an error")
	}
}

func TestServeBounds(t *testing.T) {
	tcpPort, _ := startLoopbackServer(t, "p")
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), tcpPort).String()

	// A line longer than 1 KiB is cut at 1 KiB and answered.
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(strings.Repeat("x", 4000) + "\n")); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if want := "p " + strings.Repeat("x", serveLineMax) + "\n"; reply != want {
		t.Errorf("reply has %d bytes, want %d", len(reply), len(want))
	}

	// A client that never sends is disconnected after the I/O timeout.
	if testing.Short() {
		return
	}
	c2, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_ = c2.SetDeadline(time.Now().Add(serveIOTimeout + 3*time.Second))
	start := time.Now()
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Error("idle connection: read data, want EOF")
	}
	if d := time.Since(start); d > serveIOTimeout+2*time.Second {
		t.Errorf("idle connection closed after %s", d)
	}
}

func TestServeBindFailure(t *testing.T) {
	// 192.0.2.1 (TEST-NET-1) is not a local address: bind must fail and
	// Serve must return rather than serve partially.
	err := Serve(context.Background(), ServeConfig{Name: "x", Listen: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.1")}, TCP: []uint16{0}})
	if err == nil {
		t.Fatal("Serve on a foreign address: want an error")
	}
}
