package lab

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Cgroup layout. Every lab node gets its own cgroup v2 subtree, so that the
// agent's cgroup programs (attached at the node's directory) act on that
// node's processes only, as they would on separate machines:
//
//	<mount>/membrane-lab-<lab>/
//	  <node>/            the agent's --cgroup-root; `lab exec <node>` runs here
//	    agent/           the agent
//	    pods/<ns>_<pod>/ the pod's server and `lab exec <pod>` commands
//	  ext/               the external host of a multi-node lab
//
// <mount> is /sys/fs/cgroup when that is cgroup v2. Otherwise (cgroup v1
// machines) the lab mounts cgroup2 at /run/membrane-lab/<lab>/cgroup2 and
// unmounts it at Down. The mount is deliberately outside the lab directory:
// a recursive removal of the lab directory must never walk into a cgroup
// hierarchy, where rmdir removes other people's empty cgroups.
const (
	// DefaultRunDir holds the labs' cgroup2 mount points.
	DefaultRunDir = "/run/membrane-lab"
	// systemCgroupDir is used as is when it is cgroup v2.
	systemCgroupDir = "/sys/fs/cgroup"

	cgroupRootPrefix = "membrane-lab-"
	cgroupAgentDir   = "agent"
	cgroupPodsDir    = "pods"
	cgroupExtDir     = "ext"

	// cgroupEmptyTimeout bounds the wait for killed processes to leave a
	// cgroup before it is removed.
	cgroupEmptyTimeout = 5 * time.Second
	// cgroupMaxDepth bounds the walk when removing a subtree.
	cgroupMaxDepth = 16
)

// labCgroupMount is where the lab mounts cgroup2 when the machine has no
// cgroup v2 at /sys/fs/cgroup; derived from the lab name alone, so that
// Reclaim finds it without a state file.
func labCgroupMount(lab string) string { return filepath.Join(DefaultRunDir, lab, "cgroup2") }

// chooseCgroupMount picks the cgroup v2 mount for a lab: /sys/fs/cgroup if
// it is cgroup v2 (mounted false: the lab does not own it), else the lab's
// own mount point (mounted true).
func chooseCgroupMount(lab string) (path string, mounted bool) {
	if isCgroup2(systemCgroupDir) {
		return systemCgroupDir, false
	}
	return labCgroupMount(lab), true
}

// isCgroup2 reports whether path is on a cgroup v2 file system.
func isCgroup2(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// isMountPoint reports whether something is mounted at path, from
// /proc/self/mountinfo.
func isMountPoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	path = filepath.Clean(path)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// Field 5 is the mount point, with spaces etc. octal-escaped.
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && unescapeMountinfo(fields[4]) == path {
			return true, nil
		}
	}
	if err := sc.Err(); err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	return false, nil
}

// unescapeMountinfo undoes the \ooo escapes of mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// planCgroups records where the lab's cgroups will be; nothing is created.
func (st *state) planCgroups() {
	st.CgroupMount, st.CgroupMounted = chooseCgroupMount(st.Name)
	st.CgroupRoot = filepath.Join(st.CgroupMount, cgroupRootPrefix+st.Name)
}

// nodeCgroup is node's cgroup directory; "" for labs without cgroups.
func (st *state) nodeCgroup(node string) string {
	if st.CgroupRoot == "" {
		return ""
	}
	return filepath.Join(st.CgroupRoot, node)
}

// podCgroupName is the pod's directory name below <node>/pods: readable
// when short, shortened with a hash otherwise (a file name has at most 255
// bytes). Namespaces have no '_', so the readable name is unique.
func podCgroupName(namespace, name string) string {
	s := namespace + "_" + name
	if len(s) <= 100 {
		return s
	}
	sum := sha256.Sum256([]byte(namespace + "/" + name))
	return strings.TrimRight(s[:90], "-.") + "-" + hex.EncodeToString(sum[:4])
}

