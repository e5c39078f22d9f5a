package loader

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ct_entry.flags, as MBR_CT_F_* in bpf/include/common.h. ct_entry.flags is
// 16 bits since the datapath keeps the TCP flags seen per direction in the
// two bytes after it (tx_flags_seen, rx_flags_seen: the default monitor
// level traces packets with new flags); the value is 32 bytes as before.
const (
	ctFlagSeenReply = 0x1
	ctFlagTXClosing = 0x2
	ctFlagRXClosing = 0x4
)

// CTEntry is one tracked connection, in its original direction (the
// direction of its first packet). For ICMP echo the echo id stands in for a
// port: a request has Src port = id and Dst port 0, a reply flow the reverse.
type CTEntry struct {
	Proto       uint8
	Src, Dst    netip.AddrPort
	Expires     time.Duration // remaining lifetime; <= 0: expired, awaiting GC or reuse
	SeenReply   bool          // a reply passed
	Closing     bool          // FIN or RST seen (TCP)
	SrcIdentity uint32        // identity of the original source
	Packets     uint64        // both directions
	Bytes       uint64
}

// monotonicNow is the clock of bpf_ktime_get_ns.
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	return uint64(ts.Nano()), nil
}

func (d *Datapath) ctMaps() []*ebpf.Map {
	return []*ebpf.Map{d.objs.MbrCtTcp, d.objs.MbrCtAny}
}

func ctEntry(key datapathCtKey, val datapathCtEntry, now uint64) (CTEntry, error) {
	var src, dst netip.Addr
	switch key.Family {
	case familyIPv4:
		src = netip.AddrFrom4([4]byte(key.Saddr[:4]))
		dst = netip.AddrFrom4([4]byte(key.Daddr[:4]))
	case familyIPv6:
		src = netip.AddrFrom16(key.Saddr)
		dst = netip.AddrFrom16(key.Daddr)
	default:
		return CTEntry{}, fmt.Errorf("conntrack key with unknown family %d", key.Family)
	}
	return CTEntry{
		Proto:       key.Protocol,
		Src:         netip.AddrPortFrom(src, ntoh16(key.Sport)),
		Dst:         netip.AddrPortFrom(dst, ntoh16(key.Dport)),
		Expires:     time.Duration(int64(val.Expires - now)),
		SeenReply:   val.Flags&ctFlagSeenReply != 0,
		Closing:     val.Flags&(ctFlagTXClosing|ctFlagRXClosing) != 0,
		SrcIdentity: val.SrcIdentity,
		Packets:     val.Packets,
		Bytes:       val.Bytes,
	}, nil
}

// ListCT returns the tracked connections of both conntrack maps, sorted by
// protocol, source and destination.
func (d *Datapath) ListCT() ([]CTEntry, error) {
	now, err := monotonicNow()
	if err != nil {
		return nil, fmt.Errorf("list conntrack: %w", err)
	}
	var out []CTEntry
	for _, m := range d.ctMaps() {
		var (
			key datapathCtKey
			val datapathCtEntry
		)
		it := m.Iterate()
		for it.Next(&key, &val) {
			e, err := ctEntry(key, val, now)
			if err != nil {
				return nil, fmt.Errorf("list conntrack: %w", err)
			}
			out = append(out, e)
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("list conntrack %s: %w", m, err)
		}
	}
	slices.SortFunc(out, func(a, b CTEntry) int {
		return cmp.Or(cmp.Compare(a.Proto, b.Proto), a.Src.Compare(b.Src), a.Dst.Compare(b.Dst))
	})
	return out, nil
}

// FlushCT deletes every conntrack entry and returns how many it deleted.
// Connections then continue as new ones: they meet policy again.
func (d *Datapath) FlushCT() (int, error) {
	return d.deleteCT("flush conntrack", func(datapathCtEntry, uint64) bool { return true })
}

// GCCT deletes the expired conntrack entries and returns how many it
// deleted. The datapath already ignores them; GC frees their slots before
// the LRU would evict them.
func (d *Datapath) GCCT() (int, error) {
	return d.deleteCT("collect conntrack", func(v datapathCtEntry, now uint64) bool { return v.Expires <= now })
}

// deleteCT deletes the entries for which match holds. An entry is looked up
// again right before its deletion, so one that a packet renewed meanwhile
// survives (a renewal between that lookup and the delete is lost; the
// connection then meets policy again as a new one).
func (d *Datapath) deleteCT(what string, match func(v datapathCtEntry, now uint64) bool) (int, error) {
	now, err := monotonicNow()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	deleted := 0
	for _, m := range d.ctMaps() {
		var (
			key  datapathCtKey
			val  datapathCtEntry
			keys []datapathCtKey
		)
		it := m.Iterate()
		for it.Next(&key, &val) {
			if match(val, now) {
				keys = append(keys, key)
			}
		}
		if err := it.Err(); err != nil {
			return deleted, fmt.Errorf("%s: iterate %s: %w", what, m, err)
		}
		for _, k := range keys {
			if err := m.Lookup(&k, &val); err != nil || !match(val, now) {
				continue
			}
			if err := m.Delete(&k); err != nil {
				if errors.Is(err, ebpf.ErrKeyNotExist) {
					continue
				}
				return deleted, fmt.Errorf("%s: delete from %s: %w", what, m, err)
			}
			deleted++
		}
	}
	return deleted, nil
}
