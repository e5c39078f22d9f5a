package loader

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// DropReason is the reason of a verdict counted in mbr_metrics, as in
// bpf/include/drop.h: 0 is "forwarded", the rest are drops. The values are
// part of the map format: never renumbered, only appended.
type DropReason uint8

const (
	Forwarded           DropReason = 0 // the packet went on (redirected or to the stack)
	DropPolicyDenied    DropReason = 1 // an explicit deny rule matched
	DropPolicyNoRule    DropReason = 2 // direction enforced and no rule allows
	DropInvalidPacket   DropReason = 3 // truncated or malformed headers
	DropSpoofedSource   DropReason = 4 // source IP or ARP sender not the endpoint of its lxc
	DropCTMapFull       DropReason = 5 // conntrack entry could not be created
	DropUnknownEndpoint DropReason = 6 // from_host: destination is no local endpoint
	DropTTLExceeded     DropReason = 7 // reserved: TTL <= 1 goes to the stack today
	DropUnsupportedL3   DropReason = 8 // from_host, from_overlay: not IPv4 (ARP included)
	// DropNoTunnel: the destination is behind a tunnel (vxlan mode) but
	// no overlay device is set (SetOverlayDevice) or the entry is unusable;
	// in from_overlay, a packet without tunnel metadata.
	DropNoTunnel DropReason = 9
	// DropInvalidIdentity: an identity unfit for the wire: VNI 0 or host
	// (1) received from the overlay, or a source identity that is no 24-bit
	// VNI to send.
	DropInvalidIdentity DropReason = 10
	// DropNoServiceBackend: a connection or packet to a service port that
	// has no active backend (the socket hook refuses the connect or send).
	DropNoServiceBackend DropReason = 11
	// DropNoRoute: a translated NodePort packet has no route (FIB lookup
	// failed) back to the client or on to the backend.
	DropNoRoute        DropReason = 12
	maxKnownDropReason            = DropNoRoute
)

var dropReasonNames = [...]string{
	Forwarded:            "forwarded",
	DropPolicyDenied:     "policy denied",
	DropPolicyNoRule:     "policy no rule",
	DropInvalidPacket:    "invalid packet",
	DropSpoofedSource:    "spoofed source",
	DropCTMapFull:        "conntrack map full",
	DropUnknownEndpoint:  "unknown endpoint",
	DropTTLExceeded:      "TTL exceeded",
	DropUnsupportedL3:    "unsupported L3 protocol",
	DropNoTunnel:         "no tunnel",
	DropInvalidIdentity:  "invalid identity",
	DropNoServiceBackend: "no service backend",
	DropNoRoute:          "no route",
}

func (r DropReason) String() string {
	if r <= maxKnownDropReason {
		return dropReasonNames[r]
	}
	return fmt.Sprintf("reason %d", uint8(r))
}

var dropReasonCodes = [...]string{
	Forwarded:            "FORWARDED",
	DropPolicyDenied:     "POLICY_DENIED",
	DropPolicyNoRule:     "POLICY_NO_RULE",
	DropInvalidPacket:    "INVALID_PACKET",
	DropSpoofedSource:    "SPOOFED_SOURCE",
	DropCTMapFull:        "CT_MAP_FULL",
	DropUnknownEndpoint:  "UNKNOWN_ENDPOINT",
	DropTTLExceeded:      "TTL_EXCEEDED",
	DropUnsupportedL3:    "UNSUPPORTED_L3",
	DropNoTunnel:         "NO_TUNNEL",
	DropInvalidIdentity:  "INVALID_IDENTITY",
	DropNoServiceBackend: "NO_SERVICE_BACKEND",
	DropNoRoute:          "NO_ROUTE",
}

// Code is the reason's stable upper-case name, as in bpf/include/drop.h;
// flows and metric labels use it.
func (r DropReason) Code() string {
	if r <= maxKnownDropReason {
		return dropReasonCodes[r]
	}
	return fmt.Sprintf("REASON_%d", uint8(r))
}

// IsDrop reports whether r is a drop rather than Forwarded.
func (r DropReason) IsDrop() bool { return r != Forwarded }

