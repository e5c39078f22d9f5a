package lab

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// startLocalServer runs the lab's traffic server on 127.0.0.1 with one TCP
// and one UDP port chosen by the kernel; no root needed.
func startLocalServer(t *testing.T, name string) (tcp, udp netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = serveOn(ctx, name, []net.Listener{ln}, []net.PacketConn{pc}, nil)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().(*net.TCPAddr).AddrPort(), pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestDialLocal: every mode against the real server answers with the
// server's name; the text form parses back to the same report.
func TestDialLocal(t *testing.T) {
	tcp, udp := startLocalServer(t, "default/web-1")
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		spec DialSpec
		from bool // expect from= (udp)
		peer bool // expect peer=
	}{
		{"tcp", DialSpec{Target: tcp, Count: 3}, false, false},
		{"tcp-peer", DialSpec{Target: tcp, Count: 2, Peer: true}, false, true},
		{"udp", DialSpec{Proto: "udp", Target: udp, Count: 3, Peer: true}, true, true},
		{"udp-reuse", DialSpec{Proto: "udp", Target: udp, Count: 4, ReuseUDP: true}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := Dial(ctx, tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Failed != 0 || rep.OK != tc.spec.Count || rep.Answers["default/web-1"] != tc.spec.Count {
				t.Fatalf("report %+v", rep)
			}
			for _, a := range rep.Attempts {
				if tc.from && a.From != tc.spec.Target {
					t.Errorf("attempt %d: reply from %s, want %s", a.Seq, a.From, tc.spec.Target)
				}
				if tc.peer && a.Peer != tc.spec.Target {
					t.Errorf("attempt %d: peer %s, want %s", a.Seq, a.Peer, tc.spec.Target)
				}
			}
			var b bytes.Buffer
			if err := rep.Render(&b); err != nil {
				t.Fatal(err)
			}
			got, err := ParseDialReport(b.String())
			if err != nil {
				t.Fatalf("%v\n%s", err, b.String())
			}
			if diff := cmp.Diff(rep, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
				t.Errorf("render/parse round trip (-want +got):\n%s\n%s", diff, b.String())
			}
		})
	}
}

// TestDialFailure: a refused connection is a failed attempt whose error
// names the target and the reason; the output still parses.
func TestDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close() // nothing listens there now
	rep, err := Dial(context.Background(), DialSpec{Target: target, Count: 2, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	want := "connect " + target.String() + ": connection refused"
	if rep.Failed != 2 || rep.FirstError() != want {
		t.Fatalf("failed %d, first error %q; want 2, %q", rep.Failed, rep.FirstError(), want)
	}
	var b bytes.Buffer
	_ = rep.Render(&b)
	if !strings.Contains(b.String(), `error="`+want+`"`) || !strings.Contains(b.String(), "summary proto=tcp target="+target.String()+" attempts=2 ok=0 failed=2 answers=\"\"") {
		t.Errorf("output:\n%s", b.String())
	}
	if got, err := ParseDialReport(b.String()); err != nil || got.Failed != 2 || got.Attempts[1].Err != want {
		t.Errorf("parse: %+v, %v", got, err)
	}
}

func TestDialSpecErrors(t *testing.T) {
	tgt := netip.MustParseAddrPort("10.96.0.10:80")
	for _, spec := range []DialSpec{
		{Proto: "sctp", Target: tgt},
		{Target: netip.AddrPort{}},
		{Target: tgt, Count: MaxDialCount + 1},
		{Target: tgt, ReuseUDP: true},
		{Proto: "udp", Target: tgt, ReuseUDP: true, Peer: true},
	} {
		if _, err := Dial(context.Background(), spec); err == nil {
			t.Errorf("Dial(%+v): want an error", spec)
		}
	}
}

func TestParseDialReport(t *testing.T) {
	text := `seq=1 result=ok answer=default/web-1 from=10.96.0.10:53 peer=10.96.0.10:53 time=1.2ms
seq=2 result=fail error="connect 10.96.0.10:80: operation not permitted" time=35µs
summary proto=udp target=10.96.0.10:53 attempts=2 ok=1 failed=1 answers=default/web-1=1
Error: dial 10.96.0.10:53: 1 of 2 attempts failed (first: connect 10.96.0.10:80: operation not permitted)
`
	got, err := ParseDialReport(text)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort("10.96.0.10:53")
	want := DialReport{Proto: "udp", Target: ap, OK: 1, Failed: 1, Answers: map[string]int{"default/web-1": 1},
		Attempts: []DialAttempt{
			{Seq: 1, OK: true, Answer: "default/web-1", From: ap, Peer: ap, Time: 1200 * time.Microsecond},
			{Seq: 2, Err: "connect 10.96.0.10:80: operation not permitted", Time: 35 * time.Microsecond},
		}}
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.AddrPort{})); diff != "" {
		t.Error(diff)
	}
	for _, bad := range []string{
		"seq=1 result=ok answer=x time=1ms\n", // no summary
		"seq=1 result=maybe time=1ms\nsummary proto=tcp target=1.2.3.4:5 attempts=1 ok=1 failed=0 answers=\n",
		"summary proto=tcp target=1.2.3.4:5 attempts=3 ok=1 failed=0 answers=\n", // count mismatch
		`seq=1 result=fail error="unterminated time=1ms` + "\n",
	} {
		if _, err := ParseDialReport(bad); err == nil {
			t.Errorf("ParseDialReport(%q): want an error", bad)
		}
	}
}

// TestUDPReply: whoami datagrams get the name in front, others (the probe's
// tokens) are echoed unchanged.
func TestUDPReply(t *testing.T) {
	if got := string(udpReply("ns/p", []byte("whoami 1-ab"))); got != "ns/p whoami 1-ab" {
		t.Errorf("whoami: %q", got)
	}
	if got := string(udpReply("ns/p", []byte("probe-00ff"))); got != "probe-00ff" {
		t.Errorf("probe: %q", got)
	}
}
