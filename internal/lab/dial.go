package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Dial bounds and defaults.
const (
	MaxDialCount       = 10000
	DefaultDialTimeout = time.Second
	dialResend         = 300 * time.Millisecond
	dialReplyMax       = 4096
)

// DialSpec configures Dial, the client that service tests run inside a pod
// or the external host (`membrane lab exec POD -- membrane lab dial …`).
type DialSpec struct {
	Proto   string         // "tcp" (default) or "udp"
	Target  netip.AddrPort // IPv4 address and port
	Count   int            // attempts; default 1, at most MaxDialCount
	Timeout time.Duration  // per attempt; default 1 s
	// ReuseUDP sends every attempt's datagram from one unconnected UDP
	// socket (sendmsg/recvmsg), and reports each reply's source address.
	// Without it every attempt uses a new connected socket (connect).
	ReuseUDP bool
	// Peer reports getpeername() of each attempt's connected socket.
	Peer bool
	// SourcePort, if set, binds attempt i to local port SourcePort+i-1
	// (new sockets only), so that a run can repeat the same flows.
	SourcePort uint16
}

// DialAttempt is the outcome of one attempt.
type DialAttempt struct {
	Seq    int            `json:"seq"` // 1-based
	OK     bool           `json:"ok"`
	Answer string         `json:"answer,omitempty"` // the serving pod's name, from its reply
	From   netip.AddrPort `json:"from,omitzero"`    // udp: source address of the reply (recvfrom)
	Peer   netip.AddrPort `json:"peer,omitzero"`    // getpeername() (with DialSpec.Peer)
	Time   time.Duration  `json:"time"`
	Err    string         `json:"error,omitempty"` // e.g. "connect 10.96.0.10:80: operation not permitted"
}

// DialReport is the outcome of Dial.
type DialReport struct {
	Proto    string         `json:"proto"`
	Target   netip.AddrPort `json:"target"`
	Attempts []DialAttempt  `json:"attempts"`
	OK       int            `json:"ok"`
	Failed   int            `json:"failed"`
	Answers  map[string]int `json:"answers"` // answer → attempts it served
}

// FirstError is the first failed attempt's error; "" if none failed.
func (r DialReport) FirstError() string {
	for _, a := range r.Attempts {
		if !a.OK {
			return a.Err
		}
	}
	return ""
}

// Dial makes spec.Count attempts against spec.Target from the caller's
// network namespace (and cgroup), one after another, each bounded by
// spec.Timeout. TCP: connect, send "dial <seq>", read "<name> dial <seq>".
// UDP: send "whoami <token>" (resent every 300 ms within the timeout),
// read "<name> whoami <token>". Failed attempts are recorded, not
// returned: the error is for a bad spec or a cancelled ctx only.
func Dial(ctx context.Context, spec DialSpec) (DialReport, error) {
	if spec.Proto == "" {
		spec.Proto = "tcp"
	}
	if spec.Count == 0 {
		spec.Count = 1
	}
	if spec.Timeout <= 0 {
		spec.Timeout = DefaultDialTimeout
	}
	switch {
	case spec.Proto != "tcp" && spec.Proto != "udp":
		return DialReport{}, fmt.Errorf("dial: protocol %q: want tcp or udp", spec.Proto)
	case !spec.Target.Addr().Is4() || spec.Target.Port() == 0:
		return DialReport{}, fmt.Errorf("dial: target %q: want IPv4:PORT", spec.Target)
	case spec.Count < 1 || spec.Count > MaxDialCount:
		return DialReport{}, fmt.Errorf("dial: count %d: want 1 to %d", spec.Count, MaxDialCount)
	case spec.ReuseUDP && spec.Proto != "udp":
		return DialReport{}, errors.New("dial: reusing a socket is for udp only")
	case spec.ReuseUDP && spec.Peer:
		return DialReport{}, errors.New("dial: the reused UDP socket is unconnected and has no peer; drop one of the two options")
	case spec.SourcePort != 0 && spec.ReuseUDP:
		return DialReport{}, errors.New("dial: a source port per attempt needs a new socket per attempt; drop --reuse-udp")
	case spec.SourcePort != 0 && int(spec.SourcePort)+spec.Count-1 > 65535:
		return DialReport{}, fmt.Errorf("dial: source ports %d+%d run past 65535", spec.SourcePort, spec.Count)
	}
	rep := DialReport{Proto: spec.Proto, Target: spec.Target, Answers: map[string]int{}}
	var shared *net.UDPConn
	if spec.ReuseUDP {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			return rep, fmt.Errorf("dial: open udp socket: %w", err)
		}
		defer c.Close()
		shared = c
	}
	for seq := 1; seq <= spec.Count; seq++ {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("dial: %w", err)
		}
		a := DialAttempt{Seq: seq}
		start := time.Now()
		deadline := start.Add(spec.Timeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		var err error
		switch {
		case spec.Proto == "tcp":
			err = dialTCP(ctx, spec, &a, deadline)
		case shared != nil:
			err = dialUDPOn(shared, spec.Target, &a, deadline)
		default:
			err = dialUDP(spec, &a, deadline)
		}
		a.Time = time.Since(start).Round(time.Microsecond)
		if err != nil {
			a.Err = err.Error()
			rep.Failed++
		} else {
			a.OK = true
			rep.OK++
			rep.Answers[a.Answer]++
		}
		rep.Attempts = append(rep.Attempts, a)
	}
	return rep, nil
}

