package service

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// maglevSizes are the table sizes the datapath accepts: primes, each
// roughly double the last. Maglev wants m ≫ n (the paper suggests m >
// 100·n): shares differ by at most one slot, so a small m rounds them
// coarsely, and disruption on a backend change shrinks as m grows.
var maglevSizes = [...]uint32{251, 509, 1021, 2039, 4093, 8191, 16381}

// DefaultMaglevSize is the largest supported table size: at least 100
// slots per backend up to 163 backends.
const DefaultMaglevSize = 16381

// ValidMaglevSize reports whether m is one of the supported table sizes:
// 251, 509, 1021, 2039, 4093, 8191 or 16381.
func ValidMaglevSize(m uint32) bool {
	for _, s := range maglevSizes {
		if s == m {
			return true
		}
	}
	return false
}

// Maglev builds a Maglev lookup table (Eisenbud et al., "Maglev: A Fast and
// Reliable Software Network Load Balancer", NSDI 2016, §3.4): m slots, each
// the index in backends of the backend that owns it. A flow's hash modulo m
// picks its slot. Backends claim slots in turns, so each gets ⌊m/n⌋ or
// ⌈m/n⌉ of them; and removing or adding a backend moves few slots other
// than its own, so most flows keep their backend when the set changes.
//
// backends are stable names (Backend.Key, e.g. "10.200.1.5:8080/tcp"), not
// positions: the same name gets the same permutation wherever it sits in
// the list. Each name is hashed with SHA-256; the first 8 bytes give the
// offset and the next 8 the skip, two independent values from one
// well-defined function, so the table is the same in every process, on
// every architecture and in every Go version (no map order, no seed).
//
// The table also depends on the order of backends (it sets whose turn
// comes first), so callers that must agree pass them in the same order:
// Resolve's, sorted by address and port.
//
// m must be a prime larger than len(backends) (ValidMaglevSize lists the
// sizes the datapath takes); names must be unique. Maglev returns nil and
// no error for no backends.
func Maglev(backends []string, m int) ([]int, error) {
	n := len(backends)
	if n == 0 {
		return nil, nil
	}
	if m <= n || !isPrime(m) {
		return nil, fmt.Errorf("build maglev table: size %d is not a prime larger than the %d backends", m, n)
	}
	seen := make(map[string]struct{}, n)
	// pos is each backend's current place in its permutation
	// (offset + j*skip mod m, kept incrementally), skip its stride.
	pos := make([]int, n)
	skip := make([]int, n)
	for i, name := range backends {
		if _, dup := seen[name]; dup {
			return nil, fmt.Errorf("build maglev table: backend %q listed twice", name)
		}
		seen[name] = struct{}{}
		sum := sha256.Sum256([]byte(name))
		pos[i] = int(binary.BigEndian.Uint64(sum[0:8]) % uint64(m))
		skip[i] = int(binary.BigEndian.Uint64(sum[8:16])%uint64(m-1)) + 1
	}

	table := make([]int, m)
	for i := range table {
		table[i] = -1
	}
	// Backends take turns claiming the next free slot of their own
	// permutation. m is prime and 1 <= skip < m, so each permutation
	// visits every slot and the loop ends after m claims.
	filled := 0
	for {
		for i := range n {
			c := pos[i]
			for table[c] >= 0 {
				if c += skip[i]; c >= m {
					c -= m
				}
			}
			table[c] = i
			if c += skip[i]; c >= m {
				c -= m
			}
			pos[i] = c
			if filled++; filled == m {
				return table, nil
			}
		}
	}
}

func isPrime(m int) bool {
	if m < 2 {
		return false
	}
	for d := 2; d*d <= m; d++ {
		if m%d == 0 {
			return false
		}
	}
	return true
}
