package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Traffic server bounds.
const (
	serveLineMax     = 1024
	serveIOTimeout   = 5 * time.Second
	serveMaxConns    = 256
	serveUDPMax      = 64 << 10
	serveUDPPollTick = 500 * time.Millisecond
)

// ServeConfig configures the traffic server run in each pod.
type ServeConfig struct {
	// Name is put in front of every TCP reply ("namespace/name").
	Name string
	// Listen are the addresses to bind (the pod's and 127.0.0.1).
	Listen []netip.Addr
	TCP    []uint16
	UDP    []uint16
	Logger *slog.Logger
}

// Args renders the config as `membrane lab serve` flags.
func (c ServeConfig) Args() []string {
	addrs := make([]string, len(c.Listen))
	for i, a := range c.Listen {
		addrs[i] = a.String()
	}
	args := []string{"--name", c.Name, "--listen", strings.Join(addrs, ",")}
	if len(c.TCP) > 0 {
		args = append(args, "--tcp", joinPorts(c.TCP))
	}
	if len(c.UDP) > 0 {
		args = append(args, "--udp", joinPorts(c.UDP))
	}
	return args
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// ParsePortList parses "8080,9090".
func ParsePortList(s string) ([]uint16, error) {
	var out []uint16
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		n, err := strconv.ParseUint(item, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("parse port %q: want 1-65535", item)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

// Serve runs the traffic server until ctx ends. TCP: for each connection it
// reads one line (at most 1 KiB, 5 s deadline) and replies
// "<name> <line>\n". UDP: a datagram starting with "whoami" gets
// "<name> <datagram>" back (so that a client can tell which pod served
// it); every other datagram is echoed unchanged. It binds every
// Listen address on every port, in the calling goroutine's network
// namespace, and fails if any bind fails.
func Serve(ctx context.Context, cfg ServeConfig) error {
	if cfg.Name == "" || len(cfg.Listen) == 0 || len(cfg.TCP)+len(cfg.UDP) == 0 {
		return errors.New("serve: need a name, listen addresses and at least one port")
	}
	var lns []net.Listener
	var pcs []net.PacketConn
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
		for _, p := range pcs {
			p.Close()
		}
	}
	var lc net.ListenConfig
	for _, a := range cfg.Listen {
		for _, p := range cfg.TCP {
			ln, err := lc.Listen(ctx, "tcp4", netip.AddrPortFrom(a, p).String())
			if err != nil {
				closeAll()
				return fmt.Errorf("serve: %w", err)
			}
			lns = append(lns, ln)
		}
		for _, p := range cfg.UDP {
			pc, err := lc.ListenPacket(ctx, "udp4", netip.AddrPortFrom(a, p).String())
			if err != nil {
				closeAll()
				return fmt.Errorf("serve: %w", err)
			}
			pcs = append(pcs, pc)
		}
	}
	return serveOn(ctx, cfg.Name, lns, pcs, cfg.Logger)
}

// serveOn serves on listeners made by the caller and closes them when ctx
// ends.
func serveOn(ctx context.Context, name string, lns []net.Listener, pcs []net.PacketConn, lg *slog.Logger) error {
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	sem := make(chan struct{}, serveMaxConns)
	for _, ln := range lns {
		lg.Info("serving tcp", "addr", ln.Addr())
		wg.Go(func() {
			defer ln.Close()
			for {
				c, err := ln.Accept()
				if err != nil {
					if ctx.Err() == nil {
						lg.Error("accept", "addr", ln.Addr(), "err", err)
						cancel()
					}
					return
				}
				select {
				case sem <- struct{}{}:
				default:
					c.Close() // too many connections in flight
					continue
				}
				wg.Go(func() {
					defer func() { <-sem }()
					serveTCPConn(c, name)
				})
			}
		})
	}
	for _, pc := range pcs {
		lg.Info("serving udp", "addr", pc.LocalAddr())
		wg.Go(func() {
			defer pc.Close()
			buf := make([]byte, serveUDPMax)
			for ctx.Err() == nil {
				_ = pc.SetReadDeadline(time.Now().Add(serveUDPPollTick))
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					if ctx.Err() == nil {
						lg.Error("udp read", "addr", pc.LocalAddr(), "err", err)
						cancel()
					}
					return
				}
				_ = pc.SetWriteDeadline(time.Now().Add(serveIOTimeout))
				_, _ = pc.WriteTo(udpReply(name, buf[:n]), from)
			}
		})
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	for _, pc := range pcs {
		pc.Close()
	}
	wg.Wait()
	return nil
}

func serveTCPConn(c net.Conn, name string) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(serveIOTimeout))
	r := bufio.NewReaderSize(io.LimitReader(c, serveLineMax), serveLineMax)
	line, err := r.ReadString('\n')
	if err != nil && (err != io.EOF || line == "") {
		return
	}
	line = strings.TrimRight(line, "\r\n")
	_, _ = io.WriteString(c, name+" "+line+"\n")
}

// udpWhoami starts a datagram that asks the server for its name.
const udpWhoami = "whoami"

// udpReply is the server's answer to one datagram.
func udpReply(name string, b []byte) []byte {
	if !bytes.HasPrefix(b, []byte(udpWhoami)) {
		return b
	}
	return append([]byte(name+" "), b...)
}
