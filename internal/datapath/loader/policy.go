package loader

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrPolicyMapFull is returned (wrapped) by SetEndpointPolicy when the
// entries do not fit an endpoint policy map.
var ErrPolicyMapFull = errors.New("policy map full")

// Prefix lengths of struct policy_key (bpf/include/common.h): identity and
// direction, then protocol, then up to 16 bits of the port.
const (
	policyPrefixIdentity = 40
	policyPrefixProto    = 48
)

// PolicyKey is one entry key of an endpoint's policy map: which peers,
// direction, protocol and destination ports an entry covers.
type PolicyKey struct {
	Identity      uint32 // peer identity; 0 = any peer
	Egress        bool   // true: traffic from the endpoint; false: to it
	Proto         uint8  // IP protocol; 0 = any protocol (then Port and PortPrefixLen must be 0)
	Port          uint16 // destination port (ICMP: the ICMP type)
	PortPrefixLen uint8  // leading bits of Port that must match: 0 = any port, 16 = exactly Port
}

func (k PolicyKey) String() string {
	dir := "ingress"
	if k.Egress {
		dir = "egress"
	}
	switch {
	case k.Proto == 0:
		return fmt.Sprintf("%s identity %d any", dir, k.Identity)
	case k.PortPrefixLen == 0:
		return fmt.Sprintf("%s identity %d proto %d any port", dir, k.Identity, k.Proto)
	default:
		return fmt.Sprintf("%s identity %d proto %d port %d/%d", dir, k.Identity, k.Proto, k.Port, k.PortPrefixLen)
	}
}

// PolicyValue is the verdict of a policy entry.
type PolicyValue struct {
	Deny   bool   // a deny wins over every allow
	Cookie uint32 // identifies the rule, for flow events; opaque to BPF
}

// encode validates k and returns it as struct policy_key. A port with bits
// set beyond PortPrefixLen is refused rather than masked: it would read back
// as another key.
func (k PolicyKey) encode() (datapathPolicyKey, error) {
	var key datapathPolicyKey
	switch {
	case k.Proto == 0 && (k.Port != 0 || k.PortPrefixLen != 0):
		return key, fmt.Errorf("policy key %s: a port needs a protocol", k)
	case k.PortPrefixLen > 16:
		return key, fmt.Errorf("policy key %s: port prefix length %d exceeds 16", k, k.PortPrefixLen)
	case k.PortPrefixLen < 16 && k.Port&(0xffff>>k.PortPrefixLen) != 0:
		return key, fmt.Errorf("policy key %s: port %d has bits set beyond prefix length %d",
			k, k.Port, k.PortPrefixLen)
	}
	key.Prefixlen = policyPrefixIdentity
	if k.Proto != 0 {
		key.Prefixlen = policyPrefixProto + uint32(k.PortPrefixLen)
	}
	key.Identity = hton32(k.Identity)
	if k.Egress {
		key.Egress = 1
	}
	key.Protocol = k.Proto
	key.Dport = hton16(k.Port)
	return key, nil
}

func decodePolicyKey(key datapathPolicyKey) (PolicyKey, error) {
	k := PolicyKey{Identity: ntoh32(key.Identity), Egress: key.Egress != 0}
	switch {
	case key.Prefixlen == policyPrefixIdentity:
	case key.Prefixlen >= policyPrefixProto && key.Prefixlen <= policyPrefixProto+16:
		k.Proto = key.Protocol
		k.PortPrefixLen = uint8(key.Prefixlen - policyPrefixProto)
		if k.PortPrefixLen > 0 {
			k.Port = ntoh16(key.Dport)
		}
	default:
		return k, fmt.Errorf("policy key with prefix length %d", key.Prefixlen)
	}
	return k, nil
}

func (v PolicyValue) encode() datapathPolicyValue {
	val := datapathPolicyValue{Cookie: v.Cookie}
	if v.Deny {
		val.Deny = 1
	}
	return val
}

func decodePolicyValue(val datapathPolicyValue) PolicyValue {
	return PolicyValue{Deny: val.Deny != 0, Cookie: val.Cookie}
}