// cgroupLeftover names the lab's cgroup mount point if it exists already
// (an earlier run was not cleaned up); "".
func (st *state) cgroupLeftover() string {
	if st.CgroupMounted {
		if _, err := os.Stat(filepath.Dir(st.CgroupMount)); err == nil {
			return filepath.Dir(st.CgroupMount)
		}
	}
	if st.CgroupRoot != "" && !st.CgroupMounted {
		if _, err := os.Stat(st.CgroupRoot); err == nil {
			return st.CgroupRoot
		}
	}
	return ""
}

// setupCgroups mounts cgroup2 (unless the machine's is used) and creates
// the lab's root directory. The state records both before they exist.
func (l *Lab) setupCgroups() error {
	st := &l.st
	if st.CgroupRoot == "" {
		return nil
	}
	if st.CgroupMounted {
		if err := os.MkdirAll(st.CgroupMount, 0o700); err != nil {
			return fmt.Errorf("create cgroup2 mount point: %w", err)
		}
		if !isCgroup2(st.CgroupMount) {
			l.log.Info("mounting cgroup2", "path", st.CgroupMount)
			if err := unix.Mount("none", st.CgroupMount, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
				return fmt.Errorf("mount cgroup2 at %s: %w", st.CgroupMount, err)
			}
		}
	}
	if err := os.Mkdir(st.CgroupRoot, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("cgroup %s is left over from an earlier run; run `membrane lab down --name %s` first", st.CgroupRoot, st.Name)
		}
		return fmt.Errorf("create cgroup %s: %w", st.CgroupRoot, err)
	}
	return nil
}

// mkCgroups creates cgroup directories (and their parents below the lab's
// root); existing ones are fine.
func (st *state) mkCgroups(dirs ...string) error {
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if err := st.checkCgroupPath(d); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", d, err)
		}
	}
	return nil
}

// mkNodeCgroups creates a node's cgroup with its agent/ and pods/
// directories.
func (st *state) mkNodeCgroups(n Node) error {
	if n.Cgroup == "" {
		return nil
	}
	return st.mkCgroups(n.Cgroup, filepath.Join(n.Cgroup, cgroupAgentDir), filepath.Join(n.Cgroup, cgroupPodsDir))
}

// checkCgroupPath refuses any path that is not the lab's root or below it.
func (st *state) checkCgroupPath(dir string) error {
	root := filepath.Clean(st.CgroupRoot)
	if st.CgroupRoot == "" || filepath.Base(root) != cgroupRootPrefix+st.Name {
		return fmt.Errorf("cgroup %s: lab %s has no cgroup root", dir, st.Name)
	}
	rel, err := filepath.Rel(root, filepath.Clean(dir))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
		return fmt.Errorf("cgroup %s: not below the lab's cgroup root %s", dir, root)
	}
	return nil
}

// removeCgroup kills every process left in the subtree at dir, waits until
// it is empty and removes its directories, deepest first. A missing
// directory is not an error.
func (st *state) removeCgroup(ctx context.Context, dir string) error {
	if dir == "" {
		return nil
	}
	if err := st.checkCgroupPath(dir); err != nil {
		return err
	}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if !isCgroup2(dir) {
		return fmt.Errorf("remove cgroup %s: not on a cgroup2 file system; refusing", dir)
	}
	if err := killCgroup(ctx, dir); err != nil {
		return err
	}
	dirs, err := cgroupDirs(dir)
	if err != nil {
		return err
	}
	// Deepest first: a cgroup with children cannot be removed.
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("remove cgroup %s: %w", d, err)
		}
	}
	return nil
}

// cgroupDirs lists dir and every cgroup below it.
func cgroupDirs(dir string) ([]string, error) {
	out := []string{dir}
	for i := 0; i < len(out); i++ {
		if strings.Count(out[i], "/")-strings.Count(dir, "/") > cgroupMaxDepth {
			return nil, fmt.Errorf("list cgroups below %s: deeper than %d levels", dir, cgroupMaxDepth)
		}
		ents, err := os.ReadDir(out[i])
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("list cgroup %s: %w", out[i], err)
		}
		for _, e := range ents {
			if e.IsDir() {
				out = append(out, filepath.Join(out[i], e.Name()))
			}
		}
	}
	return out, nil
}

