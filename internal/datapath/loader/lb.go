package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Defaults of the load-balancing maps (bpf/include/lb.h).
const (
	DefaultLBMapSize    = 65536
	DefaultLBMaglevSize = 1021
)

// Service flags (LBService.Flags), as MBR_LB_F_* in bpf/include/lb.h.
const (
	LBFlagAffinity uint8 = 0x1 // ClientIP session affinity
	LBFlagMaglev   uint8 = 0x2 // the packet path picks backends from the Maglev table
	LBFlagNodePort uint8 = 0x4 // a NodePort frontend
)

// BackendState is a backend's state in the datapath (MBR_LB_BACKEND_*):
// only active backends get new connections.
type BackendState uint8

const (
	BackendActive      BackendState = 0
	BackendTerminating BackendState = 1
	BackendNotReady    BackendState = 2
)

func (s BackendState) String() string {
	switch s {
	case BackendActive:
		return "active"
	case BackendTerminating:
		return "terminating"
	case BackendNotReady:
		return "not-ready"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// LBBackend is one backend of the load-balancing maps.
type LBBackend struct {
	Addr  netip.AddrPort
	Proto uint8
	State BackendState
}

// LBService is one service port (frontend) as the datapath holds it.
type LBService struct {
	Frontend netip.AddrPort
	Proto    uint8
	// RevNatID identifies the service port (1..65535): reverse NAT,
	// affinity and Maglev entries are keyed by it.
	RevNatID        uint16
	Flags           uint8
	AffinityTimeout uint32 // seconds, with LBFlagAffinity
	// Backends are the ids of the active backends, one slot each: a new
	// connection picks one at random.
	Backends []uint32
	// Maglev is the Maglev table (backend id per slot, length = the
	// configured table size) with LBFlagMaglev; nil otherwise.
	Maglev []uint32
}

// LBServiceEntry is a service port read back from the maps.
type LBServiceEntry struct {
	LBService
	MaglevSlots map[uint32]int // backend id -> slots in its Maglev table
}

func (c Config) lbMapSize() uint32    { return orDefault(c.LBMapSize, DefaultLBMapSize) }
func (c Config) lbMaglevSize() uint32 { return orDefault(c.LBMaglevSize, DefaultLBMaglevSize) }

// ErrLBMapFull is returned (wrapped) when a load-balancing map has no room.
var ErrLBMapFull = errors.New("load-balancing map full")

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.LittleEndian.Uint32(b[:])
}

func addrOfBE32(v uint32) netip.Addr {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func lbKey(fe netip.AddrPort, proto uint8, slot uint16) datapathLb4Key {
	return datapathLb4Key{Address: be32(fe.Addr()), Dport: hton16(fe.Port()), Proto: proto, Slot: slot}
}

func checkLBAddr(what string, a netip.AddrPort) error {
	if !a.Addr().Is4() {
		return fmt.Errorf("%s %s: %w (IPv4 only)", what, a, ErrNotSupported)
	}
	return nil
}

func mapPut(m *ebpf.Map, what string, k, v any) error {
	if err := putOrFull(m, k, v, ErrLBMapFull); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// UpsertLBBackend creates or replaces backend id (1..2^32-1).
func (d *Datapath) UpsertLBBackend(id uint32, b LBBackend) error {
	if id == 0 {
		return errors.New("upsert backend: id 0 is reserved")
	}
	if err := checkLBAddr("backend", b.Addr); err != nil {
		return err
	}
	v := datapathLb4Backend{Address: be32(b.Addr.Addr()), Port: hton16(b.Addr.Port()), Proto: b.Proto, State: uint8(b.State)}
	return mapPut(d.objs.MbrLb4Backends, fmt.Sprintf("upsert backend %d (%s)", id, b.Addr), id, v)
}

// DeleteLBBackend removes backend id; a missing one is not an error.
func (d *Datapath) DeleteLBBackend(id uint32) error {
	if err := d.objs.MbrLb4Backends.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete backend %d: %w", id, err)
	}
	return nil
}

// UpsertLBService installs a service port. A port that held more backend
// slots before shrinks without a moment in which a reader can pick a slot
// that is gone: new slots first, then the service entry, then the surplus
// slots are removed. oldSlots is how many slots the port had (0 if new).
func (d *Datapath) UpsertLBService(s LBService, oldSlots int) error {
	if err := checkLBAddr("frontend", s.Frontend); err != nil {
		return err
	}
	if s.RevNatID == 0 {
		return fmt.Errorf("upsert service %s: rev-NAT id 0 is reserved", s.Frontend)
	}
	if len(s.Backends) > 0xffff {
		return fmt.Errorf("upsert service %s: %d backends, at most 65535", s.Frontend, len(s.Backends))
	}
	what := fmt.Sprintf("upsert service %s/%d", s.Frontend, s.Proto)
	for i, id := range s.Backends {
		if err := mapPut(d.objs.MbrLb4Services, what, lbKey(s.Frontend, s.Proto, uint16(i+1)), datapathLb4Service{BackendId: id}); err != nil {
			return err
		}
	}
	rn := datapathLb4Revnat{Address: be32(s.Frontend.Addr()), Port: hton16(s.Frontend.Port())}
	if err := mapPut(d.objs.MbrLb4Revnat, what+": reverse NAT", uint32(s.RevNatID), rn); err != nil {
		return err
	}
	flags := s.Flags &^ LBFlagMaglev
	if s.Flags&LBFlagMaglev != 0 && len(s.Maglev) > 0 {
		if err := d.putMaglev(s.RevNatID, s.Maglev); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		flags |= LBFlagMaglev
	} else if err := d.objs.MbrLbMaglev.Delete(uint32(s.RevNatID)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("%s: remove Maglev table: %w", what, err)
	}
	master := datapathLb4Service{Count: uint16(len(s.Backends)), RevNatId: s.RevNatID, AffinityTimeout: s.AffinityTimeout, Flags: flags}
	if err := mapPut(d.objs.MbrLb4Services, what, lbKey(s.Frontend, s.Proto, 0), master); err != nil {
		return err
	}
	for slot := len(s.Backends) + 1; slot <= oldSlots && slot <= 0xffff; slot++ {
		if err := d.objs.MbrLb4Services.Delete(lbKey(s.Frontend, s.Proto, uint16(slot))); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("%s: remove slot %d: %w", what, slot, err)
		}
	}
	return nil
}

// putMaglev builds a new table map and swaps it in atomically.
func (d *Datapath) putMaglev(revNat uint16, table []uint32) error {
	m := d.cfg.lbMaglevSize()
	if uint32(len(table)) != m {
		return fmt.Errorf("Maglev table has %d slots, the datapath %d", len(table), m)
	}
	spec := d.maglevInner.Copy()
	inner, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("create Maglev table: %w", err)
	}
	defer inner.Close()
	buf := make([]byte, 4*len(table))
	for i, id := range table {
		binary.LittleEndian.PutUint32(buf[4*i:], id)
	}
	if err := inner.Put(uint32(0), buf); err != nil {
		return fmt.Errorf("fill Maglev table: %w", err)
	}
	return mapPut(d.objs.MbrLbMaglev, "install Maglev table", uint32(revNat), inner)
}

