package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/membrane-net/membrane/internal/api"
)

const (
	stateFileName = "state.json"
	lockFileName  = ".lock"
	stateVersion  = 1
)

// state is what state.json holds: the lab's config, the paths it resolved
// and every object it created. Objects are recorded before they are created
// so that a crash leaves a record Down can clean up from.
type state struct {
	Version     int          `json:"version"`
	Name        string       `json:"name"`
	Dir         string       `json:"dir"`
	BinDir      string       `json:"binDir,omitempty"` // as configured
	AgentBin    string       `json:"agentBin"`
	CNIBinDir   string       `json:"cniBinDir"`
	MembraneBin string       `json:"membraneBin"`
	PodCIDR     netip.Prefix `json:"podCIDR"`
	ServePorts  []Port       `json:"servePorts"`
	BPFRoot     string       `json:"bpfRoot"`
	AgentArgs   []string     `json:"agentArgs,omitempty"`
	CreatedAt   time.Time    `json:"createdAt"`
	Nodes       []Node       `json:"nodes"`
	Pods        []Pod        `json:"pods"`
}

// Node is one lab node: a network namespace with an agent in it.
type Node struct {
	Name      string       `json:"name"`      // lab-local name, "node1"
	AgentName string       `json:"agentName"` // --node-name, "<lab>-node1"
	Netns     string       `json:"netns"`
	Dir       string       `json:"dir"`
	Socket    string       `json:"socket"`
	LogPath   string       `json:"logPath"`
	PinDir    string       `json:"pinDir"`
	PodCIDR   netip.Prefix `json:"podCIDR"`
	Agent     Proc         `json:"agent"`
}

// Pod states.
const (
	PodCreating = "creating" // recorded, not (yet) fully set up
	PodReady    = "ready"
)

// Pod is one lab pod: a network namespace attached through the CNI plugin,
// with a traffic server in it.
type Pod struct {
	Namespace   string            `json:"namespace"`
	Name        string            `json:"name"`
	Node        string            `json:"node"`
	Netns       string            `json:"netns"`
	ContainerID string            `json:"containerID"`
	IP          netip.Addr        `json:"ip,omitzero"`
	Labels      map[string]string `json:"labels,omitempty"`
	Ports       []api.NamedPort   `json:"ports,omitempty"`
	ServerPID   int               `json:"serverPID,omitempty"`
	ServerStart uint64            `json:"serverStart,omitempty"`
	LogPath     string            `json:"logPath"`
	State       string            `json:"state"`
}

// Key is "namespace/name".
func (p Pod) Key() string { return PodKey(p.Namespace, p.Name) }

func (p Pod) server() Proc { return Proc{PID: p.ServerPID, StartTime: p.ServerStart} }

func statePath(dir string) string { return filepath.Join(dir, stateFileName) }

func loadState(dir string) (state, error) {
	var st state
	b, err := os.ReadFile(statePath(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("%w: no %s in %s", ErrNotFound, stateFileName, dir)
	}
	if err != nil {
		return st, fmt.Errorf("read lab state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("parse lab state %s: %w", statePath(dir), err)
	}
	if st.Version != stateVersion {
		return st, fmt.Errorf("lab state %s has version %d, want %d", statePath(dir), st.Version, stateVersion)
	}
	return st, nil
}

// save writes state.json atomically.
func (st *state) save() error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	tmp := statePath(st.Dir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp, statePath(st.Dir)); err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}

// lockDir takes an exclusive flock on dir/.lock, waiting up to 60 s or
// until ctx ends. A missing dir yields a no-op unlock and fs.ErrNotExist.
func lockDir(ctx context.Context, dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return func() {}, fmt.Errorf("lock lab dir: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return func() {}, fmt.Errorf("lock lab dir: %w", err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return func() {}, fmt.Errorf("lock lab dir %s: another membrane lab command holds it", dir)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return func() {}, fmt.Errorf("lock lab dir: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
