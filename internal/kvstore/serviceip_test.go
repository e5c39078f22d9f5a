package kvstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

func TestServiceIPs(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	cidr := netip.MustParsePrefix("10.96.0.0/29") // six usable addresses
	var mu sync.Mutex
	got := map[string]netip.Addr{}
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("default/s%d", i)
			ip, err := AllocateServiceIP(ctx, s.Client, owner, cidr)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got[owner] = ip
			mu.Unlock()
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for o, ip := range got {
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s handed to %s and %s", ip, o, other)
		}
		if ip == cidr.Addr() || ip == netip.MustParseAddr("10.96.0.7") {
			t.Errorf("%s got the network or broadcast address %s", o, ip)
		}
		seen[ip] = o
	}
	// The owner gets its address again; the pool is exhausted for others.
	if ip, err := AllocateServiceIP(ctx, s.Client, "default/s0", cidr); err != nil || ip != got["default/s0"] {
		t.Errorf("again for s0: %s, %v; want %s", ip, err, got["default/s0"])
	}
	if _, err := AllocateServiceIP(ctx, s.Client, "default/late", cidr); err == nil {
		t.Error("a seventh service got an address of a /29")
	}
	// A claimed address is refused to others, released only by its owner.
	ip := got["default/s1"]
	if err := ClaimServiceIP(ctx, s.Client, "default/thief", ip); !errors.Is(err, ErrServiceIPTaken) {
		t.Errorf("claim of a held address: %v, want ErrServiceIPTaken", err)
	}
	if err := ReleaseServiceIP(ctx, s.Client, "default/thief", ip); err != nil {
		t.Fatal(err)
	}
	if err := ClaimServiceIP(ctx, s.Client, "default/thief", ip); err == nil {
		t.Error("a non-owner's release freed the address")
	}
	if err := ReleaseServiceIP(ctx, s.Client, "default/s1", ip); err != nil {
		t.Fatal(err)
	}
	if err := ClaimServiceIP(ctx, s.Client, "default/late", ip); err != nil {
		t.Errorf("claim after release: %v", err)
	}
}

func TestAllocateServiceIPsBatch(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	cidr := netip.MustParsePrefix("10.96.0.0/28") // 14 usable
	// One address is taken by a single allocation first.
	first, err := AllocateServiceIP(ctx, s.Client, "default/one", cidr)
	if err != nil {
		t.Fatal(err)
	}
	owners := []string{"default/one", "a/x", "a/y", "b/z"}
	got, err := AllocateServiceIPs(ctx, s.Client, owners, cidr)
	if err != nil {
		t.Fatal(err)
	}
	if got["default/one"] != first {
		t.Errorf("default/one got %s in the batch, holds %s", got["default/one"], first)
	}
	seen := map[netip.Addr]bool{}
	for _, o := range owners {
		ip := got[o]
		if !cidr.Contains(ip) || seen[ip] {
			t.Errorf("%s got %s (duplicate or outside %s)", o, ip, cidr)
		}
		seen[ip] = true
	}
	// Stable: asking again changes nothing; the rest of the pool is exact.
	again, err := AllocateServiceIPs(ctx, s.Client, owners, cidr)
	if err != nil || fmt.Sprint(again) != fmt.Sprint(got) {
		t.Errorf("second batch %v, %v; want %v", again, err, got)
	}
	var many []string
	for i := range 10 {
		many = append(many, fmt.Sprintf("c/s%d", i))
	}
	if _, err := AllocateServiceIPs(ctx, s.Client, many, cidr); err != nil {
		t.Errorf("10 more in a /28 with 4 taken: %v", err)
	}
	if _, err := AllocateServiceIPs(ctx, s.Client, []string{"c/late"}, cidr); err == nil {
		t.Error("a 15th service got an address of a /28")
	}
}
