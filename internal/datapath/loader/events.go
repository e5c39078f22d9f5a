package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// DefaultEventsRingSize is the default size in bytes of the flow event ring
// buffer (bpf/include/maps.h): some 50k events of 80 bytes (plus an 8-byte
// header each).
const DefaultEventsRingSize = 4 << 20

// MonitorLevel says which flow events the datapath writes. The programs
// read it (MBR_MONITOR_* in bpf/include/common.h, which is the Go value
// minus one) for every packet, so SetMonitorLevel takes effect at once,
// without a reload.
//
// The zero value is not a level of its own: it means MonitorDefault, so
// that a zero Config loads the default. Hence MonitorOff is 1, not 0.
type MonitorLevel uint32

const (
	// MonitorOff: no events at all, not even drops (Metrics still counts
	// every verdict).
	MonitorOff MonitorLevel = 1 + iota
	// MonitorDrops: drops and policy verdicts of new connections.
	MonitorDrops
	// MonitorDefault: drops, policy verdicts, and traces of the packets of
	// a connection that tell something new: the first packet in each
	// direction (the new connection and its first reply) and every packet
	// with TCP flags not seen before in its direction (e.g. the first ACK,
	// FIN, RST). Further packets of a connection are not traced.
	MonitorDefault
	// MonitorAll: drops, policy verdicts and a trace of every IPv4 packet
	// at every observation point.
	MonitorAll
)

var monitorLevelNames = [...]string{
	0:              "default",
	MonitorOff:     "off",
	MonitorDrops:   "drops",
	MonitorDefault: "default",
	MonitorAll:     "all",
}

func (l MonitorLevel) String() string {
	if l <= MonitorAll {
		return monitorLevelNames[l]
	}
	return fmt.Sprintf("MonitorLevel(%d)", uint32(l))
}

// ParseMonitorLevel parses "off", "drops", "default" (also "medium") or
// "all", case-insensitively, or the datapath's number for them, 0..3.
func ParseMonitorLevel(s string) (MonitorLevel, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "off", "0":
		return MonitorOff, nil
	case "drops", "1":
		return MonitorDrops, nil
	case "default", "medium", "2":
		return MonitorDefault, nil
	case "all", "3":
		return MonitorAll, nil
	}
	return 0, fmt.Errorf("invalid monitor level %q (want off, drops, default or all)", s)
}

func (l MonitorLevel) validate() error {
	if l > MonitorAll {
		return fmt.Errorf("invalid monitor level %d", uint32(l))
	}
	return nil
}

// orDefault returns l, or MonitorDefault for the zero value.
func (l MonitorLevel) orDefault() MonitorLevel {
	if l == 0 {
		return MonitorDefault
	}
	return l
}

// SetMonitorLevel changes which events the datapath writes, from the next
// packet on; the zero value sets MonitorDefault. It is idempotent.
func (d *Datapath) SetMonitorLevel(l MonitorLevel) error {
	if err := l.validate(); err != nil {
		return fmt.Errorf("set monitor level: %w", err)
	}
	l = l.orDefault()
	if err := d.updateConfig(func(c *datapathDpConfig) { c.MonitorLevel = uint32(l) - 1 }); err != nil {
		return fmt.Errorf("set monitor level to %s: %w", l, err)
	}
	return nil
}

// MonitorLevel returns the monitor level in force (never the zero value).
func (d *Datapath) MonitorLevel() (MonitorLevel, error) {
	var c datapathDpConfig
	if err := d.objs.MbrConfig.Lookup(uint32(0), &c); err != nil {
		return 0, fmt.Errorf("read monitor level: %w", err)
	}
	return MonitorLevel(c.MonitorLevel + 1), nil
}

// EventsLost returns how many flow events did not fit the ring buffer
// (summed over CPUs) since the counter's map was created. The packets
// themselves were not affected.
func (d *Datapath) EventsLost() (uint64, error) {
	var vals []uint64
	if err := d.objs.MbrEventsLost.Lookup(uint32(0), &vals); err != nil {
		return 0, fmt.Errorf("read lost events: %w", err)
	}
	var n uint64
	for _, v := range vals {
		n += v
	}
	return n, nil
}

// EventType is the kind of a flow event (MBR_EVENT_* in bpf/include/events.h).
type EventType uint8

const (
	EventDrop          EventType = 1 // a packet was dropped
	EventTrace         EventType = 2 // a packet passed an observation point
	EventPolicyVerdict EventType = 3 // a new connection met an enforced policy
)

func (t EventType) String() string {
	switch t {
	case EventDrop:
		return "drop"
	case EventTrace:
		return "trace"
	case EventPolicyVerdict:
		return "policy-verdict"
	}
	return "event-type-" + strconv.Itoa(int(t))
}

// ObsPoint is where the datapath saw a packet (MBR_OBS_* in
// bpf/include/events.h). Drops and policy verdicts are reported at the
// entry point: ObsFromEndpoint or ObsFromHost.
type ObsPoint uint8

