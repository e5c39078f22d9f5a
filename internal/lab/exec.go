package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Exec target kinds.
const (
	TargetPod  = "pod"
	TargetNode = "node"
	TargetExt  = "ext"
)

// ExecTarget is where Exec runs a command: a network namespace and a
// cgroup v2 directory ("" for labs made before cgroups).
type ExecTarget struct {
	Kind   string `json:"kind"` // pod, node or ext
	Name   string `json:"name"` // pod key, node name or "ext"
	Netns  string `json:"netns"`
	Cgroup string `json:"cgroup,omitempty"`
}

func (t ExecTarget) String() string {
	if t.Kind == TargetExt {
		return "external host"
	}
	return t.Kind + " " + t.Name
}

// ResolveTarget finds an exec target: "ext" is the external host (multi-
// node labs), a node name ("node1") is that node, anything else a pod
// ("namespace/name", or a name unique across namespaces). The prefixes
// "pod:", "node:" and "ext:" force a kind, e.g. "pod:node1" for a pod
// named like a node.
func (l *Lab) ResolveTarget(ref string) (ExecTarget, error) {
	l.mu.Lock()
	if st, err := loadState(l.st.Dir); err == nil {
		l.st = st
	}
	st := l.st
	l.mu.Unlock()
	kind, name, forced := strings.Cut(ref, ":")
	if !forced {
		kind, name = "", ref
	}
	if kind == TargetExt || (!forced && name == TargetExt) {
		if st.Ext == nil {
			return ExecTarget{}, fmt.Errorf("target %q: lab %s has no external host (only multi-node labs have a fabric): %w", ref, st.Name, ErrNotFound)
		}
		return ExecTarget{Kind: TargetExt, Name: TargetExt, Netns: st.Ext.Netns, Cgroup: st.Ext.Cgroup}, nil
	}
	if kind == TargetNode || !forced {
		for _, n := range st.Nodes {
			if n.Name == name {
				return ExecTarget{Kind: TargetNode, Name: n.Name, Netns: n.Netns, Cgroup: n.Cgroup}, nil
			}
		}
		if forced {
			return ExecTarget{}, fmt.Errorf("node %q: %w", name, ErrNotFound)
		}
	}
	if kind != TargetPod && forced {
		return ExecTarget{}, fmt.Errorf("target %q: unknown kind %q (want pod:, node: or ext)", ref, kind)
	}
	p, err := l.findPod(name)
	if err != nil {
		return ExecTarget{}, err
	}
	return ExecTarget{Kind: TargetPod, Name: p.Key(), Netns: p.Netns, Cgroup: p.Cgroup}, nil
}

// Stdio is the standard I/O of a command run with ExecStdio; nil fields
// mean /dev/null.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// execOutputMax bounds the output Exec keeps in its error message.
const execOutputMax = 2048

// Exec runs argv in a target's network namespace and cgroup (see
// ResolveTarget for target) and returns its combined output. The error
// names the target and the command, and ends with the output's tail.
func (l *Lab) Exec(ctx context.Context, target string, argv ...string) ([]byte, error) {
	var buf bytes.Buffer
	err := l.ExecStdio(ctx, target, argv, Stdio{Stdout: &buf, Stderr: &buf})
	if err != nil {
		out := bytes.TrimSpace(buf.Bytes())
		if len(out) > execOutputMax {
			out = append([]byte("…"), out[len(out)-execOutputMax:]...)
		}
		if len(out) > 0 {
			err = fmt.Errorf("%w; output:\n%s", err, out)
		}
	}
	return buf.Bytes(), err
}

// ExecStdio runs argv in a target's network namespace (`ip netns exec`,
// which also gives it the namespace's view of /sys) and its cgroup: the
// process is born in the cgroup (clone3 CLONE_INTO_CGROUP), so cgroup
// programs attached for the target's node see all its sockets. A non-zero
// exit status is returned as an error wrapping *exec.ExitError.
func (l *Lab) ExecStdio(ctx context.Context, target string, argv []string, stdio Stdio) error {
	if len(argv) == 0 {
		return fmt.Errorf("exec in %s: no command", target)
	}
	t, err := l.ResolveTarget(target)
	if err != nil {
		return fmt.Errorf("exec %s in %s: %w", strings.Join(argv, " "), target, err)
	}
	if err := runInTarget(ctx, t, argv, stdio); err != nil {
		return fmt.Errorf("exec %q in %s: %w", strings.Join(argv, " "), t, err)
	}
	return nil
}

func runInTarget(ctx context.Context, t ExecTarget, argv []string, stdio Stdio) error {
	if !netnsExists(t.Netns) {
		return fmt.Errorf("network namespace %s is gone", t.Netns)
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", t.Netns}, argv...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	cmd.WaitDelay = 5 * time.Second
	if t.Cgroup != "" {
		cg, err := openCgroup(t.Cgroup)
		if err != nil {
			return err
		}
		defer cg.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	}
	return cmd.Run()
}
