package agent

import "testing"

func TestIDPool(t *testing.T) {
	p := newIDPool[string](3)
	p.set("pinned", 2) // read back from the maps
	a, _ := p.get("a")
	b, _ := p.get("b")
	if a != 3 || b != 1 {
		t.Fatalf("ids a=%d b=%d, want 3 and 1 (after the pinned 2, wrapping round)", a, b)
	}
	if again, _ := p.get("a"); again != a || p.lookup("b") != b || p.lookup("none") != 0 {
		t.Fatalf("a key does not keep its id")
	}
	if _, ok := p.get("c"); ok {
		t.Fatal("a fourth key got an id from a pool of three")
	}
	p.release("pinned")
	if c, ok := p.get("c"); !ok || c != 2 {
		t.Fatalf("after a release: c=%d %v, want the freed id 2", c, ok)
	}
}