// killCgroup SIGKILLs every process in the subtree (cgroup.kill, or each
// pid of every cgroup.procs on kernels before 5.14) and waits up to 5 s
// until none is left.
func killCgroup(ctx context.Context, dir string) error {
	if populated, err := cgroupPopulated(dir); err != nil || !populated {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		dirs, derr := cgroupDirs(dir)
		if derr != nil {
			return derr
		}
		for _, d := range dirs {
			for _, pid := range cgroupProcs(d) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	deadline := time.Now().Add(cgroupEmptyTimeout)
	for {
		populated, err := cgroupPopulated(dir)
		if err != nil || !populated {
			return err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("empty cgroup %s: processes %v still in it after SIGKILL", dir, cgroupProcs(dir))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cgroupPopulated reads "populated" from cgroup.events: whether any process
// is in the subtree.
func cgroupPopulated(dir string) (bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s/cgroup.events: %w", dir, err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "populated "); ok {
			return strings.TrimSpace(v) != "0", nil
		}
	}
	return false, fmt.Errorf("read %s/cgroup.events: no populated field", dir)
}

// cgroupProcs lists the pids directly in the cgroup.
func cgroupProcs(dir string) []int {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for f := range strings.FieldsSeq(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// downCgroups removes the lab's cgroup subtree and, if the lab mounted
// cgroup2, unmounts it and removes the mount point. Without a recorded
// mount it looks at the derived mount point, so that Reclaim cleans up
// without a state file. The mount stays if the subtree could not be
// removed, so that a later Down can retry.
func (l *Lab) downCgroups(ctx context.Context) error {
	st := l.st
	if st.CgroupRoot == "" {
		st.planCgroups() // the derived names
	}
	if st.CgroupMounted {
		if m, _ := isMountPoint(st.CgroupMount); !m {
			// Nothing mounted: nothing of the lab's is reachable there.
			return removeMountDir(st.CgroupMount)
		}
	}
	if err := st.removeCgroup(ctx, st.CgroupRoot); err != nil {
		return err
	}
	if !st.CgroupMounted {
		return nil
	}
	l.log.Info("unmounting cgroup2", "path", st.CgroupMount)
	if err := unix.Unmount(st.CgroupMount, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount cgroup2 at %s: %w", st.CgroupMount, err)
	}
	return removeMountDir(st.CgroupMount)
}

// removeMountDir removes the (unmounted) mount point and, when it is the
// lab's own /run/membrane-lab/<lab>, its parent; both only if empty. The
// shared /run/membrane-lab stays.
func removeMountDir(mp string) error {
	dirs := []string{mp}
	if parent := filepath.Dir(mp); filepath.Dir(parent) == DefaultRunDir {
		dirs = append(dirs, parent)
	}
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("remove %s: %w", d, err)
		}
	}
	return nil
}

// openCgroup opens a cgroup directory for SysProcAttr.CgroupFD (clone3
// with CLONE_INTO_CGROUP: the child starts in the cgroup, before it runs
// any code).
func openCgroup(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup %s: %w", dir, err)
	}
	return os.NewFile(uintptr(fd), dir), nil
}

// procCgroup2 is the cgroup v2 path of pid ("0::" line of /proc/PID/cgroup),
// relative to the hierarchy's root.
func procCgroup2(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", err
	}
	return ParseCgroup2(string(b))
}

// ParseCgroup2 returns the cgroup v2 path from the text of /proc/PID/cgroup
// (its "0::/path" line; cgroup v1 lines are skipped).
func ParseCgroup2(procCgroup string) (string, error) {
	for line := range strings.SplitSeq(procCgroup, "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("no cgroup v2 (0::) line in %q", procCgroup)
}

// CgroupPath is dir (a directory below the cgroup2 mount) as the kernel
// names it in /proc/PID/cgroup: relative to the mount, with a leading '/'.
func (l *Lab) CgroupPath(dir string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	rel, err := filepath.Rel(l.st.CgroupMount, dir)
	if err != nil || l.st.CgroupMount == "" {
		return ""
	}
	return "/" + rel
}