// localAddr is the source address of attempt a: nil (any), or the
// spec's source port plus the attempt's offset.
func localAddr(spec DialSpec, a *DialAttempt) netip.AddrPort {
	if spec.SourcePort == 0 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(netip.IPv4Unspecified(), spec.SourcePort+uint16(a.Seq-1))
}

func dialTCP(ctx context.Context, spec DialSpec, a *DialAttempt, deadline time.Time) error {
	d := net.Dialer{Deadline: deadline}
	if la := localAddr(spec, a); la.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(la)
	}
	c, err := d.DialContext(ctx, "tcp4", spec.Target.String())
	if err != nil {
		return fmt.Errorf("connect %s: %s", spec.Target, errReason(err))
	}
	defer c.Close()
	if spec.Peer {
		if a.Peer, err = getpeername(c.(*net.TCPConn)); err != nil {
			return err
		}
	}
	_ = c.SetDeadline(deadline)
	msg := "dial " + strconv.Itoa(a.Seq)
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return fmt.Errorf("send to %s: %s", spec.Target, errReason(err))
	}
	line, err := bufio.NewReader(io.LimitReader(c, dialReplyMax)).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read reply from %s: %s", spec.Target, errReason(err))
	}
	return parseAnswer(a, strings.TrimSuffix(line, "\n"), msg)
}

// dialUDP uses a new connected socket: connect() picks the destination.
func dialUDP(spec DialSpec, a *DialAttempt, deadline time.Time) error {
	var local *net.UDPAddr
	if la := localAddr(spec, a); la.IsValid() {
		local = net.UDPAddrFromAddrPort(la)
	}
	c, err := net.DialUDP("udp4", local, net.UDPAddrFromAddrPort(spec.Target))
	if err != nil {
		return fmt.Errorf("connect %s: %s", spec.Target, errReason(err))
	}
	defer c.Close()
	if spec.Peer {
		if a.Peer, err = getpeername(c); err != nil {
			return err
		}
	}
	return udpExchange(a, spec.Target, deadline,
		func(b []byte) error { _, err := c.Write(b); return err },
		c.ReadFromUDPAddrPort, c.SetReadDeadline)
}

// dialUDPOn uses the shared unconnected socket: every datagram names its
// destination (sendmsg) and the reply's source is what recvmsg reports.
func dialUDPOn(c *net.UDPConn, target netip.AddrPort, a *DialAttempt, deadline time.Time) error {
	return udpExchange(a, target, deadline,
		func(b []byte) error { _, err := c.WriteToUDPAddrPort(b, target); return err },
		c.ReadFromUDPAddrPort, c.SetReadDeadline)
}

