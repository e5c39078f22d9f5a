package kvstore

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/membrane-net/membrane/internal/identity"
)

func openTestStore(t *testing.T) *Store {
	t.Helper()
	dir, err := os.MkdirTemp("", "mbr-kv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s, err := Open(context.Background(), Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestIdentityAllocatorAgreesAcrossNodes(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	n1 := NewIdentityAllocator(s.Client, "n1", 10*time.Second)
	n2 := NewIdentityAllocator(s.Client, "n2", 10*time.Second)
	defer n1.Close()
	defer n2.Close()

	a1, err := n1.Allocate(ctx, "app=a")
	if err != nil {
		t.Fatal(err)
	}
	if a1 < identity.MinAllocated || a1 > identity.MaxAllocated {
		t.Fatalf("identity %d outside allocatable range", a1)
	}
	a2, err := n2.Allocate(ctx, "app=a")
	if err != nil || a2 != a1 {
		t.Fatalf("node 2 got %d, %v; want %d", a2, err, a1)
	}
	b, _ := n1.Allocate(ctx, "app=b")
	if b == a1 {
		t.Fatal("different labels got the same identity")
	}

	// n1 releases: n2 still references it, so it stays.
	if err := n1.Release(ctx, a1); err != nil {
		t.Fatal(err)
	}
	ids, _ := n1.List(ctx)
	if ids[a1] != "app=a" {
		t.Fatalf("identity %d gone while node 2 references it: %v", a1, ids)
	}
	if err := n2.Release(ctx, a1); err != nil {
		t.Fatal(err)
	}
	ids, _ = n1.List(ctx)
	if _, ok := ids[a1]; ok {
		t.Fatalf("identity %d survives its last release: %v", a1, ids)
	}
	// Re-allocation after GC works.
	if _, err := n2.Allocate(ctx, "app=a"); err != nil {
		t.Fatal(err)
	}
}

func TestIdentityAllocatorConcurrent(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	const nodes, labelsets = 4, 20
	got := make([][]identity.ID, nodes)
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := NewIdentityAllocator(s.Client, fmt.Sprintf("n%d", n), 10*time.Second)
			defer a.Close()
			for i := range labelsets {
				id, err := a.Allocate(ctx, fmt.Sprintf("app=x%d", i))
				if err != nil {
					errs <- err
					return
				}
				got[n] = append(got[n], id)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[identity.ID]int{}
	for i := range labelsets {
		for n := 1; n < nodes; n++ {
			if got[n][i] != got[0][i] {
				t.Fatalf("labels %d: node %d got %d, node 0 got %d", i, n, got[n][i], got[0][i])
			}
		}
		if j, dup := seen[got[0][i]]; dup {
			t.Fatalf("labels %d and %d share identity %d", i, j, got[0][i])
		}
		seen[got[0][i]] = i
	}
}

func TestIdentityReferencesExpireWithLease(t *testing.T) {
	s := openTestStore(t)
	ctx := context.Background()
	dead := NewIdentityAllocator(s.Client, "dead", 5*time.Second)
	id, err := dead.Allocate(ctx, "app=ghost")
	if err != nil {
		t.Fatal(err)
	}
	dead.Close() // stops keep-alive: the node "dies"
	alive := NewIdentityAllocator(s.Client, "alive", 10*time.Second)
	defer alive.Close()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		r, err := s.Client.Get(ctx, Prefix+"identities/refs/", clientPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count == 0 {
			// A GC pass (as Release triggers) now frees it.
			if err := alive.collect(ctx, id); err != nil {
				t.Fatal(err)
			}
			ids, _ := alive.List(ctx)
			if _, ok := ids[id]; ok {
				t.Fatalf("identity %d not collected after its only node died", id)
			}
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatal("reference of a dead node did not expire with its lease")
}

func clientPrefix() clientv3.OpOption { return clientv3.WithPrefix() }
