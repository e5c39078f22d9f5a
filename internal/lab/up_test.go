package lab

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/membrane-net/membrane/internal/testutil"
)

// TestUpRollback: an agent that dies at start-up makes Up fail with the
// agent's log in the error, and leaves nothing behind.
func TestUpRollback(t *testing.T) {
	testutil.Privileged(t)
	bin := t.TempDir()
	for name, script := range map[string]string{
		"membrane-agent": "#!/bin/sh\necho 'fake agent: boom' >&2\nexit 1\n",
		"membrane-cni":   "#!/bin/sh\nexit 1\n",
		"membrane":       "#!/bin/sh\nexit 1\n",
	} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Name: "rb" + testutil.UniqueSuffix(), Dir: filepath.Join(t.TempDir(), "lab"), BinDir: bin}
	t.Cleanup(func() { _ = Reclaim(context.Background(), cfg) })
	_, err := Up(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "fake agent: boom") {
		t.Fatalf("Up = %v, want an error with the agent's log", err)
	}
	assertNoLeftovers(t, cfg.Name, cfg.Dir, filepath.Join(DefaultBPFRoot, agentNodeName(cfg.Name, DefaultNode)))
	if _, err := OpenDir(cfg.Dir); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenDir after failed Up: %v, want ErrNotFound", err)
	}
	// Down of a lab that does not exist is fine.
	if err := Reclaim(context.Background(), cfg); err != nil {
		t.Errorf("Reclaim of nothing: %v", err)
	}
}

// TestUpRollbackMultiNode: a native lab with external etcd whose agents die
// at start-up rolls back everything it made: nodes, router and bird, etcd
// members, fabric, pins, directory.
func TestUpRollbackMultiNode(t *testing.T) {
	testutil.Privileged(t)
	_, errBird := findSystemBinary("bird", "bird2")
	_, errEtcd := findSystemBinary("etcd", "etcd-server")
	testutil.RequireOrFail(t, errBird == nil && errEtcd == nil, "needs bird2 and etcd-server: %v %v", errBird, errEtcd)
	bin := t.TempDir()
	for name, script := range map[string]string{
		"membrane-agent": "#!/bin/sh\necho 'fake agent: boom' >&2\nexit 1\n",
		"membrane-cni":   "#!/bin/sh\nexit 1\n",
		"membrane":       "#!/bin/sh\nexit 1\n",
	} {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Name: "rbm" + testutil.UniqueSuffix(), Dir: filepath.Join(t.TempDir(), "lab"), BinDir: bin,
		Nodes: 2, Mode: ModeNative, Etcd: EtcdExternal}
	t.Cleanup(func() { _ = Reclaim(context.Background(), cfg) })
	_, err := Up(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "fake agent: boom") {
		t.Fatalf("Up = %v, want an error with the agent's log", err)
	}
	assertNoLeftovers(t, cfg.Name, cfg.Dir, filepath.Join(DefaultBPFRoot, agentNodeName(cfg.Name, "node1")))
	// No bird or etcd of this lab survives.
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), cfg.Name) {
			t.Errorf("process %s survives: %q", e.Name(), strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
}
