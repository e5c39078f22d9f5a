package kvstore

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"
)

func TestAllocatePodCIDR(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	cluster := netip.MustParsePrefix("10.200.0.0/22") // four /24s
	var mu sync.Mutex
	got := map[string]netip.Prefix{}
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := AllocatePodCIDR(ctx, s.Client, fmt.Sprintf("n%d", i), cluster, 24)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			got[fmt.Sprintf("n%d", i)] = p
			mu.Unlock()
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]string{}
	for n, p := range got {
		if other, dup := seen[p]; dup {
			t.Fatalf("%s handed to %s and %s", p, n, other)
		}
		seen[p] = n
		if !cluster.Contains(p.Addr()) || p.Bits() != 24 {
			t.Errorf("%s got %s", n, p)
		}
	}
	// Sticky: a node asking again gets the same CIDR.
	if p, err := AllocatePodCIDR(ctx, s.Client, "n2", cluster, 24); err != nil || p != got["n2"] {
		t.Errorf("n2 again: %s, %v; want %s", p, err, got["n2"])
	}
	// Exhausted.
	if _, err := AllocatePodCIDR(ctx, s.Client, "n9", cluster, 24); err == nil {
		t.Error("fifth node got a /24 of a /22")
	}
	// Explicit claims respect ownership.
	if err := ClaimPodCIDR(ctx, s.Client, "n9", got["n0"]); err == nil {
		t.Error("claimed another node's CIDR")
	}
}

func TestSessionKeysLiveAndExpire(t *testing.T) {
	s := openTestStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	sess := NewSession(s.Client, 2*time.Second, slog.New(slog.DiscardHandler))
	if err := sess.Set(ctx, NodeKey("n1"), `{"name":"n1"}`); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { sess.Run(ctx); close(done) }()
	waitFor(t, 5*time.Second, "node key written", func() bool {
		r, _ := s.Client.Get(context.Background(), NodeKey("n1"))
		return len(r.Kvs) == 1
	})
	// Keys set while up are written at once; deleted ones disappear.
	if err := sess.Set(ctx, IPCacheKey(netip.MustParseAddr("10.200.1.2")), `{}`); err != nil {
		t.Fatal(err)
	}
	if r, _ := s.Client.Get(ctx, IPCachePrefix, clientPrefix()); len(r.Kvs) != 1 {
		t.Fatalf("ipcache keys = %d", len(r.Kvs))
	}
	// Lease lost (revoked behind the session's back): it re-registers.
	sess.mu.Lock()
	lease := sess.lease
	sess.mu.Unlock()
	if _, err := s.Client.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "re-registration after lease loss", func() bool {
		r, _ := s.Client.Get(context.Background(), Prefix, clientPrefix())
		n := 0
		for _, kv := range r.Kvs {
			if string(kv.Key) == NodeKey("n1") || string(kv.Key) == IPCacheKey(netip.MustParseAddr("10.200.1.2")) {
				n++
			}
		}
		return n == 2
	})
	// The node stops: its keys vanish with the lease.
	cancel()
	<-done
	waitFor(t, 10*time.Second, "keys expire after the node stops", func() bool {
		r, _ := s.Client.Get(context.Background(), NodeKey("n1"))
		return len(r.Kvs) == 0
	})
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