// SetEndpointPolicy makes the policy map of endpoint epID hold exactly
// entries. The first call creates the map. Later calls apply the difference
// in place, adds and updates first and stale entries last, so traffic that
// both the old and the new policy allow is never dropped meanwhile. When the difference does not fit beside the
// old entries (or the map has another capacity than the config, after a
// size change), a new map is filled and swapped in atomically. More entries
// than the capacity are refused with ErrPolicyMapFull, the map unchanged.
//
// Whether the policy applies at all is up to the endpoint's flags
// (FlagIngressEnforced, FlagEgressEnforced).
func (d *Datapath) SetEndpointPolicy(epID uint16, entries map[PolicyKey]PolicyValue) error {
	want := make(map[datapathPolicyKey]datapathPolicyValue, len(entries))
	for k, v := range entries {
		key, err := k.encode()
		if err != nil {
			return fmt.Errorf("set policy of endpoint %d: %w", epID, err)
		}
		want[key] = v.encode()
	}
	capacity := d.policyInner.MaxEntries
	if uint32(len(want)) > capacity {
		return fmt.Errorf("set policy of endpoint %d: %d entries, capacity %d: %w",
			epID, len(want), capacity, ErrPolicyMapFull)
	}

	d.policyMu.Lock()
	defer d.policyMu.Unlock()

	inner, err := d.endpointPolicyMap(epID)
	if err != nil {
		return fmt.Errorf("set policy of endpoint %d: %w", epID, err)
	}
	if inner != nil {
		defer inner.Close()
	}
	if inner == nil || inner.MaxEntries() != capacity {
		if err := d.replacePolicyMap(epID, want); err != nil {
			return fmt.Errorf("set policy of endpoint %d: %w", epID, err)
		}
		return nil
	}

	have, err := readPolicyMap(inner)
	if err != nil {
		return fmt.Errorf("set policy of endpoint %d: %w", epID, err)
	}
	added := 0
	for k := range want {
		if _, ok := have[k]; !ok {
			added++
		}
	}
	if uint32(len(have)+added) > capacity {
		// Adding before deleting would overflow: swap in a new map.
		if err := d.replacePolicyMap(epID, want); err != nil {
			return fmt.Errorf("set policy of endpoint %d: %w", epID, err)
		}
		return nil
	}
	for k, v := range want {
		if old, ok := have[k]; ok && old == v {
			continue
		}
		if err := inner.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("set policy of endpoint %d: update %s: %w", epID, policyKeyString(k), err)
		}
	}
	for k := range have {
		if _, ok := want[k]; ok {
			continue
		}
		if err := inner.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("set policy of endpoint %d: delete %s: %w", epID, policyKeyString(k), err)
		}
	}
	return nil
}

func policyKeyString(k datapathPolicyKey) string {
	pk, err := decodePolicyKey(k)
	if err != nil {
		return fmt.Sprintf("%+v", k)
	}
	return pk.String()
}

// replacePolicyMap creates a policy map holding entries and puts it in
// mbr_policy for epID, replacing any previous map in one atomic update.
// Called with policyMu held.
func (d *Datapath) replacePolicyMap(epID uint16, entries map[datapathPolicyKey]datapathPolicyValue) error {
	spec := d.policyInner.Copy()
	spec.Name = fmt.Sprintf("mbr_pol_%d", epID)
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create policy map: %w", err)
	}
	defer m.Close() // mbr_policy holds its own reference
	for k, v := range entries {
		if err := m.Update(&k, &v, ebpf.UpdateNoExist); err != nil {
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.E2BIG) {
				err = fmt.Errorf("%w (capacity %d): %w", ErrPolicyMapFull, m.MaxEntries(), err)
			}
			return fmt.Errorf("fill policy map: add %s: %w", policyKeyString(k), err)
		}
	}
	key := uint32(epID)
	if err := d.objs.MbrPolicy.Update(&key, m, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("insert policy map into %s (capacity %d): %w",
				datapathMapMbrPolicy, d.objs.MbrPolicy.MaxEntries(), err)
		}
		return fmt.Errorf("insert policy map into %s: %w", datapathMapMbrPolicy, err)
	}
	return nil
}

// endpointPolicyMap opens the policy map of epID, or returns nil if it has
// none. The caller closes it.
func (d *Datapath) endpointPolicyMap(epID uint16) (*ebpf.Map, error) {
	key := uint32(epID)
	var m *ebpf.Map
	if err := d.objs.MbrPolicy.Lookup(&key, &m); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up policy map: %w", err)
	}
	return m, nil
}

func readPolicyMap(m *ebpf.Map) (map[datapathPolicyKey]datapathPolicyValue, error) {
	var (
		key datapathPolicyKey
		val datapathPolicyValue
		out = make(map[datapathPolicyKey]datapathPolicyValue)
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		out[key] = val
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read policy map: %w", err)
	}
	return out, nil
}

// EndpointPolicy returns the entries of endpoint epID's policy map; an
// endpoint without one has none.
func (d *Datapath) EndpointPolicy(epID uint16) (map[PolicyKey]PolicyValue, error) {
	inner, err := d.endpointPolicyMap(epID)
	if err != nil {
		return nil, fmt.Errorf("endpoint policy %d: %w", epID, err)
	}
	out := make(map[PolicyKey]PolicyValue)
	if inner == nil {
		return out, nil
	}
	defer inner.Close()
	raw, err := readPolicyMap(inner)
	if err != nil {
		return nil, fmt.Errorf("endpoint policy %d: %w", epID, err)
	}
	for k, v := range raw {
		pk, err := decodePolicyKey(k)
		if err != nil {
			return nil, fmt.Errorf("endpoint policy %d: %w", epID, err)
		}
		out[pk] = decodePolicyValue(v)
	}
	return out, nil
}

// DeleteEndpointPolicy removes endpoint epID's policy map. An endpoint that
// still has an enforced direction then allows nothing in it. Deleting an
// absent policy is not an error.
func (d *Datapath) DeleteEndpointPolicy(epID uint16) error {
	d.policyMu.Lock()
	defer d.policyMu.Unlock()
	key := uint32(epID)
	if err := d.objs.MbrPolicy.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete policy of endpoint %d: %w", epID, err)
	}
	return nil
}

// Byte order helpers for fields the BPF side keeps in network byte order.
func hton32(v uint32) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return binary.NativeEndian.Uint32(b[:])
}

func ntoh32(v uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return binary.BigEndian.Uint32(b[:])
}

func hton16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func ntoh16(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}
