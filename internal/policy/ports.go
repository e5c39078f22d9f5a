package policy

import (
	"fmt"
	"sort"
)

// PortPrefix is a block of ports: the Len leading bits of Port must match.
// Len 0 is every port; Len 16 is exactly Port.
type PortPrefix struct {
	Port uint16
	Len  uint8
}

// Contains reports whether port lies in the block.
func (p PortPrefix) Contains(port uint16) bool {
	return port&portMask(p.Len) == p.Port
}

// Range returns the first and last port of the block.
func (p PortPrefix) Range() (lo, hi uint16) {
	return p.Port, p.Port | ^portMask(p.Len)
}

func (p PortPrefix) String() string {
	lo, hi := p.Range()
	if lo == hi {
		return fmt.Sprintf("%d", lo)
	}
	return fmt.Sprintf("%d-%d", lo, hi)
}

func portMask(bits uint8) uint16 {
	if bits == 0 {
		return 0
	}
	return ^uint16(0) << (16 - bits)
}

// PortRangeToPrefixes returns the smallest list of port prefixes whose union
// is exactly [lo, hi], in ascending order. lo > hi gives nil.
func PortRangeToPrefixes(lo, hi uint16) []PortPrefix {
	if lo > hi {
		return nil
	}
	var out []PortPrefix
	cur, end := uint32(lo), uint32(hi)
	for cur <= end {
		// Largest aligned block starting at cur that does not pass end.
		size := uint32(1)
		bits := uint8(16)
		for bits > 0 {
			next := size << 1
			if cur%next != 0 || cur+next-1 > end {
				break
			}
			size = next
			bits--
		}
		out = append(out, PortPrefix{Port: uint16(cur), Len: bits})
		cur += size
	}
	return out
}

func sortStrings(s []string) { sort.Strings(s) }
