package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
)

// echo serves line echo on ln until it is closed.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := c.Write([]byte(line)); err != nil {
					return
				}
			}
		}()
	}
}

func udpEcho(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// roundTrip sends one line over c and expects it back.
func roundTrip(c net.Conn, r *bufio.Reader, msg string) error {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, msg); err != nil {
		return fmt.Errorf("send %q: %w", msg, err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("read echo of %q: %w", msg, err)
	}
	if strings.TrimSpace(got) != msg {
		return fmt.Errorf("echo of %q = %q", msg, got)
	}
	return nil
}

func udpRoundTrip(t *testing.T, ns string, dst netip.AddrPort) error {
	return inNetns(t, ns, func() error {
		c, err := net.DialTimeout("udp", dst.String(), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("ping-udp")); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			return fmt.Errorf("udp %s: %w", dst, err)
		}
		if string(buf[:n]) != "ping-udp" {
			return fmt.Errorf("udp %s echoed %q", dst, buf[:n])
		}
		return nil
	})
}

func tcpDialIn(t *testing.T, ns string, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := inNetns(t, ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", dst.String(), 2*time.Second)
		return err
	})
	return c, err
}

// TestPodHostAndRestart covers pod↔host TCP/UDP in both directions, a live
// TCP connection between two pods across an agent restart, and that DEL
// removes the veth, the endpoint map entry and the address.
func TestPodHostAndRestart(t *testing.T) {
	l := newLab(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, name := range []string{"a", "b"} {
		if _, err := l.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: name}); err != nil {
			t.Fatalf("add pod %s: %v", name, err)
		}
	}
	n := node(t, l)
	a, b := pod(t, l, "default/a"), pod(t, l, "default/b")
	c := api.NewClient(n.Socket)
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	router := st.RouterIP

	// Servers in the node namespace (the "host" of the pods), bound to the
	// router address, and an echo server in pod b.
	var hostTCP net.Listener
	var hostUDP net.PacketConn
	if err := inNetns(t, n.Netns, func() error {
		var err error
		if hostTCP, err = net.Listen("tcp", netip.AddrPortFrom(router, 7100).String()); err != nil {
			return err
		}
		hostUDP, err = net.ListenPacket("udp", netip.AddrPortFrom(router, 7101).String())
		return err
	}); err != nil {
		t.Fatalf("host servers: %v", err)
	}
	defer hostTCP.Close()
	defer hostUDP.Close()
	go echo(hostTCP)
	go udpEcho(hostUDP)
	var podTCP net.Listener
	var podUDP net.PacketConn
	if err := inNetns(t, b.Netns, func() error {
		var err error
		if podTCP, err = net.Listen("tcp", netip.AddrPortFrom(b.IP, 7200).String()); err != nil {
			return err
		}
		podUDP, err = net.ListenPacket("udp", netip.AddrPortFrom(b.IP, 7201).String())
		return err
	}); err != nil {
		t.Fatalf("pod servers: %v", err)
	}
	defer podTCP.Close()
	defer podUDP.Close()
	go echo(podTCP)
	go udpEcho(podUDP)

	t.Run("pod to host tcp", func(t *testing.T) {
		conn, err := tcpDialIn(t, a.Netns, netip.AddrPortFrom(router, 7100))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := roundTrip(conn, bufio.NewReader(conn), "hello host"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("pod to host udp", func(t *testing.T) {
		if err := udpRoundTrip(t, a.Netns, netip.AddrPortFrom(router, 7101)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("host to pod tcp", func(t *testing.T) {
		conn, err := tcpDialIn(t, n.Netns, netip.AddrPortFrom(b.IP, 7200))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := roundTrip(conn, bufio.NewReader(conn), "hello pod"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("host to pod udp", func(t *testing.T) {
		if err := udpRoundTrip(t, n.Netns, netip.AddrPortFrom(b.IP, 7201)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("pod to pod udp", func(t *testing.T) {
		if err := udpRoundTrip(t, a.Netns, netip.AddrPortFrom(b.IP, 7201)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("live tcp survives agent restart", func(t *testing.T) {
		before, err := c.Endpoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := tcpDialIn(t, a.Netns, netip.AddrPortFrom(b.IP, 7200))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		if err := roundTrip(conn, r, "before restart"); err != nil {
			t.Fatal(err)
		}
		// Keep the connection busy while the agent goes down and up.
		done := make(chan error, 1)
		stop := make(chan struct{})
		go func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					done <- nil
					return
				case <-time.After(20 * time.Millisecond):
				}
				if err := roundTrip(conn, r, fmt.Sprintf("during restart %d", i)); err != nil {
					done <- err
					return
				}
			}
		}()
		if err := l.RestartAgent(ctx, n.Name); err != nil {
			close(stop)
			t.Fatalf("restart agent: %v", err)
		}
		close(stop)
		if err := <-done; err != nil {
			t.Fatalf("connection broke during restart: %v", err)
		}
		if err := roundTrip(conn, r, "after restart"); err != nil {
			t.Fatal(err)
		}
		after, err := c.Endpoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Fatalf("endpoints after restart: %d, before: %d", len(after), len(before))
		}
		for i := range before {
			if before[i].ID != after[i].ID || before[i].IPv4 != after[i].IPv4 || before[i].ContainerID != after[i].ContainerID {
				t.Errorf("endpoint %d changed across restart: %+v → %+v", i, before[i], after[i])
			}
		}
	})

	t.Run("del removes veth, map entry and address", func(t *testing.T) {
		ep, err := c.Endpoint(ctx, b.ContainerID)
		if err != nil {
			t.Fatal(err)
		}
		stBefore, _ := c.Status(ctx)
		if err := l.DelPod(ctx, "default", "b"); err != nil {
			t.Fatal(err)
		}
		nsh, err := netns.GetFromName(n.Netns)
		if err != nil {
			t.Fatal(err)
		}
		defer nsh.Close()
		h, err := netlink.NewHandleAt(nsh)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if _, err := h.LinkByName(ep.HostIfName); err == nil {
			t.Errorf("veth %s still exists after DEL", ep.HostIfName)
		}
		entries, err := c.BPFEndpoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.IP == ep.IPv4 {
				t.Errorf("endpoint map still has %s after DEL", ep.IPv4)
			}
		}
		stAfter, _ := c.Status(ctx)
		if stAfter.IPAM.Allocated != stBefore.IPAM.Allocated-1 {
			t.Errorf("IPAM allocated %d → %d, want one released", stBefore.IPAM.Allocated, stAfter.IPAM.Allocated)
		}
		// The address is handed out again.
		p, err := l.AddPod(ctx, lab.PodSpec{Namespace: "default", Name: "b2"})
		if err != nil {
			t.Fatal(err)
		}
		if p.IP != ep.IPv4 && !st.PodCIDR.Contains(p.IP) {
			t.Errorf("new pod got %s", p.IP)
		}
	})
}
