package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPortRangeToPrefixes(t *testing.T) {
	tests := []struct {
		lo, hi uint16
		want   []PortPrefix
	}{
		{80, 80, []PortPrefix{{80, 16}}},
		{0, 65535, []PortPrefix{{0, 0}}},
		{8000, 8003, []PortPrefix{{8000, 14}}},
		{1, 3, []PortPrefix{{1, 16}, {2, 15}}},
		{1024, 65535, []PortPrefix{{1024, 6}, {2048, 5}, {4096, 4}, {8192, 3}, {16384, 2}, {32768, 1}}},
		{65535, 65535, []PortPrefix{{65535, 16}}},
		{5, 4, nil},
	}
	for _, tt := range tests {
		if got := PortRangeToPrefixes(tt.lo, tt.hi); !cmp.Equal(got, tt.want) {
			t.Errorf("PortRangeToPrefixes(%d, %d) = %v, want %v", tt.lo, tt.hi, got, tt.want)
		}
	}
}

// minBlocks is an independent brute force: the fewest aligned power-of-two
// blocks that tile [lo, hi] exactly, by dynamic programming.
func minBlocks(lo, hi int) int {
	best := make([]int, hi+2)
	for x := hi; x >= lo; x-- {
		best[x] = 1 << 30
		for size := 1; size <= 1<<16; size <<= 1 {
			if x%size != 0 || x+size-1 > hi {
				break
			}
			if c := 1 + best[x+size]; c < best[x] {
				best[x] = c
			}
		}
	}
	return best[lo]
}

func TestPortRangeToPrefixesExhaustive(t *testing.T) {
	check := func(lo, hi int) {
		got := PortRangeToPrefixes(uint16(lo), uint16(hi))
		covered := map[int]int{}
		for _, p := range got {
			if p.Len > 16 || p.Port&^portMask(p.Len) != 0 {
				t.Fatalf("[%d,%d]: malformed prefix %+v", lo, hi, p)
			}
			a, b := p.Range()
			for x := int(a); x <= int(b); x++ {
				covered[x]++
			}
		}
		// Exactly the range, each port once.
		for x := lo - 2; x <= hi+2; x++ {
			want := 0
			if x >= lo && x <= hi {
				want = 1
			}
			if x >= 0 && x <= 65535 && covered[x] != want {
				t.Fatalf("[%d,%d]: port %d covered %d times", lo, hi, x, covered[x])
			}
			if x >= 0 && x <= 65535 {
				p := false
				for _, pp := range got {
					p = p || pp.Contains(uint16(x))
				}
				if p != (want == 1) {
					t.Fatalf("[%d,%d]: Contains(%d) = %v", lo, hi, x, p)
				}
			}
		}
		if want := minBlocks(lo, hi); len(got) != want {
			t.Fatalf("[%d,%d]: %d prefixes, minimum is %d: %v", lo, hi, len(got), want, got)
		}
	}
	for lo := 0; lo < 130; lo++ {
		for hi := lo; hi < 130; hi++ {
			check(lo, hi)
		}
	}
	for lo := 65400; lo <= 65535; lo += 7 {
		for hi := lo; hi <= 65535; hi += 3 {
			check(lo, hi)
		}
	}
	check(1, 65535)
	check(0, 65534)
}
