package loader

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The decoder reads struct flow_event by offset; the generated Go mirror
// (bpf2go -type flow_event) must have the same packed layout.
func TestFlowEventLayout(t *testing.T) {
	if n := binary.Size(datapathFlowEvent{}); n != flowEventSize {
		t.Fatalf("sizeof(struct flow_event) = %d, decoder expects %d", n, flowEventSize)
	}
	if n := binary.Size(datapathDpConfig{}); n != 16 {
		t.Fatalf("sizeof(struct dp_config) = %d, want 16", n)
	}
	if n := binary.Size(datapathCtEntry{}); n != 32 {
		t.Fatalf("sizeof(struct ct_entry) = %d, want 32 (pinned map format)", n)
	}
}

func encodeFlowEvent(t *testing.T, ev datapathFlowEvent) []byte {
	t.Helper()
	raw, err := binary.Append(nil, binary.LittleEndian, ev)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestDecodeEvent(t *testing.T) {
	boot := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	bootOffset := time.Duration(boot.UnixNano())
	a4 := func(s string) (b [16]uint8) {
		a := netip.MustParseAddr(s).As4()
		copy(b[:], a[:])
		return b
	}
	for _, tc := range []struct {
		name string
		in   datapathFlowEvent
		want Event
	}{
		{
			name: "policy drop",
			in: datapathFlowEvent{
				TsNs: uint64(90 * time.Second), Type: 1, Reason: 1, ObsPoint: 1, Verdict: 1,
				Direction: 1, Protocol: 6, TcpFlags: 0x02, Family: 4, SrcEp: 1, DstEp: 2,
				SrcIdentity: 1001, DstIdentity: 1002, Cookie: 9, Ifindex: 7, PktLen: 54,
				Saddr: a4("10.1.0.10"), Daddr: a4("10.1.0.11"),
				Sport: hton16(40000), Dport: hton16(80), CtState: 1,
			},
			want: Event{
				Time: boot.Add(90 * time.Second), Type: EventDrop, Reason: DropPolicyDenied,
				ObsPoint: ObsFromEndpoint, Dropped: true, Egress: true, Proto: 6, TCPFlags: 0x02,
				SrcEP: 1, DstEP: 2, SrcIdentity: 1001, DstIdentity: 1002, Cookie: 9, IfIndex: 7, Len: 54,
				Src: netip.MustParseAddrPort("10.1.0.10:40000"), Dst: netip.MustParseAddrPort("10.1.0.11:80"),
				CTState: CTStateNew,
			},
		},
		{
			name: "trace of a reply",
			in: datapathFlowEvent{
				TsNs: 5, Type: 2, ObsPoint: 4, Protocol: 17, Family: 4, DstEp: 3,
				SrcIdentity: 1, DstIdentity: 1003, Ifindex: 9, PktLen: 60,
				Saddr: a4("10.1.0.1"), Daddr: a4("10.1.0.12"),
				Sport: hton16(53), Dport: hton16(33000), CtState: 3,
			},
			want: Event{
				Time: boot.Add(5), Type: EventTrace, ObsPoint: ObsFromHost, Proto: 17,
				DstEP: 3, SrcIdentity: 1, DstIdentity: 1003, IfIndex: 9, Len: 60,
				Src: netip.MustParseAddrPort("10.1.0.1:53"), Dst: netip.MustParseAddrPort("10.1.0.12:33000"),
				CTState: CTStateReply,
			},
		},
		{
			name: "drop before the IP header: no addresses",
			in:   datapathFlowEvent{TsNs: 1, Type: 1, Reason: 8, ObsPoint: 4, Verdict: 1, Ifindex: 3, PktLen: 74},
			want: Event{Time: boot.Add(1), Type: EventDrop, Reason: DropUnsupportedL3, ObsPoint: ObsFromHost,
				Dropped: true, IfIndex: 3, Len: 74},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodeEvent(encodeFlowEvent(t, tc.in), bootOffset)
			if err != nil {
				t.Fatalf("DecodeEvent: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("DecodeEvent (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("short sample", func(t *testing.T) {
		_, err := DecodeEvent(make([]byte, flowEventSize-1), 0)
		if !errors.Is(err, ErrShortEvent) {
			t.Errorf("DecodeEvent(79 bytes) = %v, want ErrShortEvent", err)
		}
	})
	t.Run("unknown family", func(t *testing.T) {
		if _, err := DecodeEvent(encodeFlowEvent(t, datapathFlowEvent{Family: 5}), 0); err == nil {
			t.Errorf("DecodeEvent(family 5) succeeded")
		}
	})
}

func TestEventStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{EventDrop.String(), "drop"},
		{EventTrace.String(), "trace"},
		{EventPolicyVerdict.String(), "policy-verdict"},
		{EventType(9).String(), "event-type-9"},
		{ObsFromEndpoint.String(), "from-endpoint"},
		{ObsToEndpoint.String(), "to-endpoint"},
		{ObsToStack.String(), "to-stack"},
		{ObsFromHost.String(), "from-host"},
		{ObsToOverlay.String(), "to-overlay"},
		{ObsFromOverlay.String(), "from-overlay"},
		{ObsPoint(0).String(), "obs-point-0"},
		{CTStateNone.String(), "none"},
		{CTStateNew.String(), "new"},
		{CTStateEstablished.String(), "established"},
		{CTStateReply.String(), "reply"},
		{MonitorOff.String(), "off"},
		{MonitorDrops.String(), "drops"},
		{MonitorDefault.String(), "default"},
		{MonitorAll.String(), "all"},
		{MonitorLevel(0).String(), "default"},
		{MonitorLevel(7).String(), "MonitorLevel(7)"},
	} {
		if tc.got != tc.want {
			t.Errorf("String() = %q, want %q", tc.got, tc.want)
		}
	}

	e := Event{Type: EventDrop, Reason: DropPolicyDenied, ObsPoint: ObsFromEndpoint, Dropped: true, Egress: true,
		Proto: 6, TCPFlags: 0x02, SrcEP: 1, DstEP: 2, SrcIdentity: 1001, DstIdentity: 1002, Cookie: 9,
		Src: netip.MustParseAddrPort("10.1.0.10:40000"), Dst: netip.MustParseAddrPort("10.1.0.11:80"), CTState: CTStateNew}
	want := "drop (policy denied) from-endpoint egress 10.1.0.10:40000 -> 10.1.0.11:80 proto 6 flags 0x02 " +
		"ep 1 -> 2 identity 1001 -> 1002 cookie 9 ct new"
	if got := e.String(); got != want {
		t.Errorf("Event.String() =\n%q, want\n%q", got, want)
	}
}

func TestParseMonitorLevel(t *testing.T) {
	for in, want := range map[string]MonitorLevel{
		"off": MonitorOff, "0": MonitorOff, "drops": MonitorDrops, "1": MonitorDrops,
		"default": MonitorDefault, "medium": MonitorDefault, "Default": MonitorDefault, "2": MonitorDefault,
		"all": MonitorAll, " ALL ": MonitorAll, "3": MonitorAll,
	} {
		got, err := ParseMonitorLevel(in)
		if err != nil || got != want {
			t.Errorf("ParseMonitorLevel(%q) = %v, %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "4", "verbose", "-1"} {
		if got, err := ParseMonitorLevel(in); err == nil {
			t.Errorf("ParseMonitorLevel(%q) = %v, want error", in, got)
		}
	}
	// Names round-trip.
	for l := MonitorOff; l <= MonitorAll; l++ {
		if got, err := ParseMonitorLevel(l.String()); err != nil || got != l {
			t.Errorf("ParseMonitorLevel(%q) = %v, %v", l.String(), got, err)
		}
	}
}

func TestConfigValidateEvents(t *testing.T) {
	base := Config{PinDir: "/sys/fs/bpf/m", RouterIPv4: netip.MustParseAddr("10.1.0.1")}
	bad := MonitorAll + 1
	for _, tc := range []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"default ring", func(c *Config) {}, ""},
		{"one page ring", func(c *Config) { c.EventsRingSize = 4096 }, ""},
		{"16 MiB ring", func(c *Config) { c.EventsRingSize = 16 << 20 }, ""},
		{"ring not a power of two", func(c *Config) { c.EventsRingSize = 3 * 4096 }, "power of two"},
		{"ring below a page", func(c *Config) { c.EventsRingSize = 1024 }, "page size"},
		{"monitor level off", func(c *Config) { c.MonitorLevel = MonitorOff }, ""},
		{"monitor level all", func(c *Config) { c.MonitorLevel = MonitorAll }, ""},
		{"monitor level out of range", func(c *Config) { c.MonitorLevel = bad }, "invalid monitor level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.mod(&cfg)
			err := cfg.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate() = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}