// udpExchange sends a whoami token, resending until deadline, and waits
// for the reply carrying it; replies to earlier attempts are skipped.
func udpExchange(a *DialAttempt, target netip.AddrPort, deadline time.Time,
	send func([]byte) error, recv func([]byte) (int, netip.AddrPort, error), setDeadline func(time.Time) error,
) error {
	var tok [8]byte
	_, _ = rand.Read(tok[:])
	msg := udpWhoami + " " + strconv.Itoa(a.Seq) + "-" + hex.EncodeToString(tok[:])
	buf := make([]byte, dialReplyMax)
	for {
		if err := send([]byte(msg)); err != nil {
			return fmt.Errorf("send to %s: %s", target, errReason(err))
		}
		_ = setDeadline(minTime(deadline, time.Now().Add(dialResend)))
		for {
			n, from, err := recv(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && time.Now().Before(deadline) {
					break // resend
				}
				return fmt.Errorf("read reply from %s: %s", target, errReason(err))
			}
			reply := string(buf[:n])
			if !strings.HasSuffix(reply, " "+msg) {
				continue // a late reply to an earlier attempt, or noise
			}
			a.From = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
			return parseAnswer(a, reply, msg)
		}
	}
}

// parseAnswer takes the server's name from "<name> <msg>".
func parseAnswer(a *DialAttempt, reply, msg string) error {
	name, ok := strings.CutSuffix(reply, " "+msg)
	if !ok || name == "" {
		return fmt.Errorf("unexpected reply %q to %q", reply, msg)
	}
	a.Answer = name
	return nil
}

// getpeername asks the kernel for the connected socket's peer (what a
// getpeername hook may translate), not Go's cached address.
func getpeername(c syscall.Conn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("getpeername: %w", err)
	}
	var sa syscall.Sockaddr
	var serr error
	if err := rc.Control(func(fd uintptr) { sa, serr = syscall.Getpeername(int(fd)) }); err != nil {
		return netip.AddrPort{}, fmt.Errorf("getpeername: %w", err)
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("getpeername: %w", serr)
	}
	sa4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("getpeername: not an IPv4 address: %T", sa)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(sa4.Port)), nil
}

// errReason is the errno's text ("operation not permitted"), "timeout" or
// "connection closed"; else the error itself.
func errReason(err error) string {
	var errno syscall.Errno
	var ne net.Error
	switch {
	case errors.As(err, &errno):
		return errno.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF):
		return "connection closed"
	}
	return err.Error()
}

// ---- text form: one line per attempt, then a summary ----

// Render prints one line per attempt and a summary line:
//
//	seq=1 result=ok answer=default/web-1 from=10.96.0.10:53 peer=10.96.0.10:53 time=1.2ms
//	seq=2 result=fail error="connect 10.96.0.10:80: operation not permitted" time=35µs
//	summary proto=tcp target=10.96.0.10:80 attempts=2 ok=1 failed=1 answers=default/web-1=1
//
// Values with spaces or quotes are Go-quoted. ParseDialReport reads it
// back.
func (r DialReport) Render(w io.Writer) error {
	for _, a := range r.Attempts {
		kv := []string{"seq=" + strconv.Itoa(a.Seq)}
		if a.OK {
			kv = append(kv, "result=ok", "answer="+quoteValue(a.Answer))
		} else {
			kv = append(kv, "result=fail", "error="+quoteValue(a.Err))
		}
		if a.From.IsValid() {
			kv = append(kv, "from="+a.From.String())
		}
		if a.Peer.IsValid() {
			kv = append(kv, "peer="+a.Peer.String())
		}
		kv = append(kv, "time="+a.Time.String())
		if _, err := fmt.Fprintln(w, strings.Join(kv, " ")); err != nil {
			return err
		}
	}
	names := make([]string, 0, len(r.Answers))
	for n := range r.Answers {
		names = append(names, n)
	}
	slices.Sort(names)
	answers := make([]string, len(names))
	for i, n := range names {
		answers[i] = n + "=" + strconv.Itoa(r.Answers[n])
	}
	_, err := fmt.Fprintf(w, "summary proto=%s target=%s attempts=%d ok=%d failed=%d answers=%s\n",
		r.Proto, r.Target, len(r.Attempts), r.OK, r.Failed, quoteValue(strings.Join(answers, ",")))
	return err
}

func quoteValue(s string) string {
	if s == "" || strings.ContainsAny(s, " \t\"\\") || !strconv.CanBackquote(s) {
		return strconv.Quote(s)
	}
	return s
}

