package loader

import (
	"encoding/binary"
	"net"
	"net/netip"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/testutil"
)

// testPinDir returns a unique pin dir on bpffs, removed when the test ends.
func testPinDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", "membrane-test-"+testutil.UniqueSuffix())
	t.Cleanup(func() {
		if err := Unpin(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// inTestNetns moves the test's goroutine, locked to its thread, into a new
// uniquely named network namespace, and back (deleting the namespace) when
// the test ends. Anything the test creates with netlink lives and dies there,
// never on the machine's real interfaces. Subtests run on other goroutines:
// they must call enterNetns with the returned handle first.
func inTestNetns(t *testing.T) netns.NsHandle {
	t.Helper()
	name := "mbr-test-" + testutil.UniqueSuffix()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	ns, err := netns.NewNamed(name) // also switches this thread into it
	if err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
		returnToNetns(t, orig)
		ns.Close()
	})
	return ns
}

// enterNetns moves the calling goroutine, locked to its thread, into ns
// until the (sub)test ends.
func enterNetns(t *testing.T, ns netns.NsHandle) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("get current netns: %v", err)
	}
	if err := netns.Set(ns); err != nil {
		orig.Close()
		runtime.UnlockOSThread()
		t.Fatalf("enter test netns: %v", err)
	}
	t.Cleanup(func() { returnToNetns(t, orig) })
}

func returnToNetns(t *testing.T, orig netns.NsHandle) {
	defer orig.Close()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it when the
		// goroutine exits instead of reusing a thread in the wrong netns.
		t.Errorf("return to original netns: %v", err)
		return
	}
	runtime.UnlockOSThread()
}

// veth is one veth pair created in the test's netns.
type veth struct {
	name, peer   string
	index        int
	mac, peerMAC net.HardwareAddr
	peerIndex    int
}

// addVeth creates and brings up a veth pair in the current (test) netns.
func addVeth(t *testing.T, name, peer string) veth {
	t.Helper()
	la := netlink.NewLinkAttrs()
	la.Name = name
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peer}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	t.Cleanup(func() {
		// The netns deletion removes it too; this covers tests that keep
		// the netns but recreate the device.
		if l, err := netlink.LinkByName(name); err == nil {
			netlink.LinkDel(l)
		}
	})
	var v veth
	for i, n := range []string{name, peer} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatalf("get link %s: %v", n, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
		if i == 0 {
			v.name, v.index, v.mac = n, l.Attrs().Index, l.Attrs().HardwareAddr
		} else {
			v.peer, v.peerIndex, v.peerMAC = n, l.Attrs().Index, l.Attrs().HardwareAddr
		}
	}
	return v
}

// Packet builders. Only what the tests need, with fixed and obvious fields.

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func ethHdr(dst, src net.HardwareAddr, proto uint16) []byte {
	b := make([]byte, 14)
	copy(b[0:6], dst)
	copy(b[6:12], src)
	binary.BigEndian.PutUint16(b[12:14], proto)
	return b
}

// arpPacket builds an Ethernet/IPv4 ARP packet, padded to the Ethernet minimum.
func arpPacket(ethDst, ethSrc net.HardwareAddr, op uint16, sha net.HardwareAddr, sip netip.Addr,
	tha net.HardwareAddr, tip netip.Addr) []byte {
	b := ethHdr(ethDst, ethSrc, 0x0806)
	arp := make([]byte, 28)
	binary.BigEndian.PutUint16(arp[0:2], 1)      // Ethernet
	binary.BigEndian.PutUint16(arp[2:4], 0x0800) // IPv4
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:8], op)
	copy(arp[8:14], sha)
	s4 := sip.As4()
	copy(arp[14:18], s4[:])
	copy(arp[18:24], tha)
	t4 := tip.As4()
	copy(arp[24:28], t4[:])
	b = append(b, arp...)
	return append(b, make([]byte, 60-len(b))...)
}

// ipv4UDP builds Ethernet + IPv4 (valid checksum) + UDP with payload.
func ipv4UDP(ethDst, ethSrc net.HardwareAddr, src, dst netip.Addr, ttl uint8) []byte {
	payload := []byte("membrane")
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:2], 40000)
	binary.BigEndian.PutUint16(udp[2:4], 5201)
	binary.BigEndian.PutUint16(udp[4:6], uint16(8+len(payload)))
	udp = append(udp, payload...)

	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(20+len(udp)))
	binary.BigEndian.PutUint16(ip[4:6], 0x1234)
	ip[8] = ttl
	ip[9] = 17
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:12], ipChecksum(ip))

	b := ethHdr(ethDst, ethSrc, 0x0800)
	b = append(b, ip...)
	return append(b, udp...)
}

// ipChecksum computes the IPv4 header checksum over hdr with its checksum
// field taken as is; a header with a correct checksum sums to 0.
func ipChecksum(hdr []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(hdr); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(hdr[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// setTTL returns a copy of an ipv4UDP packet with another TTL and a
// recomputed header checksum.
func setTTL(pkt []byte, ttl uint8) []byte {
	out := append([]byte(nil), pkt...)
	ip := out[14:34]
	ip[8] = ttl
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:12], ipChecksum(ip))
	return out
}

// setMACs returns a copy of pkt with new Ethernet addresses.
func setMACs(pkt []byte, dst, src net.HardwareAddr) []byte {
	out := append([]byte(nil), pkt...)
	copy(out[0:6], dst)
	copy(out[6:12], src)
	return out
}