// MetricsKey identifies one counter: a verdict reason in one direction from
// the endpoint's point of view (egress: leaving the endpoint, counted in
// from_container; ingress: entering it, counted in from_host and for the
// destination's ingress policy).
type MetricsKey struct {
	Reason DropReason
	Egress bool
}

func (k MetricsKey) String() string {
	if k.Egress {
		return k.Reason.String() + " (egress)"
	}
	return k.Reason.String() + " (ingress)"
}

// Counter counts packets and their bytes (skb->len, with Ethernet header).
type Counter struct {
	Packets, Bytes uint64
}

// Metrics returns the verdict counters, summed over CPUs. Counters start at
// zero when the map is created and survive agent restarts with its pin.
func (d *Datapath) Metrics() (map[MetricsKey]Counter, error) {
	var (
		key  datapathMetricsKey
		vals []datapathMetricsValue
		out  = make(map[MetricsKey]Counter)
	)
	it := d.objs.MbrMetrics.Iterate()
	for it.Next(&key, &vals) {
		var c Counter
		for _, v := range vals {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		mk := MetricsKey{Reason: DropReason(key.Reason), Egress: key.Dir != 0}
		sum := out[mk]
		sum.Packets += c.Packets
		sum.Bytes += c.Bytes
		out[mk] = sum
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return out, nil
}

// MapUsage is the fill level of one map.
type MapUsage struct {
	Name     string // pin name; an endpoint policy map is mbr_policy/<endpoint id>
	Entries  uint32
	Capacity uint32
}

// MapPressure returns the fill level of every map, including each endpoint
// policy map. Entries are counted by iteration (one syscall per entry), so
// it is meant for status pages, not hot loops; concurrent changes make the
// count approximate.
func (d *Datapath) MapPressure() ([]MapUsage, error) {
	named := []struct {
		name string
		m    *ebpf.Map
	}{
		{datapathMapMbrEndpoints, d.objs.MbrEndpoints},
		{datapathMapMbrIpcache, d.objs.MbrIpcache},
		{datapathMapMbrTunnel, d.objs.MbrTunnel},
		{datapathMapMbrPolicy, d.objs.MbrPolicy},
		{datapathMapMbrCtTcp, d.objs.MbrCtTcp},
		{datapathMapMbrCtAny, d.objs.MbrCtAny},
		{datapathMapMbrMetrics, d.objs.MbrMetrics},
	}
	var out []MapUsage
	for _, nm := range named {
		n, err := countEntries(nm.m)
		if err != nil {
			return nil, fmt.Errorf("map pressure of %s: %w", nm.name, err)
		}
		out = append(out, MapUsage{Name: nm.name, Entries: n, Capacity: nm.m.MaxEntries()})
	}

	var (
		epID  uint32
		inner *ebpf.Map
		ids   []uint32
	)
	it := d.objs.MbrPolicy.Iterate()
	for it.Next(&epID, &inner) {
		inner.Close()
		ids = append(ids, epID)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("map pressure of %s: %w", datapathMapMbrPolicy, err)
	}
	slices.Sort(ids)
	for _, id := range ids {
		m, err := d.endpointPolicyMap(uint16(id))
		if err != nil {
			return nil, fmt.Errorf("map pressure of policy of endpoint %d: %w", id, err)
		}
		if m == nil {
			continue // deleted meanwhile
		}
		n, err := countEntries(m)
		capacity := m.MaxEntries()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("map pressure of policy of endpoint %d: %w", id, err)
		}
		out = append(out, MapUsage{Name: fmt.Sprintf("%s/%d", datapathMapMbrPolicy, id), Entries: n, Capacity: capacity})
	}
	return out, nil
}

// countEntries counts the keys of m. A walk that restarts (its key deleted
// meanwhile) could go on forever on a busy map; it stops at twice the
// capacity.
func countEntries(m *ebpf.Map) (uint32, error) {
	var (
		n    uint32
		prev []byte
	)
	limit := 2 * uint64(m.MaxEntries())
	for uint64(n) < limit {
		var next []byte
		var err error
		if prev == nil {
			next, err = m.NextKeyBytes(nil)
		} else {
			next, err = m.NextKeyBytes(prev)
		}
		if err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			}
			return n, err
		}
		if next == nil {
			break
		}
		n++
		prev = next
	}
	return min(n, m.MaxEntries()), nil
}
