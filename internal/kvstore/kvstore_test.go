package kvstore

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/membrane-net/membrane/internal/ipam"
)

// Embedded etcd on unix sockets needs no root and no network port.
func TestEmbeddedIPAMPersistsAcrossRestart(t *testing.T) {
	ctx := context.Background()
	// Short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "mbr-kv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pool := netip.MustParsePrefix("10.9.0.0/29")

	s1, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if s1.Mode() != "embedded" {
		t.Errorf("mode = %s", s1.Mode())
	}
	h1, err := ipam.NewHostScope(ctx, pool, NewIPAMStore(s1.Client, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := h1.Allocate(ctx, "c1/eth0")
	if err != nil {
		t.Fatal(err)
	}
	b, err := h1.Allocate(ctx, "c2/eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.Release(ctx, b); err != nil {
		t.Fatal(err)
	}
	// The store refuses a second owner.
	if err := NewIPAMStore(s1.Client, "n1").Claim(ctx, a, "other"); !errors.Is(err, ipam.ErrTaken) {
		t.Fatalf("claim of held address by other owner: %v, want ErrTaken", err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(ctx, Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	h2, err := ipam.NewHostScope(ctx, pool, NewIPAMStore(s2.Client, "n1"))
	if err != nil {
		t.Fatal(err)
	}
	got := h2.Allocations()
	if len(got) != 1 || got[a] != "c1/eth0" {
		t.Fatalf("allocations after restart = %v, want %s→c1/eth0", got, a)
	}
	// Another node's keys are separate.
	h3, err := ipam.NewHostScope(ctx, pool, NewIPAMStore(s2.Client, "n2"))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(h3.Allocations()); n != 0 {
		t.Fatalf("node n2 sees %d allocations of n1", n)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{DataDir: "/x"}, true},
		{Config{Endpoints: []string{"http://10.0.0.1:2379"}}, true},
		{Config{Endpoints: []string{"unix:///run/etcd.sock"}}, true},
		{Config{}, false},
		{Config{Endpoints: []string{"10.0.0.1:2379"}}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}
