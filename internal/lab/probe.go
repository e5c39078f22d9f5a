package lab

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Probe defaults.
const (
	DefaultProbePort     = 8080
	DefaultProbeTimeout  = time.Second
	DefaultProbeParallel = 8
)

// ProbeSpec selects what Probe measures.
type ProbeSpec struct {
	Port     uint16        // default 8080; ignored for icmp
	Proto    string        // "tcp" (default), "udp" or "icmp"
	Timeout  time.Duration // per pair; default 1 s
	Parallel int           // pairs probed at once; default 8
}

// Matrix is the outcome of a probe: OK[i][j] says whether Pods[i] reached
// Pods[j]; Err[i][j] says why not.
type Matrix struct {
	Proto string     `json:"proto"`
	Port  uint16     `json:"port,omitempty"`
	Pods  []string   `json:"pods"`
	OK    [][]bool   `json:"ok"`
	Err   [][]string `json:"err"`
}

// Full reports whether every pair succeeded.
func (m Matrix) Full() bool {
	for _, row := range m.OK {
		for _, ok := range row {
			if !ok {
				return false
			}
		}
	}
	return true
}

// Render prints the matrix as a table (rows: from, columns: to), a summary
// line and one line per failure.
func (m Matrix) Render(w io.Writer) error {
	title := m.Proto
	if m.Proto != "icmp" {
		title = fmt.Sprintf("%s/%d", m.Proto, m.Port)
	}
	fmt.Fprintf(w, "%s (rows: from, columns: to)\n", title)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "FROM \\ TO")
	for _, p := range m.Pods {
		fmt.Fprintf(tw, "\t%s", p)
	}
	fmt.Fprintln(tw)
	ok, total := 0, 0
	for i, from := range m.Pods {
		fmt.Fprint(tw, from)
		for j := range m.Pods {
			mark := "✗"
			if m.OK[i][j] {
				mark = "✓"
				ok++
			}
			total++
			fmt.Fprintf(tw, "\t%s", mark)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "%d/%d reachable\n", ok, total)
	for i, from := range m.Pods {
		for j, to := range m.Pods {
			if !m.OK[i][j] {
				fmt.Fprintf(w, "✗ %s → %s: %s\n", from, to, m.Err[i][j])
			}
		}
	}
	return nil
}

// Probe tries every pod → every pod's IP (itself included) on the given
// port and protocol, from inside the source pod's network namespace.
func (l *Lab) Probe(ctx context.Context, spec ProbeSpec) (Matrix, error) {
	var targets []probeTarget
	for _, p := range l.Pods() {
		if p.State != PodReady || !p.IP.IsValid() {
			continue
		}
		targets = append(targets, probeTarget{Key: p.Key(), NetnsPath: netnsPath(p.Netns), IP: p.IP})
	}
	if len(targets) == 0 {
		return Matrix{}, fmt.Errorf("probe: lab %s has no ready pods", l.st.Name)
	}
	return probeMatrix(ctx, targets, spec)
}

// probeTarget is one matrix member: where it probes from and its address.
type probeTarget struct {
	Key       string
	NetnsPath string // "" = the caller's namespace (tests without root)
	IP        netip.Addr
}

func probeMatrix(ctx context.Context, targets []probeTarget, spec ProbeSpec) (Matrix, error) {
	if spec.Proto == "" {
		spec.Proto = "tcp"
	}
	spec.Proto = strings.ToLower(spec.Proto)
	switch spec.Proto {
	case "tcp", "udp":
		if spec.Port == 0 {
			spec.Port = DefaultProbePort
		}
	case "icmp":
		spec.Port = 0
	default:
		return Matrix{}, fmt.Errorf("probe: protocol %q: want tcp, udp or icmp", spec.Proto)
	}
	if spec.Timeout <= 0 {
		spec.Timeout = DefaultProbeTimeout
	}
	if spec.Parallel <= 0 {
		spec.Parallel = DefaultProbeParallel
	}
	n := len(targets)
	m := Matrix{Proto: spec.Proto, Port: spec.Port, Pods: make([]string, n), OK: make([][]bool, n), Err: make([][]string, n)}
	for i, t := range targets {
		m.Pods[i] = t.Key
		m.OK[i] = make([]bool, n)
		m.Err[i] = make([]string, n)
	}
	sem := make(chan struct{}, spec.Parallel)
	var wg sync.WaitGroup
	for i, src := range targets {
		for j, dst := range targets {
			if ctx.Err() != nil {
				m.Err[i][j] = ctx.Err().Error()
				continue
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				if err := probeOne(src.NetnsPath, dst.IP, spec.Port, spec.Proto, dst.Key, spec.Timeout); err != nil {
					m.Err[i][j] = err.Error()
				} else {
					m.OK[i][j] = true
				}
			})
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return m, fmt.Errorf("probe: %w", err)
	}
	return m, nil
}