// DeleteLBService removes a service port with its slots (slots: how many it
// has), its reverse NAT entry and its Maglev table. Missing entries are
// not an error.
func (d *Datapath) DeleteLBService(fe netip.AddrPort, proto uint8, revNat uint16, slots int) error {
	if err := checkLBAddr("frontend", fe); err != nil {
		return err
	}
	var errs []error
	del := func(m *ebpf.Map, k any, what string) {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete service %s/%d: %s: %w", fe, proto, what, err))
		}
	}
	// The service entry first: from then on nobody picks a slot.
	del(d.objs.MbrLb4Services, lbKey(fe, proto, 0), "service entry")
	for slot := 1; slot <= slots && slot <= 0xffff; slot++ {
		del(d.objs.MbrLb4Services, lbKey(fe, proto, uint16(slot)), fmt.Sprintf("slot %d", slot))
	}
	if revNat != 0 {
		del(d.objs.MbrLb4Revnat, uint32(revNat), "reverse NAT")
		del(d.objs.MbrLbMaglev, uint32(revNat), "Maglev table")
	}
	return errors.Join(errs...)
}

// ListLB reads the service ports (with their slots and Maglev shares) and
// the backends, sorted by frontend and by id.
func (d *Datapath) ListLB() ([]LBServiceEntry, map[uint32]LBBackend, error) {
	type fkey struct {
		fe    netip.AddrPort
		proto uint8
	}
	byFE := map[fkey]*LBServiceEntry{}
	slots := map[fkey]map[uint16]uint32{}
	var k datapathLb4Key
	var v datapathLb4Service
	it := d.objs.MbrLb4Services.Iterate()
	for it.Next(&k, &v) {
		fk := fkey{netip.AddrPortFrom(addrOfBE32(k.Address), ntoh16(k.Dport)), k.Proto}
		if k.Slot == 0 {
			e := byFE[fk]
			if e == nil {
				e = &LBServiceEntry{}
				byFE[fk] = e
			}
			e.Frontend, e.Proto, e.RevNatID, e.Flags, e.AffinityTimeout = fk.fe, fk.proto, v.RevNatId, v.Flags, v.AffinityTimeout
			e.Backends = make([]uint32, v.Count)
			continue
		}
		if slots[fk] == nil {
			slots[fk] = map[uint16]uint32{}
		}
		slots[fk][k.Slot] = v.BackendId
	}
	if err := it.Err(); err != nil {
		return nil, nil, fmt.Errorf("list services: %w", err)
	}
	out := make([]LBServiceEntry, 0, len(byFE))
	for fk, e := range byFE {
		for i := range e.Backends {
			e.Backends[i] = slots[fk][uint16(i+1)]
		}
		if e.Flags&LBFlagMaglev != 0 {
			table, err := d.readMaglev(e.RevNatID)
			if err != nil {
				return nil, nil, err
			}
			e.MaglevSlots = map[uint32]int{}
			for _, id := range table {
				e.MaglevSlots[id]++
			}
		}
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if c := a.Frontend.Compare(b.Frontend); c != 0 {
			return c < 0
		}
		return a.Proto < b.Proto
	})
	backends := map[uint32]LBBackend{}
	var id uint32
	var bv datapathLb4Backend
	bit := d.objs.MbrLb4Backends.Iterate()
	for bit.Next(&id, &bv) {
		backends[id] = LBBackend{Addr: netip.AddrPortFrom(addrOfBE32(bv.Address), ntoh16(bv.Port)), Proto: bv.Proto, State: BackendState(bv.State)}
	}
	if err := bit.Err(); err != nil {
		return nil, nil, fmt.Errorf("list backends: %w", err)
	}
	return out, backends, nil
}

