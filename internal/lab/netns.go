package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsPath is the bind-mount path of a named network namespace.
func netnsPath(name string) string { return filepath.Join(netnsDir, name) }

func netnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

// runIP runs `ip args...` and returns its combined output in the error.
func runIP(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// createNetns creates a named network namespace with lo up. It fails if the
// name exists. On failure nothing is left behind.
func createNetns(ctx context.Context, name string) (retErr error) {
	if !strings.HasPrefix(name, netnsPrefix) {
		return fmt.Errorf("create netns %q: lab namespaces must start with %q", name, netnsPrefix)
	}
	if netnsExists(name) {
		return fmt.Errorf("create netns %s: already exists", name)
	}
	if err := runIP(ctx, "netns", "add", name); err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	defer func() {
		if retErr != nil {
			_ = runIP(context.WithoutCancel(ctx), "netns", "delete", name)
		}
	}()
	return linkUpInNetns(name, "lo")
}

// linkUpInNetns sets a link up in a named namespace through a netlink
// handle bound to that namespace; no thread changes namespace.
func linkUpInNetns(nsName, ifname string) error {
	ns, err := netns.GetFromPath(netnsPath(nsName))
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsName, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", nsName, err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", ifname, nsName, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up in %s: %w", ifname, nsName, err)
	}
	return nil
}

// deleteNetns kills any process still inside the namespace (they can only
// be lab processes) and deletes it. Deleting a missing namespace is not an
// error.
func deleteNetns(ctx context.Context, name string) error {
	if !strings.HasPrefix(name, netnsPrefix) || strings.ContainsRune(name, '/') {
		return fmt.Errorf("delete netns %q: not a lab namespace", name)
	}
	if !netnsExists(name) {
		return nil
	}
	if err := killNetnsProcs(ctx, name); err != nil {
		return err
	}
	if err := runIP(ctx, "netns", "delete", name); err != nil {
		if !netnsExists(name) {
			return nil
		}
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// nsID is the identity of a namespace file: device and inode.
type nsID struct{ dev, ino uint64 }

func statNS(path string) (nsID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{uint64(st.Dev), st.Ino}, nil
}

// netnsProcs lists the pids whose network namespace is the named one.
func netnsProcs(name string) ([]int, error) {
	target, err := statNS(netnsPath(name))
	if err != nil {
		return nil, fmt.Errorf("stat netns %s: %w", name, err)
	}
	// Safety belt: never treat the machine's own namespace as a lab one.
	if host, err := statNS("/proc/1/ns/net"); err == nil && host == target {
		return nil, fmt.Errorf("netns %s is the host's network namespace; refusing", name)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		id, err := statNS("/proc/" + e.Name() + "/ns/net")
		if err == nil && id == target {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killNetnsProcs sends SIGTERM to every process in the namespace, waits up
// to 5 s, then SIGKILLs the rest.
func killNetnsProcs(ctx context.Context, name string) error {
	pids, err := netnsProcs(name)
	if err != nil || len(pids) == 0 {
		return err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if pids, _ = netnsProcs(name); len(pids) == 0 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(100 * time.Millisecond)
	return nil
}

// inNetns runs fn on an OS thread switched into the namespace at path.
// The goroutine locks its thread, enters the namespace, runs fn and
// switches back; only if switching back succeeds does it unlock. Otherwise
// it exits still locked and the Go runtime discards the thread, so no other
// goroutine can ever run in a lab namespace by accident. (Switching back
// matters when the goroutine happens to run on the main thread, which the
// runtime never discards.) Sockets created by fn stay in that namespace and
// may be used from any goroutine afterwards. path "" runs fn in the
// caller's namespace (for tests without root).
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return // thread state unknown: stay locked, thread is discarded
		}
		err = fn()
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
