package lab

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/testutil"
)

// buildBinaries builds ./cmd/... into a temporary bin dir.
func buildBinaries(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := t.TempDir()
	cmd := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/...: %v\n%s", err, b)
	}
	for _, name := range []string{"membrane", "membrane-agent", "membrane-cni"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			t.Fatalf("binary %s not built: %v", name, err)
		}
	}
	return bin
}

// TestLabEndToEnd runs a whole lab with the real agent and CNI plugin:
// up, three pods in two namespaces, full tcp/udp/icmp matrices, CNI CHECK,
// pod removal (endpoint gone from the agent), agent restart (traffic keeps
// flowing), down (nothing left).
func TestLabEndToEnd(t *testing.T) {
	testutil.Privileged(t)
	if testing.Short() {
		t.Skip("builds the binaries and runs an agent")
	}
	bin := buildBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	cfg := Config{
		Name:   "e2e" + testutil.UniqueSuffix(),
		Dir:    filepath.Join(t.TempDir(), "lab"),
		BinDir: bin,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	cfgd := cfg.withDefaults()
	pinDir := filepath.Join(cfgd.BPFRoot, agentNodeName(cfg.Name, DefaultNode))
	t.Cleanup(func() {
		if err := Reclaim(context.Background(), cfg); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	l, err := Up(ctx, cfg)
	if err != nil {
		t.Fatalf("up: %v", err)
	}
	if _, err := Up(ctx, cfg); !errors.Is(err, ErrExists) {
		t.Errorf("second up: %v, want ErrExists", err)
	}
	specs := []PodSpec{
		{Namespace: "default", Name: "a", Labels: map[string]string{"app": "a"}},
		{Namespace: "default", Name: "b", Labels: map[string]string{"app": "b"}},
		{Namespace: "other", Name: "c", Labels: map[string]string{"app": "c"}, Ports: []api.NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}}},
	}
	for _, s := range specs {
		p, err := l.AddPod(ctx, s)
		if err != nil {
			t.Fatalf("add pod %s/%s: %v", s.Namespace, s.Name, err)
		}
		if !cfgd.PodCIDR.Contains(p.IP) {
			t.Errorf("pod %s got %s, outside %s", p.Key(), p.IP, cfgd.PodCIDR)
		}
	}
	if _, err := l.AddPod(ctx, specs[0]); !errors.Is(err, ErrExists) {
		t.Errorf("second add of default/a: %v, want ErrExists", err)
	}
	if err := l.CheckPod(ctx, "default", "a"); err != nil {
		t.Errorf("cni check: %v", err)
	}

	expectFull := func(when string) {
		t.Helper()
		for _, spec := range []ProbeSpec{{Proto: "tcp", Port: 8080}, {Proto: "udp", Port: 9090}, {Proto: "icmp"}} {
			m, err := l.Probe(ctx, spec)
			if err != nil {
				t.Fatalf("%s: probe %s: %v", when, spec.Proto, err)
			}
			if !m.Full() {
				var b strings.Builder
				_ = m.Render(&b)
				t.Errorf("%s: %s/%d matrix not full:\n%s", when, spec.Proto, spec.Port, b.String())
			}
		}
	}
	expectFull("after add")

	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pods {
		if !p.ServerAlive || p.EndpointState != "ready" {
			t.Errorf("pod %s: server alive %v, endpoint %q", p.Key(), p.ServerAlive, p.EndpointState)
		}
	}

	// Remove b: its endpoint must be gone from the agent.
	b, err := l.findPod("default/b")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.DelPod(ctx, "default", "b"); err != nil {
		t.Fatalf("del pod: %v", err)
	}
	c := api.NewClient(l.NodeSocket(DefaultNode))
	eps, err := c.Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if ep.ContainerID == b.ContainerID {
			t.Errorf("endpoint of deleted pod still listed: %+v", ep)
		}
	}
	if len(eps) != 2 {
		t.Errorf("agent lists %d endpoints, want 2", len(eps))
	}
	if netnsExists(b.Netns) {
		t.Errorf("netns %s of deleted pod remains", b.Netns)
	}

	// Restart the agent: pods keep their endpoints and connectivity.
	if err := l.RestartAgent(ctx, DefaultNode); err != nil {
		t.Fatalf("restart agent: %v", err)
	}
	expectFull("after agent restart")

	if err := l.Down(ctx); err != nil {
		t.Fatalf("down: %v", err)
	}
	if err := l.Down(ctx); err != nil {
		t.Errorf("second down: %v", err)
	}
	assertNoLeftovers(t, cfg.Name, cfgd.Dir, pinDir)
}

func assertNoLeftovers(t *testing.T, name, dir, pinDir string) {
	t.Helper()
	ents, _ := os.ReadDir(netnsDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), netnsPrefix+name+"-") {
			t.Errorf("namespace %s remains", e.Name())
		}
	}
	for _, p := range []string{dir, pinDir} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s remains", p)
		}
	}
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