const (
	ObsFromEndpoint ObsPoint = 1 // leaving a pod (from_container)
	ObsToEndpoint   ObsPoint = 2 // delivered into a local pod
	ObsToStack      ObsPoint = 3 // handed to the host stack
	ObsFromHost     ObsPoint = 4 // from the host stack towards a pod (from_host)
	ObsToOverlay    ObsPoint = 5 // encapsulated and redirected to the overlay device
	ObsFromOverlay  ObsPoint = 6 // from another node through the overlay (from_overlay)
	ObsSockLB       ObsPoint = 7 // a socket hook translating a service address (cgroup connect/sendmsg)
	ObsFromNetdev   ObsPoint = 8 // arriving on an external device (from_netdev: NodePort)
)

var obsPointNames = [...]string{
	ObsFromEndpoint: "from-endpoint",
	ObsToEndpoint:   "to-endpoint",
	ObsToStack:      "to-stack",
	ObsFromHost:     "from-host",
	ObsToOverlay:    "to-overlay",
	ObsFromOverlay:  "from-overlay",
	ObsSockLB:       "sock-lb",
	ObsFromNetdev:   "from-netdev",
}

func (p ObsPoint) String() string {
	if p >= ObsFromEndpoint && p <= ObsFromNetdev {
		return obsPointNames[p]
	}
	return "obs-point-" + strconv.Itoa(int(p))
}

// CTState is the conntrack state of the packet of an event.
type CTState uint8

const (
	CTStateNone        CTState = 0 // dropped before conntrack
	CTStateNew         CTState = 1 // first packet of a connection
	CTStateEstablished CTState = 2 // original direction of a tracked connection
	CTStateReply       CTState = 3 // reply direction of a tracked connection
)

func (s CTState) String() string {
	switch s {
	case CTStateNone:
		return "none"
	case CTStateNew:
		return "new"
	case CTStateEstablished:
		return "established"
	case CTStateReply:
		return "reply"
	}
	return "ct-state-" + strconv.Itoa(int(s))
}

// Event is one flow event of the datapath.
type Event struct {
	Time        time.Time  // wall clock, converted from the kernel's monotonic clock
	Type        EventType  //
	Reason      DropReason // drops and denied verdicts; Forwarded otherwise
	ObsPoint    ObsPoint   //
	Dropped     bool       // the packet was dropped (drops, denied verdicts)
	Egress      bool       // direction from the endpoint's point of view
	Proto       uint8      // IP protocol
	TCPFlags    uint8      // TCP flags byte of the packet
	SrcEP       uint16     // local endpoint id of the source, 0 if none
	DstEP       uint16     // local endpoint id of the destination, 0 if none
	SrcIdentity uint32     //
	DstIdentity uint32     //
	Cookie      uint32     // deciding policy rule (PolicyValue.Cookie), 0 if none
	IfIndex     uint32     // device the packet arrived on
	Len         uint32     // packet length with Ethernet header
	// Src and Dst are the packet's addresses and conntrack ports (for ICMP
	// echo the echo id, see CTEntry); invalid for a packet dropped before
	// its IP header was read.
	Src, Dst netip.AddrPort
	CTState  CTState
}

// String renders e on one line, e.g.
// "drop (policy denied) from-endpoint egress 10.1.0.10:40000 -> 10.1.0.11:80 proto 6 flags 0x02 ep 1 -> 2 identity 1001 -> 1002 cookie 9 ct new".
func (e Event) String() string {
	var b strings.Builder
	b.WriteString(e.Type.String())
	if e.Type != EventTrace {
		fmt.Fprintf(&b, " (%s)", e.Reason)
	}
	dir := "ingress"
	if e.Egress {
		dir = "egress"
	}
	fmt.Fprintf(&b, " %s %s %s -> %s proto %d", e.ObsPoint, dir, e.Src, e.Dst, e.Proto)
	if e.Proto == protoNumTCP {
		fmt.Fprintf(&b, " flags 0x%02x", e.TCPFlags)
	}
	fmt.Fprintf(&b, " ep %d -> %d identity %d -> %d", e.SrcEP, e.DstEP, e.SrcIdentity, e.DstIdentity)
	if e.Cookie != 0 {
		fmt.Fprintf(&b, " cookie %d", e.Cookie)
	}
	fmt.Fprintf(&b, " ct %s", e.CTState)
	return b.String()
}

const protoNumTCP = 6

// flowEventSize is sizeof(struct flow_event); the offsets below follow its
// layout in bpf/include/events.h.
const flowEventSize = 80

// ErrEventsClosed is what a Read on a closed EventReader returns (wrapped).
// It is os.ErrClosed, as ringbuf.ErrClosed is.
var ErrEventsClosed = os.ErrClosed

// ErrShortEvent is returned (wrapped) by DecodeEvent for a sample shorter
// than a flow event.
var ErrShortEvent = errors.New("flow event too short")

