package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHostScopeReservedAndCapacity(t *testing.T) {
	for _, tc := range []struct {
		pool     string
		capacity int
		first    string
	}{
		{"10.0.0.0/24", 253, "10.0.0.2"},
		{"10.0.0.0/29", 5, "10.0.0.2"},
		{"10.0.1.7/30", 1, "10.0.1.6"}, // masked to 10.0.1.4/30: .4 net, .5 router, .7 bcast
		{"fd00::/120", 254, "fd00::2"},
	} {
		t.Run(tc.pool, func(t *testing.T) {
			h, err := NewHostScope(context.Background(), mustPrefix(t, tc.pool), NewMemStore())
			if err != nil {
				t.Fatal(err)
			}
			if h.Capacity() != tc.capacity {
				t.Errorf("capacity = %d, want %d", h.Capacity(), tc.capacity)
			}
			a, err := h.Allocate(context.Background(), "c1/eth0")
			if err != nil {
				t.Fatal(err)
			}
			if a.String() != tc.first {
				t.Errorf("first address = %s, want %s", a, tc.first)
			}
		})
	}
}

func TestHostScopeRejectsBadPools(t *testing.T) {
	for _, s := range []string{"10.0.0.0/31", "10.0.0.0/32", "10.0.0.0/8"} {
		if _, err := NewHostScope(context.Background(), mustPrefix(t, s), NewMemStore()); err == nil {
			t.Errorf("NewHostScope(%s) succeeded, want error", s)
		}
	}
	if _, err := NewHostScope(context.Background(), netip.Prefix{}, NewMemStore()); err == nil {
		t.Error("NewHostScope(zero prefix) succeeded, want error")
	}
}

func TestHostScopeExhaustionAndRelease(t *testing.T) {
	ctx := context.Background()
	h, err := NewHostScope(ctx, mustPrefix(t, "10.1.0.0/29"), NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for i := range h.Capacity() {
		a, err := h.Allocate(ctx, fmt.Sprintf("c%d/eth0", i))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if seen[a] {
			t.Fatalf("address %s handed out twice", a)
		}
		seen[a] = true
	}
	_, err = h.Allocate(ctx, "one-too-many/eth0")
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocation past capacity: err = %v, want ErrExhausted", err)
	}
	// Idempotent for an existing owner even when full.
	if _, err := h.Allocate(ctx, "c0/eth0"); err != nil {
		t.Fatalf("re-allocate for existing owner: %v", err)
	}
	victim := netip.MustParseAddr("10.1.0.4")
	if err := h.Release(ctx, victim); err != nil {
		t.Fatal(err)
	}
	if err := h.Release(ctx, victim); err != nil {
		t.Fatalf("double release: %v", err)
	}
	a, err := h.Allocate(ctx, "new/eth0")
	if err != nil || a != victim {
		t.Fatalf("allocate after release = %v, %v; want %s", a, err, victim)
	}
}

func TestHostScopeRestartPersistence(t *testing.T) {
	ctx := context.Background()
	store := NewMemStore()
	pool := mustPrefix(t, "10.2.0.0/28")
	h1, err := NewHostScope(ctx, pool, store)
	if err != nil {
		t.Fatal(err)
	}
	a1, _ := h1.Allocate(ctx, "a/eth0")
	a2, _ := h1.Allocate(ctx, "b/eth0")
	if err := h1.Release(ctx, a1); err != nil {
		t.Fatal(err)
	}

	// "Restart": a new allocator over the same store.
	h2, err := NewHostScope(ctx, pool, store)
	if err != nil {
		t.Fatal(err)
	}
	got := h2.Allocations()
	if len(got) != 1 || got[a2] != "b/eth0" {
		t.Fatalf("after restart allocations = %v, want only %s→b/eth0", got, a2)
	}
	if a, _ := h2.Allocate(ctx, "b/eth0"); a != a2 {
		t.Fatalf("existing owner got %s after restart, want %s", a, a2)
	}
	for i := range h2.Capacity() - 1 {
		a, err := h2.Allocate(ctx, fmt.Sprintf("n%d/eth0", i))
		if err != nil {
			t.Fatal(err)
		}
		if a == a2 {
			t.Fatalf("address %s double-allocated after restart", a)
		}
	}
}

func TestHostScopeStoreFailureChangesNothing(t *testing.T) {
	ctx := context.Background()
	store := NewMemStore()
	h, err := NewHostScope(ctx, mustPrefix(t, "10.3.0.0/29"), store)
	if err != nil {
		t.Fatal(err)
	}
	store.FailClaims = errors.New("etcd down")
	if _, err := h.Allocate(ctx, "x/eth0"); err == nil {
		t.Fatal("allocate with failing store succeeded")
	}
	if n := len(h.Allocations()); n != 0 {
		t.Fatalf("allocations after failed claim = %d, want 0", n)
	}
}

func TestHostScopeSkipsAddressesTakenInStore(t *testing.T) {
	ctx := context.Background()
	store := NewMemStore()
	pool := mustPrefix(t, "10.4.0.0/29")
	h, err := NewHostScope(ctx, pool, store)
	if err != nil {
		t.Fatal(err)
	}
	// Another writer claims .2 behind this allocator's back.
	if err := store.Claim(ctx, netip.MustParseAddr("10.4.0.2"), "intruder"); err != nil {
		t.Fatal(err)
	}
	a, err := h.Allocate(ctx, "me/eth0")
	if err != nil {
		t.Fatal(err)
	}
	if a.String() == "10.4.0.2" {
		t.Fatal("allocator handed out an address the store says is taken")
	}
}

func TestAllocateAddr(t *testing.T) {
	ctx := context.Background()
	h, err := NewHostScope(ctx, mustPrefix(t, "10.5.0.0/24"), NewMemStore())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, addr, owner string
		want              error
	}{
		{"ok", "10.5.0.10", "a", nil},
		{"same owner again", "10.5.0.10", "a", nil},
		{"other owner", "10.5.0.10", "b", ErrTaken},
		{"owner holds another", "10.5.0.11", "a", ErrTaken},
		{"router", "10.5.0.1", "c", ErrNotInPool},
		{"network", "10.5.0.0", "c", ErrNotInPool},
		{"broadcast", "10.5.0.255", "c", ErrNotInPool},
		{"outside", "10.6.0.1", "c", ErrNotInPool},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := h.AllocateAddr(ctx, netip.MustParseAddr(tc.addr), tc.owner)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("AllocateAddr(%s, %s) = %v, want %v", tc.addr, tc.owner, err, tc.want)
			}
		})
	}
}
