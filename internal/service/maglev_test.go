package service

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// names returns n backend keys in Resolve's order: 10.200.1.1:8080/tcp, …
func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.200.1.%d:8080/tcp", i+1)
	}
	return out
}

func mustMaglev(t testing.TB, backends []string, m int) []int {
	t.Helper()
	table, err := Maglev(backends, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(table) != m {
		t.Fatalf("table has %d slots, want %d", len(table), m)
	}
	return table
}

func TestMaglevBalance(t *testing.T) {
	for _, tc := range []struct{ n, m int }{{10, 1021}, {3, 251}, {100, 16381}, {7, 8191}} {
		t.Run(fmt.Sprintf("n=%d,m=%d", tc.n, tc.m), func(t *testing.T) {
			table := mustMaglev(t, names(tc.n), tc.m)
			count := make([]int, tc.n)
			for _, b := range table {
				if b < 0 || b >= tc.n {
					t.Fatalf("slot holds %d, want 0..%d", b, tc.n-1)
				}
				count[b]++
			}
			fair := float64(tc.m) / float64(tc.n)
			lo, hi := slices.Min(count), slices.Max(count)
			t.Logf("slots per backend: min %d, max %d, fair %.1f", lo, hi, fair)
			for i, c := range count {
				if d := (float64(c) - fair) / fair; d < -0.03 || d > 0.03 {
					t.Errorf("backend %d has %d slots, %.1f%% off the fair %.1f", i, c, 100*d, fair)
				}
			}
			// Turn-taking gives every backend ⌊m/n⌋ or ⌈m/n⌉ slots.
			if hi-lo > 1 {
				t.Errorf("shares differ by %d slots, want at most 1", hi-lo)
			}
		})
	}
}

// TestMaglevGolden pins the table: a change here means agents of different
// versions disagree on where flows go.
func TestMaglevGolden(t *testing.T) {
	table := mustMaglev(t, names(10), 1021)
	want := []int{8, 9, 5, 2, 5, 0, 6, 0, 2, 9, 8, 0, 8, 3, 8, 7}
	if diff := slices.Compare(want, table[:16]); diff != 0 {
		t.Errorf("first 16 slots = %v, want %v", table[:16], want)
	}
	again := mustMaglev(t, names(10), 1021)
	if !slices.Equal(table, again) {
		t.Error("two builds of the same table differ")
	}
}

func TestMaglevErrors(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends []string
		m        int
		want     string
	}{
		{"not prime", names(3), 1000, "build maglev table: size 1000 is not a prime larger than the 3 backends"},
		{"too small", names(13), 13, "build maglev table: size 13 is not a prime larger than the 13 backends"},
		{"zero", names(1), 0, "build maglev table: size 0 is not a prime larger than the 1 backends"},
		{"duplicate", []string{"a", "b", "a"}, 251, `build maglev table: backend "a" listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := Maglev(tc.backends, tc.m)
			if err == nil || err.Error() != tc.want {
				t.Errorf("Maglev = %v, %v; want error %q", len(table), err, tc.want)
			}
			if table != nil {
				t.Errorf("table returned with the error")
			}
		})
	}
	if table, err := Maglev(nil, 1021); table != nil || err != nil {
		t.Errorf("Maglev(no backends) = %v, %v; want nil, nil", table, err)
	}
	if table := mustMaglev(t, names(1), 251); slices.ContainsFunc(table, func(b int) bool { return b != 0 }) {
		t.Errorf("one backend must own every slot")
	}
}

// owners maps a table to backend names.
func owners(table []int, backends []string) []string {
	out := make([]string, len(table))
	for i, b := range table {
		out[i] = backends[b]
	}
	return out
}

// TestMaglevDisruption measures how many slots change owner when one of
// ten backends goes away or an eleventh comes. Only the slots of the
// removed backend (or those the new one takes) have to move; Maglev moves
// a few more. The paper reports a few percent for m ≫ n.
func TestMaglevDisruption(t *testing.T) {
	for _, m := range []int{1021, 16381} {
		base := names(10)
		before := owners(mustMaglev(t, base, m), base)

		t.Run(fmt.Sprintf("remove one of 10, m=%d", m), func(t *testing.T) {
			for _, gone := range []int{0, 4, 9} {
				rest := slices.Delete(slices.Clone(base), gone, gone+1)
				after := owners(mustMaglev(t, rest, m), rest)
				kept, other := 0, 0
				for i := range before {
					if before[i] == base[gone] {
						continue
					}
					other++
					if after[i] == before[i] {
						kept++
					}
				}
				pct := 100 * float64(kept) / float64(other)
				t.Logf("removing %s: %d of %d slots of the other backends keep their backend (%.2f%%; %.2f%% moved needlessly)",
					base[gone], kept, other, pct, 100-pct)
				if pct < 85 {
					t.Errorf("only %.2f%% of the other backends' slots kept their backend, want >= 85%%", pct)
				}
			}
		})

		t.Run(fmt.Sprintf("add an 11th, m=%d", m), func(t *testing.T) {
			more := append(slices.Clone(base), "10.200.1.11:8080/tcp")
			after := owners(mustMaglev(t, more, m), more)
			kept, other, taken := 0, 0, 0
			for i := range before {
				if after[i] == more[10] {
					taken++
					continue
				}
				other++
				if after[i] == before[i] {
					kept++
				}
			}
			pct := 100 * float64(kept) / float64(other)
			t.Logf("adding %s: it takes %d slots; %d of the other %d keep their backend (%.2f%%; %.2f%% moved needlessly)",
				more[10], taken, kept, other, pct, 100-pct)
			if pct < 85 {
				t.Errorf("only %.2f%% of the slots not taken by the new backend kept their backend, want >= 85%%", pct)
			}
			// In the middle of the list rather than at the end: the
			// turn order changes too.
			mid := slices.Insert(slices.Clone(base), 5, "10.200.1.55:8080/tcp")
			after = owners(mustMaglev(t, mid, m), mid)
			kept, other = 0, 0
			for i := range before {
				if after[i] == mid[5] {
					continue
				}
				other++
				if after[i] == before[i] {
					kept++
				}
			}
			pct = 100 * float64(kept) / float64(other)
			t.Logf("inserting %s at position 5: %.2f%% of the other slots keep their backend", mid[5], pct)
			if pct < 85 {
				t.Errorf("only %.2f%% kept their backend, want >= 85%%", pct)
			}
		})
	}
}

func TestValidMaglevSize(t *testing.T) {
	var valid []uint32
	for m := uint32(0); m <= 20000; m++ {
		if ValidMaglevSize(m) {
			valid = append(valid, m)
			if !isPrime(int(m)) {
				t.Errorf("%d is valid but not prime", m)
			}
		}
	}
	if got := fmt.Sprint(valid); got != "[251 509 1021 2039 4093 8191 16381]" {
		t.Errorf("valid sizes = %s", got)
	}
	if !ValidMaglevSize(DefaultMaglevSize) {
		t.Errorf("DefaultMaglevSize %d is not valid", DefaultMaglevSize)
	}
}

func BenchmarkMaglev(b *testing.B) {
	backends := names(100)
	for i := range backends {
		backends[i] = strings.Replace(backends[i], "10.200.1.", fmt.Sprintf("10.200.%d.", i/250), 1)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Maglev(backends, 16381); err != nil {
			b.Fatal(err)
		}
	}
}