// DecodeEvent decodes one ring buffer sample (struct flow_event, host byte
// order: the datapath is built for little-endian targets only). bootOffset
// is the wall-clock time of the monotonic clock's zero, as a duration since
// the Unix epoch; the event time is bootOffset + ts_ns.
func DecodeEvent(raw []byte, bootOffset time.Duration) (Event, error) {
	if len(raw) < flowEventSize {
		return Event{}, fmt.Errorf("decode flow event: %w: %d bytes, want %d", ErrShortEvent, len(raw), flowEventSize)
	}
	le, be := binary.LittleEndian, binary.BigEndian
	e := Event{
		Time:        time.Unix(0, int64(bootOffset)+int64(le.Uint64(raw[0:8]))),
		Type:        EventType(raw[8]),
		Reason:      DropReason(raw[9]),
		ObsPoint:    ObsPoint(raw[10]),
		Dropped:     raw[11] != 0,
		Egress:      raw[12] != 0,
		Proto:       raw[13],
		TCPFlags:    raw[14],
		SrcEP:       le.Uint16(raw[16:18]),
		DstEP:       le.Uint16(raw[18:20]),
		SrcIdentity: le.Uint32(raw[20:24]),
		DstIdentity: le.Uint32(raw[24:28]),
		Cookie:      le.Uint32(raw[28:32]),
		IfIndex:     le.Uint32(raw[32:36]),
		Len:         le.Uint32(raw[36:40]),
		CTState:     CTState(raw[76]),
	}
	sport, dport := be.Uint16(raw[72:74]), be.Uint16(raw[74:76])
	switch family := raw[15]; family {
	case 0: // dropped before its IP header was read
	case familyIPv4:
		e.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[40:44])), sport)
		e.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(raw[56:60])), dport)
	case familyIPv6:
		e.Src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(raw[40:56])), sport)
		e.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(raw[56:72])), dport)
	default:
		return Event{}, fmt.Errorf("decode flow event: unknown address family %d", family)
	}
	return e, nil
}

// EventReader reads flow events from the datapath's ring buffer. There is
// one ring per node: concurrent readers share (split) the events, so the
// agent should run one reader and fan out itself.
type EventReader struct {
	rd         *ringbuf.Reader
	bootOffset time.Duration

	mu  sync.Mutex // serialises Read; guards rec
	rec ringbuf.Record

	dmu      sync.Mutex // guards deadline (set while a Read blocks)
	deadline time.Time
}

// eventPoll is how often Read looks at the ring: the datapath wakes the
// reader only once a batch has queued (MBR_EVENTS_WAKEUP_BYTES), so a lone
// event waits at most this long.
const eventPoll = 20 * time.Millisecond

// OpenEvents opens a reader of the flow event ring buffer. Close it before
// closing the Datapath.
func (d *Datapath) OpenEvents() (*EventReader, error) {
	off, err := bootOffset()
	if err != nil {
		return nil, fmt.Errorf("open flow events: %w", err)
	}
	rd, err := ringbuf.NewReader(d.objs.MbrEvents)
	if err != nil {
		return nil, fmt.Errorf("open flow events: %w", err)
	}
	return &EventReader{rd: rd, bootOffset: off}, nil
}

// bootOffset returns the wall-clock time at which CLOCK_MONOTONIC (the clock
// of bpf_ktime_get_ns) was zero, as a duration since the Unix epoch. It is
// computed once per reader: a later step of the wall clock (NTP, settime)
// is not reflected in event times.
func bootOffset() (time.Duration, error) {
	m1, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	wall := time.Now()
	m2, err := monotonicNow()
	if err != nil {
		return 0, err
	}
	return time.Duration(wall.UnixNano() - int64(m1+(m2-m1)/2)), nil
}

// Read blocks until the next event, the deadline (an error wrapping
// os.ErrDeadlineExceeded, after all events already in the ring) or Close
// (an error wrapping ErrEventsClosed, i.e. os.ErrClosed and
// ringbuf.ErrClosed).
func (r *EventReader) Read() (Event, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		r.dmu.Lock()
		user := r.deadline
		r.dmu.Unlock()
		d := time.Now().Add(eventPoll)
		if !user.IsZero() && user.Before(d) {
			d = user
		}
		r.rd.SetDeadline(d)
		err := r.rd.ReadInto(&r.rec)
		if err == nil {
			return DecodeEvent(r.rec.RawSample, r.bootOffset)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && (user.IsZero() || time.Now().Before(user)) {
			continue // a poll tick, not the caller's deadline
		}
		return Event{}, fmt.Errorf("read flow event: %w", err)
	}
}

// SetDeadline sets the deadline of Read; the zero time means none. A
// deadline in the past makes Read return the events already in the ring
// and then time out: a way to drain it.
func (r *EventReader) SetDeadline(t time.Time) {
	r.dmu.Lock()
	r.deadline = t
	r.dmu.Unlock()
	// Cut a Read that is waiting for a later poll tick short.
	if !t.IsZero() {
		r.rd.SetDeadline(t)
	}
}

// Close stops the reader; a blocked Read returns an error wrapping
// os.ErrClosed.
func (r *EventReader) Close() error {
	if err := r.rd.Close(); err != nil {
		return fmt.Errorf("close flow events: %w", err)
	}
	return nil
}
