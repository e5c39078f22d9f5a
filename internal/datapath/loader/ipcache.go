package loader

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrIPCacheFull is returned (wrapped) by UpsertIPCache when the ipcache has
// no room for another prefix.
var ErrIPCacheFull = errors.New("ipcache full")

// ipcachePrefixBase is the part of struct ipcache_key's prefixlen that
// covers family and pad.
const ipcachePrefixBase = 32

// IPCacheEntry maps an address prefix to the security identity of the
// addresses in it. Addresses without an entry are world (2).
type IPCacheEntry struct {
	Prefix netip.Prefix // masked; a pod or host is a /32
	// Identity of the addresses: an endpoint's identity for its /32, a
	// CIDR identity for a policy CIDR, 1 (host) for the node's addresses.
	Identity uint32
	// CIDRIdentity is, for an endpoint's /32, the CIDR identity of the most
	// specific policy CIDR containing it (0 if none), so that CIDR rules
	// match pod addresses too; for other prefixes it equals Identity.
	CIDRIdentity uint32
}

func ipcacheKey(p netip.Prefix) (datapathIpcacheKey, error) {
	var key datapathIpcacheKey
	if !p.IsValid() {
		return key, errors.New("invalid prefix")
	}
	addr := p.Addr()
	if addr.Is4In6() {
		return key, fmt.Errorf("prefix %s: use the IPv4 form", p)
	}
	if addr.Is4() {
		a := addr.As4()
		copy(key.Addr[:], a[:])
		key.Family = familyIPv4
	} else {
		key.Addr = addr.As16()
		key.Family = familyIPv6
	}
	key.Prefixlen = ipcachePrefixBase + uint32(p.Bits())
	return key, nil
}

func ipcachePrefix(key datapathIpcacheKey) (netip.Prefix, error) {
	bits := int(key.Prefixlen) - ipcachePrefixBase
	var addr netip.Addr
	switch key.Family {
	case familyIPv4:
		addr = netip.AddrFrom4([4]byte(key.Addr[:4]))
	case familyIPv6:
		addr = netip.AddrFrom16(key.Addr)
	default:
		return netip.Prefix{}, fmt.Errorf("ipcache key with unknown family %d", key.Family)
	}
	p := netip.PrefixFrom(addr, bits)
	if !p.IsValid() {
		return p, fmt.Errorf("ipcache key %s with prefix length %d", addr, key.Prefixlen)
	}
	return p, nil
}

// UpsertIPCache creates or replaces the entry of e.Prefix. The prefix must
// be masked (10.0.0.0/8, not 10.1.2.3/8) and the identity non-zero. IPv6
// prefixes are stored but not yet used by the datapath.
func (d *Datapath) UpsertIPCache(e IPCacheEntry) error {
	key, err := prefixMapKey(e.Prefix)
	if err != nil {
		return fmt.Errorf("upsert ipcache %s: %w", e.Prefix, err)
	}
	if e.Identity == 0 {
		return fmt.Errorf("upsert ipcache %s: identity is zero", e.Prefix)
	}
	val := datapathIpcacheValue{Identity: e.Identity, CidrIdentity: e.CIDRIdentity}
	if err := putOrFull(d.objs.MbrIpcache, &key, &val, ErrIPCacheFull); err != nil {
		return fmt.Errorf("upsert ipcache %s: %w", e.Prefix, err)
	}
	return nil
}

// DeleteIPCache removes the entry of p. A missing entry is not an error.
func (d *Datapath) DeleteIPCache(p netip.Prefix) error {
	if err := deletePrefix(d.objs.MbrIpcache, p); err != nil {
		return fmt.Errorf("delete ipcache %s: %w", p, err)
	}
	return nil
}

// The LPM maps keyed by struct ipcache_key (mbr_ipcache, mbr_tunnel) share
// these helpers.

// prefixMapKey encodes a masked prefix; a prefix with host bits set is
// refused rather than masked, since it would read back as another key.
func prefixMapKey(p netip.Prefix) (datapathIpcacheKey, error) {
	key, err := ipcacheKey(p)
	if err != nil {
		return key, err
	}
	if p != p.Masked() {
		return key, fmt.Errorf("prefix has host bits set (want %s)", p.Masked())
	}
	return key, nil
}

// putOrFull writes one entry (any map); a full map becomes errFull, with the
// map's capacity.
func putOrFull(m *ebpf.Map, key, val any, errFull error) error {
	if err := m.Update(key, val, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("%w (capacity %d): %w", errFull, m.MaxEntries(), err)
		}
		return err
	}
	return nil
}

// deletePrefix removes the entry of p; a missing entry is not an error.
func deletePrefix(m *ebpf.Map, p netip.Prefix) error {
	key, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	if err := m.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// ListIPCache returns all ipcache entries sorted by address, then prefix
// length.
func (d *Datapath) ListIPCache() ([]IPCacheEntry, error) {
	var (
		key     datapathIpcacheKey
		val     datapathIpcacheValue
		entries []IPCacheEntry
	)
	it := d.objs.MbrIpcache.Iterate()
	for it.Next(&key, &val) {
		p, err := ipcachePrefix(key)
		if err != nil {
			return nil, fmt.Errorf("list ipcache: %w", err)
		}
		entries = append(entries, IPCacheEntry{Prefix: p, Identity: val.Identity, CIDRIdentity: val.CidrIdentity})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list ipcache: %w", err)
	}
	slices.SortFunc(entries, func(a, b IPCacheEntry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return entries, nil
}