// probeOne checks one pair from inside nsPath: TCP gets "<name> probe"
// back, UDP gets its random token echoed, ICMP gets an echo reply.
func probeOne(nsPath string, dst netip.Addr, port uint16, proto, name string, timeout time.Duration) error {
	var perr error
	err := inNetns(nsPath, func() error {
		deadline := time.Now().Add(timeout)
		switch proto {
		case "tcp":
			perr = probeTCP(dst, port, name, deadline)
		case "udp":
			perr = probeUDP(dst, port, deadline)
		case "icmp":
			perr = probeICMP(dst, deadline)
		default:
			perr = fmt.Errorf("unknown protocol %q", proto)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return perr
}

func probeTCP(dst netip.Addr, port uint16, name string, deadline time.Time) error {
	d := net.Dialer{Deadline: deadline}
	c, err := d.Dial("tcp4", netip.AddrPortFrom(dst, port).String())
	if err != nil {
		return shortErr(err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := io.WriteString(c, "probe\n"); err != nil {
		return shortErr(err)
	}
	line, err := bufio.NewReader(io.LimitReader(c, 4096)).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read reply: %w", shortErr(err))
	}
	if want := name + " probe\n"; line != want {
		return fmt.Errorf("unexpected reply %q, want %q", strings.TrimSpace(line), strings.TrimSpace(want))
	}
	return nil
}

func probeUDP(dst netip.Addr, port uint16, deadline time.Time) error {
	c, err := net.Dial("udp4", netip.AddrPortFrom(dst, port).String())
	if err != nil {
		return shortErr(err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	token = fmt.Appendf(nil, "probe-%x", token)
	// Resend a few times inside the deadline: a datagram may be dropped
	// while neighbours resolve.
	buf := make([]byte, 256)
	for attempt := 0; ; attempt++ {
		if _, err := c.Write(token); err != nil {
			return shortErr(err)
		}
		_ = c.SetReadDeadline(minTime(deadline, time.Now().Add(300*time.Millisecond)))
		for {
			n, err := c.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline) {
					break // resend
				}
				return shortErr(err)
			}
			if bytes.Equal(buf[:n], token) {
				return nil
			}
		}
	}
}

func probeICMP(dst netip.Addr, deadline time.Time) error {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return fmt.Errorf("open icmp socket: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	id := int(binary.BigEndian.Uint16(idb[:]))
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: token}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(b, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return shortErr(err)
	}
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			return shortErr(err)
		}
		pa, ok := peer.(*net.IPAddr)
		if !ok {
			continue
		}
		if from, _ := netip.AddrFromSlice(pa.IP); from.Unmap() != dst {
			continue
		}
		rm, err := icmp.ParseMessage(1, buf[:n]) // 1: ICMP for IPv4
		if err != nil || rm.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		if e, ok := rm.Body.(*icmp.Echo); ok && e.ID == id && e.Seq == 1 && bytes.Equal(e.Data, token) {
			return nil
		}
	}
}

// shortErr keeps error texts in the matrix short and comparable.
func shortErr(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("connection refused")
	case errors.Is(err, syscall.EHOSTUNREACH):
		return errors.New("host unreachable")
	case errors.Is(err, syscall.ENETUNREACH):
		return errors.New("network unreachable")
	case errors.Is(err, syscall.ECONNRESET):
		return errors.New("connection reset")
	case errors.Is(err, syscall.EPERM):
		return errors.New("operation not permitted")
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("timeout")
	case errors.Is(err, io.EOF):
		return errors.New("connection closed")
	}
	return err
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
