package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// netnsPrefix starts every namespace the harness creates itself; deleteNetns
// refuses any other name.
const netnsPrefix = "mbb-"

// Timeouts.
const (
	cmdTimeout    = 30 * time.Second // one setup command (ip, sysctl, nft)
	procStopGrace = 3 * time.Second
	listenTimeout = 10 * time.Second
	cleanupTime   = 5 * time.Minute
)

// Env is one run's view of the machine: its id, work directory, the
// namespaces and processes it made, and the undo stack that removes them.
// Its methods are safe for concurrent use.
type Env struct {
	ID      string // six hex characters, unique per run
	Dir     string // work directory, removed by Close
	CPU     int    // client and server are pinned here
	BinDir  string // membrane binaries ("" = next to the executable or $PATH)
	CNIDir  string // reference CNI plugins
	Log     *slog.Logger
	mu      sync.Mutex
	undo    []undoStep
	procs   []*Proc
	closing bool
}

type undoStep struct {
	what string
	fn   func(context.Context) error
}

// NewEnv creates the run's work directory under parent.
func NewEnv(parent, id string, cpu int, lg *slog.Logger) (*Env, error) {
	if parent == "" {
		parent = os.TempDir()
	}
	dir := filepath.Join(parent, "membrane-bench-"+id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create work dir: %w", err)
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	e := &Env{ID: id, Dir: dir, CPU: cpu, Log: lg}
	e.Defer("remove work dir "+dir, func(context.Context) error { return os.RemoveAll(dir) })
	return e, nil
}

// Defer pushes an undo step; Close runs them last in, first out.
func (e *Env) Defer(what string, fn func(context.Context) error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.undo = append(e.undo, undoStep{what, fn})
}

// Close stops every process and runs every undo step, best effort, with its
// own time budget so that it also works after ctx was cancelled.
func (e *Env) Close(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTime)
	defer cancel()
	e.mu.Lock()
	e.closing = true
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for {
		e.mu.Lock()
		if len(e.undo) == 0 {
			e.mu.Unlock()
			break
		}
		step := e.undo[len(e.undo)-1]
		e.undo = e.undo[:len(e.undo)-1]
		e.mu.Unlock()
		if err := step.fn(ctx); err != nil {
			e.Log.Warn("cleanup step failed", "step", step.what, "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", step.what, err))
		}
	}
	return errors.Join(errs...)
}

// NetnsName is the name of one of the run's namespaces: mbb-<id>-<role>.
func (e *Env) NetnsName(role string) string { return netnsPrefix + e.ID + "-" + role }

// CreateNetns creates a namespace with lo up and registers its deletion.
// Processes still inside it at cleanup are killed first.
func (e *Env) CreateNetns(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, netnsPrefix) {
		return fmt.Errorf("create netns %q: bench namespaces must start with %q", name, netnsPrefix)
	}
	if _, err := os.Stat(netnsPath(name)); err == nil {
		return fmt.Errorf("create netns %s: already exists", name)
	}
	if err := run(ctx, "ip", "netns", "add", name); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	e.Defer("delete netns "+name, func(ctx context.Context) error { return deleteNetns(ctx, name) })
	if err := run(ctx, "ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	return nil
}

func netnsPath(name string) string { return filepath.Join("/run/netns", name) }

// deleteNetns kills the processes inside a bench namespace and deletes it;
// a missing namespace is not an error.
func deleteNetns(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, netnsPrefix) || strings.ContainsRune(name, '/') {
		return fmt.Errorf("delete netns %q: not a bench namespace", name)
	}
	if _, err := os.Stat(netnsPath(name)); err != nil {
		return nil
	}
	for attempt := 0; attempt < 2; attempt++ {
		pids := netnsPids(ctx, name)
		if len(pids) == 0 {
			break
		}
		sig := syscall.SIGTERM
		if attempt > 0 {
			sig = syscall.SIGKILL
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, sig)
		}
		deadline := time.Now().Add(procStopGrace)
		for time.Now().Before(deadline) && len(netnsPids(ctx, name)) > 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := run(ctx, "ip", "netns", "delete", name); err != nil {
		if _, serr := os.Stat(netnsPath(name)); serr != nil {
			return nil
		}
		return err
	}
	return nil
}