func (d *Datapath) readMaglev(revNat uint16) ([]uint32, error) {
	var innerID ebpf.MapID
	if err := d.objs.MbrLbMaglev.Lookup(uint32(revNat), &innerID); err != nil {
		return nil, fmt.Errorf("read Maglev table of service port %d: %w", revNat, err)
	}
	inner, err := ebpf.NewMapFromID(innerID)
	if err != nil {
		return nil, fmt.Errorf("open Maglev table of service port %d: %w", revNat, err)
	}
	defer inner.Close()
	buf := make([]byte, inner.ValueSize())
	if err := inner.Lookup(uint32(0), &buf); err != nil {
		return nil, fmt.Errorf("read Maglev table of service port %d: %w", revNat, err)
	}
	out := make([]uint32, len(buf)/4)
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(buf[4*i:])
	}
	return out, nil
}

// Socket hooks: the programs attached to a cgroup v2 directory, by the name
// of their pinned link.
func (d *Datapath) cgroupPrograms() []struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
} {
	return []struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{"cgroup_connect4", d.objs.SockConnect4, ebpf.AttachCGroupInet4Connect},
		{"cgroup_sendmsg4", d.objs.SockSendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{"cgroup_recvmsg4", d.objs.SockRecvmsg4, ebpf.AttachCGroupUDP4Recvmsg},
		{"cgroup_getpeername4", d.objs.SockGetpeername4, ebpf.AttachCgroupInet4GetPeername},
	}
}

// IsCgroup2 reports whether dir is on a cgroup v2 file system.
func IsCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// AttachCgroup attaches the socket hooks (connect4, sendmsg4, recvmsg4,
// getpeername4) to the cgroup v2 directory path, so that every socket of
// the processes in it and below it gets service translation. Links are
// pinned: a restarted agent swaps the programs atomically; links to
// another cgroup are replaced.
func (d *Datapath) AttachCgroup(path string) error {
	if !IsCgroup2(path) {
		return fmt.Errorf("attach socket hooks to %s: not a cgroup v2 directory", path)
	}
	var stat unix.Stat_t
	if err := unix.Stat(path, &stat); err != nil {
		return fmt.Errorf("attach socket hooks to %s: %w", path, err)
	}
	cgID := stat.Ino // a cgroup v2 directory's inode number is its cgroup id
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.cgroupPrograms() {
		err := d.attachPinned(p.name, p.name, "cgroup "+path, p.prog,
			func(l link.Link) bool {
				info, err := l.Info()
				if err != nil {
					return false
				}
				cg := info.Cgroup()
				return cg != nil && cg.CgroupId == cgID && uint32(cg.AttachType) == uint32(p.attach)
			},
			func() (link.Link, error) {
				return link.AttachCgroup(link.CgroupOptions{Path: path, Attach: p.attach, Program: p.prog})
			})
		if err != nil {
			return err
		}
	}
	d.log.Debug("attached socket hooks", "cgroup", path)
	return nil
}

// DetachCgroup removes the socket hooks; missing links are not an error.
func (d *Datapath) DetachCgroup() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, p := range d.cgroupPrograms() {
		if l, ok := d.links[p.name]; ok {
			delete(d.links, p.name)
			l.Close()
		}
		if err := detachPinnedLink(d.linkPinPath(p.name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
