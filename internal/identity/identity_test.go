package identity

import (
	"context"
	"fmt"
	"testing"
)

type fakeAlloc struct {
	next     ID
	ids      map[string]ID
	releases []ID
}

func (f *fakeAlloc) Allocate(_ context.Context, key string) (ID, error) {
	if id, ok := f.ids[key]; ok {
		return id, nil
	}
	f.next++
	f.ids[key] = f.next
	return f.next, nil
}
func (f *fakeAlloc) Release(_ context.Context, id ID) error {
	f.releases = append(f.releases, id)
	return nil
}
func (f *fakeAlloc) List(context.Context) (map[ID]string, error) {
	return nil, fmt.Errorf("unused")
}

func TestCanonicalRoundTrip(t *testing.T) {
	l := map[string]string{"b": "2", "a": "1", "io.kubernetes.pod.namespace": "x", "empty": ""}
	s := Canonical(l)
	if s != "a=1,b=2,empty=,io.kubernetes.pod.namespace=x" {
		t.Fatalf("Canonical = %q", s)
	}
	back, err := ParseCanonical(s)
	if err != nil || Canonical(back) != s {
		t.Fatalf("ParseCanonical(%q) = %v, %v", s, back, err)
	}
	if _, err := ParseCanonical("a=1,,b"); err == nil {
		t.Error("bad canonical form accepted")
	}
}

func TestCacheRefcounts(t *testing.T) {
	ctx := context.Background()
	f := &fakeAlloc{next: MinAllocated - 1, ids: map[string]ID{}}
	c := NewCache(f)
	a1, _ := c.Acquire(ctx, map[string]string{"app": "a"})
	a2, _ := c.Acquire(ctx, map[string]string{"app": "a"})
	b, _ := c.Acquire(ctx, map[string]string{"app": "b"})
	if a1 != a2 || a1 == b || a1 < MinAllocated {
		t.Fatalf("ids a1=%d a2=%d b=%d", a1, a2, b)
	}
	if err := c.Release(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if len(f.releases) != 0 {
		t.Fatalf("released to the store while a reference remains: %v", f.releases)
	}
	if err := c.Release(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if len(f.releases) != 1 || f.releases[0] != a1 {
		t.Fatalf("store releases = %v, want [%d]", f.releases, a1)
	}
	if err := c.Release(ctx, a1); err == nil {
		t.Error("over-release accepted")
	}
}

func TestReserved(t *testing.T) {
	if Host.String() != "1 (reserved:host)" || ID(300).String() != "300" {
		t.Errorf("String: %s %s", Host, ID(300))
	}
	if !(LocalScope | 5).IsLocal() || MaxAllocated.IsLocal() {
		t.Error("IsLocal wrong")
	}
}