// netnsPids lists the processes in a namespace (`ip netns pids`).
func netnsPids(ctx context.Context, name string) []int {
	out, err := output(ctx, "ip", "netns", "pids", name)
	if err != nil {
		return nil
	}
	var pids []int
	self := os.Getpid()
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid != self && pid > 1 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// run runs a setup command with a timeout; its output goes into the error.
func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, name, args...)
	return err
}

// output runs a command with a timeout and returns its stdout.
func output(ctx context.Context, name string, args ...string) (string, error) {
	return outputIn(ctx, cmdTimeout, nil, name, args...)
}

func outputIn(ctx context.Context, timeout time.Duration, stdin []byte, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = lastLines(stdout.String(), 5)
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, shortArgs(args), err, msg)
	}
	return stdout.String(), nil
}

// ExecIn runs argv in a namespace pinned to the run's CPU and returns its
// stdout. It is bounded by timeout.
func (e *Env) ExecIn(ctx context.Context, netns string, timeout time.Duration, argv ...string) (string, error) {
	full := append([]string{"netns", "exec", netns, "taskset", "-c", strconv.Itoa(e.CPU)}, argv...)
	return outputIn(ctx, timeout, nil, "ip", full...)
}

func shortArgs(args []string) string {
	s := strings.Join(args, " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Proc is a long-running process the harness started (a server).
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
}

// StartIn starts argv as a server in a namespace, pinned to the run's CPU,
// in its own process group, with output to a log in the work directory.
// Close stops it if the caller does not.
func (e *Env) StartIn(netns, name string, argv ...string) (*Proc, error) {
	logPath := filepath.Join(e.Dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	full := append([]string{"netns", "exec", netns, "taskset", "-c", strconv.Itoa(e.CPU)}, argv...)
	cmd := exec.Command("ip", full...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closing {
		return nil, errors.New("start " + name + ": run is shutting down")
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	e.procs = append(e.procs, p)
	return p, nil
}

// Alive reports whether the process is still running.
func (p *Proc) Alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after a grace
// period. Stopping a stopped process is a no-op.
func (p *Proc) Stop() error {
	if !p.Alive() {
		return nil
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(procStopGrace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.Name, pgid)
	}
}

// Tail is the end of the process's log, for error messages.
func (p *Proc) Tail() string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return "(no log)"
	}
	return lastLines(string(b), 10)
}

// WaitListen waits until something listens on port/proto inside netns,
// the process exits, or listenTimeout passes.
func (e *Env) WaitListen(ctx context.Context, netns, proto string, port uint16, p *Proc) error {
	flag := "-Hltn"
	if proto == "udp" {
		flag = "-Hlun"
	}
	want := ":" + strconv.Itoa(int(port)) + " "
	deadline := time.Now().Add(listenTimeout)
	for {
		if p != nil && !p.Alive() {
			return fmt.Errorf("%s exited before listening on %d/%s: %s", p.Name, port, proto, p.Tail())
		}
		out, err := output(ctx, "ip", "netns", "exec", netns, "ss", flag)
		if err == nil && strings.Contains(out+" ", want) {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			tail := ""
			if p != nil {
				tail = ": " + p.Tail()
			}
			return fmt.Errorf("nothing listens on %d/%s in %s after %s%s", port, proto, netns, listenTimeout, tail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeFile writes a file in the work directory and returns its path.
func (e *Env) writeFile(name string, data []byte) (string, error) {
	p := filepath.Join(e.Dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return p, nil
}

// Clean removes what killed runs left behind: every namespace named mbb-…
// (processes inside are killed first) and every lab named bench-… or
// bmem-… under the lab base directory. It must not run while another
// benchmark run is in progress.
func Clean(ctx context.Context, lg *slog.Logger) error {
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	var errs []error
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), netnsPrefix) {
			lg.Info("deleting netns", "netns", e.Name())
			if err := deleteNetns(ctx, e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := reclaimLabs(ctx, lg); err != nil {
		errs = append(errs, err)
	}
	work, _ := filepath.Glob(filepath.Join(os.TempDir(), "membrane-bench-*"))
	for _, w := range work {
		lg.Info("removing work dir", "dir", w)
		if err := os.RemoveAll(w); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