// ParseDialReport reads Render's output back. Only lines starting with
// "seq=" or "summary " count, so that the output may be mixed with stderr
// (`lab exec` returns both); a missing summary is an error.
func ParseDialReport(text string) (DialReport, error) {
	rep := DialReport{Answers: map[string]int{}}
	summary := false
	for i, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		if !strings.HasPrefix(line, "seq=") && !strings.HasPrefix(line, "summary ") {
			continue
		}
		kv, err := splitKV(line)
		if err != nil {
			return rep, fmt.Errorf("parse dial output line %d %q: %w", i+1, line, err)
		}
		if err := rep.parseLine(kv, &summary); err != nil {
			return rep, fmt.Errorf("parse dial output line %d %q: %w", i+1, line, err)
		}
	}
	if !summary {
		return rep, errors.New("parse dial output: no summary line")
	}
	return rep, nil
}

func (rep *DialReport) parseLine(kv map[string]string, summary *bool) error {
	if _, ok := kv["summary"]; ok {
		*summary = true
		rep.Proto = kv["proto"]
		t, err := netip.ParseAddrPort(kv["target"])
		if err != nil {
			return fmt.Errorf("target: %w", err)
		}
		rep.Target = t
		if rep.OK, err = strconv.Atoi(kv["ok"]); err != nil {
			return fmt.Errorf("ok: %w", err)
		}
		if rep.Failed, err = strconv.Atoi(kv["failed"]); err != nil {
			return fmt.Errorf("failed: %w", err)
		}
		n, err := strconv.Atoi(kv["attempts"])
		if err != nil || n != len(rep.Attempts) {
			return fmt.Errorf("attempts %q: want %d (the lines above)", kv["attempts"], len(rep.Attempts))
		}
		if kv["answers"] == "" {
			return nil
		}
		for item := range strings.SplitSeq(kv["answers"], ",") {
			i := strings.LastIndexByte(item, '=')
			c, err := strconv.Atoi(item[i+1:])
			if i <= 0 || err != nil {
				return fmt.Errorf("answers item %q: want NAME=COUNT", item)
			}
			rep.Answers[item[:i]] = c
		}
		return nil
	}
	var a DialAttempt
	var err error
	if a.Seq, err = strconv.Atoi(kv["seq"]); err != nil {
		return fmt.Errorf("seq: %w", err)
	}
	switch kv["result"] {
	case "ok":
		a.OK, a.Answer = true, kv["answer"]
	case "fail":
		a.Err = kv["error"]
	default:
		return fmt.Errorf("result %q: want ok or fail", kv["result"])
	}
	for _, f := range []struct {
		key string
		dst *netip.AddrPort
	}{{"from", &a.From}, {"peer", &a.Peer}} {
		if v, ok := kv[f.key]; ok {
			if *f.dst, err = netip.ParseAddrPort(v); err != nil {
				return fmt.Errorf("%s: %w", f.key, err)
			}
		}
	}
	if a.Time, err = time.ParseDuration(kv["time"]); err != nil {
		return fmt.Errorf("time: %w", err)
	}
	rep.Attempts = append(rep.Attempts, a)
	return nil
}

// splitKV splits `key=value key="quoted value" word` into a map; a bare
// word maps to "".
func splitKV(line string) (map[string]string, error) {
	out := map[string]string{}
	s := strings.TrimSpace(line)
	for s != "" {
		end := strings.IndexAny(s, " =")
		if end < 0 {
			out[s] = ""
			break
		}
		key := s[:end]
		if s[end] == ' ' {
			out[key] = ""
			s = strings.TrimLeft(s[end:], " ")
			continue
		}
		s = s[end+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			q, err := strconv.QuotedPrefix(s)
			if err != nil {
				return nil, fmt.Errorf("value of %s: %w", key, err)
			}
			val, _ = strconv.Unquote(q)
			s = s[len(q):]
		} else {
			i := strings.IndexByte(s, ' ')
			if i < 0 {
				i = len(s)
			}
			val, s = s[:i], s[i:]
		}
		out[key] = val
		s = strings.TrimLeft(s, " ")
	}
	return out, nil
}
