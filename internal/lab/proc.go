package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc identifies a process the lab started. The start time (clock ticks
// since boot, /proc/PID/stat field 22) guards against a recycled PID: a
// process with the same PID but another start time is not ours.
type Proc struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
}

// startDetached starts argv in its own session with stdin from /dev/null and
// stdout/stderr appended to logPath. With cgroup set, the process is born
// in that cgroup v2 directory (clone3 CLONE_INTO_CGROUP), so it never runs
// a single instruction elsewhere. The process outlives the caller; if the
// caller lives on, a goroutine reaps it when it exits.
func startDetached(argv, env []string, logPath, cgroup string) (Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return Proc{}, fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cgroup != "" {
		cg, err := openCgroup(cgroup)
		if err != nil {
			return Proc{}, fmt.Errorf("start %s: %w", argv[0], err)
		}
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
	}
	if err := cmd.Start(); err != nil {
		return Proc{}, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := Proc{PID: cmd.Process.Pid}
	// An error means it exited already; the zero start time then makes no
	// difference, the caller's readiness check reports it as dead.
	p.StartTime, _ = procStartTime(p.PID)
	go func() { _ = cmd.Wait() }() // reap; the exit status is in the log
	return p, nil
}

// procStat returns the state letter and start time of pid.
func procStat(pid int) (state byte, start uint64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	// comm (field 2) may contain spaces and parentheses; fields after the
	// last ')' are well formed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); starttime is field 22 → f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return f[0][0], start, nil
}

func procStartTime(pid int) (uint64, error) {
	_, st, err := procStat(pid)
	return st, err
}

// Alive reports whether p is still running (zombies count as dead).
func (p Proc) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	state, start, err := procStat(p.PID)
	if err != nil {
		return false
	}
	if p.StartTime != 0 && start != p.StartTime {
		return false // recycled pid
	}
	return state != 'Z' && state != 'X'
}

// stop sends SIGTERM, waits up to grace for the process to exit, then sends
// SIGKILL and waits up to 5 s more. Stopping a process that is gone is not
// an error.
func (p Proc) stop(ctx context.Context, grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", p.PID, err)
	}
	if p.waitGone(ctx, grace) {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", p.PID, err)
	}
	if p.waitGone(context.WithoutCancel(ctx), 5*time.Second) {
		return fmt.Errorf("pid %d did not exit within %s of SIGTERM; killed", p.PID, grace)
	}
	return fmt.Errorf("pid %d still running after SIGKILL", p.PID)
}

// waitGone polls until p is gone, the timeout passes or ctx ends.
func (p Proc) waitGone(ctx context.Context, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !p.Alive() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tailFile returns the last n lines of path, for error messages.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
