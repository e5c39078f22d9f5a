package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/membrane-net/membrane/internal/lab"
	"github.com/membrane-net/membrane/internal/testutil"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds ./cmd/... and cnitool once per test binary run.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		binDir, buildErr = os.MkdirTemp("", "mbr-e2e-bin")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"./cmd/...", "github.com/containernetworking/cni/cnitool"} {
			cmd := exec.Command("go", "build", "-o", binDir+"/", pkg)
			cmd.Dir = root
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// newLab brings up a lab with a unique name and removes it at cleanup.
func newLab(t *testing.T, mutate func(*lab.Config)) *lab.Lab {
	t.Helper()
	testutil.Privileged(t)
	bin := binaries(t)
	cfg := lab.Config{
		Name:   "t" + testutil.UniqueSuffix(),
		Dir:    filepath.Join(t.TempDir(), "lab"),
		BinDir: bin,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if mutate != nil {
		mutate(&cfg)
	}
	t.Cleanup(func() {
		if err := lab.Reclaim(context.Background(), cfg); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	return l
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// inNetns runs fn on a thread switched into the named network namespace.
// Sockets created by fn stay in that namespace after it returns.
func inNetns(t *testing.T, name string, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: Go discards it when the goroutine ends.
			errc <- fmt.Errorf("return from netns %s: %w", name, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func node(t *testing.T, l *lab.Lab) lab.Node {
	t.Helper()
	nodes := l.Nodes()
	if len(nodes) != 1 {
		t.Fatalf("lab has %d nodes, want 1", len(nodes))
	}
	return nodes[0]
}

func pod(t *testing.T, l *lab.Lab, key string) lab.Pod {
	t.Helper()
	for _, p := range l.Pods() {
		if p.Key() == key {
			return p
		}
	}
	t.Fatalf("no pod %s in lab", key)
	return lab.Pod{}
}
