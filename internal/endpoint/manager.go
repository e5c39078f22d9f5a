package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/datapath/link"
	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/ipam"
)

// Sentinel errors; the agent maps them to API error codes.
var (
	ErrInvalid  = errors.New("invalid request")
	ErrNotFound = errors.New("endpoint not found")
	ErrConflict = errors.New("conflicting attachment")
)

// Links is the netlink side the manager needs (package link in production).
type Links interface {
	CreateVeth(link.VethRequest) (link.VethResult, error)
	DeleteVeth(hostIfName string) error
	HostLink(hostIfName string) (ifindex int, mac net.HardwareAddr, exists bool, err error)
	CheckVeth(link.VethRequest) error
}

// Datapath is the BPF side the manager needs (package loader in production).
type Datapath interface {
	AttachEndpoint(ifname string, ifindex int) error
	DetachEndpoint(ifname string) error
	UpsertEndpoint(ip netip.Addr, info loader.EndpointInfo) error
	DeleteEndpoint(ip netip.Addr) error
	LookupEndpoint(ip netip.Addr) (loader.EndpointInfo, bool, error)
}

// Config configures a Manager.
type Config struct {
	StateDir string // endpoints are stored in StateDir/endpoints
	Router   netip.Addr
	MTU      int
	Logger   *slog.Logger
	Now      func() time.Time
}

// Manager creates, restores and removes endpoints. Its methods are safe for
// concurrent use. The slow part of an ADD (address claim in the store, veth,
// tcx attach, map entry, state file) runs outside the mutex, so ADDs of
// different attachments proceed in parallel; an attachment with an ADD in
// flight is reserved (its key and endpoint id), and every other operation
// on that attachment waits for the ADD to finish.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	ipam  ipam.Allocator
	links Links
	dp    Datapath

	mu       sync.Mutex
	byID     map[uint16]*api.Endpoint
	byAttach map[attachKey]uint16
	// ADDs in flight: their attachments (the channel is closed when the ADD
	// ends) and the endpoint ids they reserved. An in-flight endpoint is in
	// neither byID nor byAttach, so List never shows a half-made one.
	pending  map[attachKey]chan struct{}
	reserved map[uint16]bool
}

type attachKey struct{ containerID, ifName string }

func (k attachKey) owner() string { return k.containerID + "/" + k.ifName }

// NewManager returns a manager; call Restore before serving requests.
func NewManager(cfg Config, alloc ipam.Allocator, links Links, dp Datapath) (*Manager, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("endpoint manager: empty state directory")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Join(cfg.StateDir, "endpoints"), 0o700); err != nil {
		return nil, fmt.Errorf("endpoint manager: create state directory: %w", err)
	}
	return &Manager{
		cfg: cfg, log: cfg.Logger, ipam: alloc, links: links, dp: dp,
		byID: map[uint16]*api.Endpoint{}, byAttach: map[attachKey]uint16{},
		pending: map[attachKey]chan struct{}{}, reserved: map[uint16]bool{},
	}, nil
}

var containerIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$`)

func validateAttachment(containerID, ifName string) error {
	if !containerIDRe.MatchString(containerID) {
		return fmt.Errorf("%w: containerID %q: want 1-255 characters of [A-Za-z0-9_.-] starting with a letter or digit", ErrInvalid, containerID)
	}
	if err := link.ValidIfName(ifName); err != nil {
		return fmt.Errorf("%w: ifName: %v", ErrInvalid, err)
	}
	return nil
}

// ValidateLabels checks Kubernetes label syntax.
func ValidateLabels(labels map[string]string) error {
	for k, v := range labels {
		if err := validLabelKey(k); err != nil {
			return fmt.Errorf("%w: label key %q: %v", ErrInvalid, k, err)
		}
		if !labelValueRe.MatchString(v) {
			return fmt.Errorf("%w: label %q value %q: want at most 63 characters of [A-Za-z0-9_.-], starting and ending with a letter or digit", ErrInvalid, k, v)
		}
	}
	return nil
}

var (
	labelNameRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?$`)
	labelValueRe = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?)?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?)*$`)
	portNameRe   = regexp.MustCompile(`^[a-z0-9]([a-z0-9\-]{0,13}[a-z0-9])?$`)
)

func validLabelKey(k string) error {
	prefix, name, found := strings.Cut(k, "/")
	if !found {
		name, prefix = prefix, ""
	} else if prefix == "" || len(prefix) > 253 || !dnsSubdomain.MatchString(prefix) {
		return fmt.Errorf("prefix %q is not a DNS subdomain", prefix)
	}
	if !labelNameRe.MatchString(name) {
		return fmt.Errorf("name %q: want 1-63 characters of [A-Za-z0-9_.-], starting and ending with a letter or digit", name)
	}
	return nil
}

// ValidatePorts checks named container ports and normalises protocols.
func ValidatePorts(ports []api.NamedPort) ([]api.NamedPort, error) {
	out := make([]api.NamedPort, len(ports))
	seen := map[string]bool{}
	for i, p := range ports {
		if !portNameRe.MatchString(p.Name) || !strings.ContainsAny(p.Name, "abcdefghijklmnopqrstuvwxyz") || strings.Contains(p.Name, "--") {
			return nil, fmt.Errorf("%w: ports[%d].name %q: want 1-15 lowercase letters, digits and single '-', with at least one letter", ErrInvalid, i, p.Name)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("%w: ports[%d].name %q: duplicate", ErrInvalid, i, p.Name)
		}
		seen[p.Name] = true
		if p.Port == 0 {
			return nil, fmt.Errorf("%w: ports[%d].containerPort: 0 is out of range 1-65535", ErrInvalid, i)
		}
		proto := strings.ToUpper(p.Protocol)
		if proto == "" {
			proto = "TCP"
		}
		if proto != "TCP" && proto != "UDP" && proto != "SCTP" {
			return nil, fmt.Errorf("%w: ports[%d].protocol %q: want TCP, UDP or SCTP", ErrInvalid, i, p.Protocol)
		}
		out[i] = api.NamedPort{Name: p.Name, Port: p.Port, Protocol: proto}
	}
	return out, nil
}

// Add creates an endpoint, or returns the existing one for the same
// (containerID, ifName) and network namespace (ADD is idempotent).
func (m *Manager) Add(ctx context.Context, req api.CNIAddRequest) (_ api.CNIAddResponse, retErr error) {
	if err := validateAttachment(req.ContainerID, req.IfName); err != nil {
		return api.CNIAddResponse{}, err
	}
	if req.Netns == "" || !filepath.IsAbs(req.Netns) {
		return api.CNIAddResponse{}, fmt.Errorf("%w: netns %q: want an absolute path", ErrInvalid, req.Netns)
	}
	if _, err := os.Stat(req.Netns); err != nil {
		return api.CNIAddResponse{}, fmt.Errorf("%w: netns %s: %v", ErrInvalid, req.Netns, err)
	}
	if err := ValidateLabels(req.Labels); err != nil {
		return api.CNIAddResponse{}, err
	}
	ports, err := ValidatePorts(req.Ports)
	if err != nil {
		return api.CNIAddResponse{}, err
	}
	if req.MTU != 0 && (req.MTU < 576 || req.MTU > 65535) {
		return api.CNIAddResponse{}, fmt.Errorf("%w: mtu %d: want 576-65535", ErrInvalid, req.MTU)
	}
	if req.Namespace == "" {
		req.Namespace = "default"
	}
	if req.PodName == "" {
		req.PodName = req.ContainerID[:min(12, len(req.ContainerID))]
	}
	mtu := req.MTU
	if mtu == 0 {
		mtu = m.cfg.MTU
	}

	key := attachKey{req.ContainerID, req.IfName}
	m.mu.Lock()
	if err := m.waitPendingLocked(ctx, key); err != nil {
		m.mu.Unlock()
		return api.CNIAddResponse{}, err
	}
	if id, ok := m.byAttach[key]; ok {
		defer m.mu.Unlock()
		ep := m.byID[id]
		if ep.Netns != req.Netns {
			return api.CNIAddResponse{}, fmt.Errorf("%w: container %s interface %s is already attached in netns %s, not %s", ErrConflict, req.ContainerID, req.IfName, ep.Netns, req.Netns)
		}
		return m.response(ep), nil
	}
	id, err := m.freeID()
	if err != nil {
		m.mu.Unlock()
		return api.CNIAddResponse{}, err
	}
	// Reserve the attachment and the id, then do the slow work unlocked.
	// This deferred function runs last, after every rollback below.
	done := make(chan struct{})
	m.pending[key], m.reserved[id] = done, true
	m.mu.Unlock()
	var ep *api.Endpoint
	defer func() {
		m.mu.Lock()
		delete(m.pending, key)
		delete(m.reserved, id)
		if retErr == nil {
			m.byID[id] = ep
			m.byAttach[key] = id
		}
		m.mu.Unlock()
		close(done)
	}()

	addr, err := m.ipam.Allocate(ctx, key.owner())
	if err != nil {
		return api.CNIAddResponse{}, fmt.Errorf("allocate address for %s: %w", key.owner(), err)
	}
	defer func() {
		if retErr != nil {
			if err := m.ipam.Release(context.WithoutCancel(ctx), addr); err != nil {
				m.log.Error("roll back address after failed ADD", "addr", addr, "err", err)
			}
		}
	}()

	hostIf := link.HostIfName(req.ContainerID, req.IfName)
	vreq := link.VethRequest{HostIfName: hostIf, Netns: req.Netns, IfName: req.IfName,
		Addr: netip.PrefixFrom(addr, addr.BitLen()), Router: m.cfg.Router, MTU: mtu}
	vres, err := m.links.CreateVeth(vreq)
	if err != nil {
		return api.CNIAddResponse{}, err
	}
	defer func() {
		if retErr != nil {
			if err := m.links.DeleteVeth(hostIf); err != nil {
				m.log.Error("roll back veth after failed ADD", "ifname", hostIf, "err", err)
			}
		}
	}()
	if err := m.dp.AttachEndpoint(hostIf, vres.HostIfIndex); err != nil {
		return api.CNIAddResponse{}, fmt.Errorf("attach datapath to %s: %w", hostIf, err)
	}
	defer func() {
		if retErr != nil {
			_ = m.dp.DetachEndpoint(hostIf)
		}
	}()
	// Fail closed: until the agent has computed this endpoint's identity
	// and policy, both directions are enforced with an empty policy.
	info := loader.EndpointInfo{IfIndex: uint32(vres.HostIfIndex), PodMAC: vres.PodMAC, HostMAC: vres.HostMAC, EndpointID: id,
		Flags: loader.FlagIngressEnforced | loader.FlagEgressEnforced}
	if err := m.dp.UpsertEndpoint(addr, info); err != nil {
		return api.CNIAddResponse{}, fmt.Errorf("program endpoint %s: %w", addr, err)
	}
	defer func() {
		if retErr != nil {
			_ = m.dp.DeleteEndpoint(addr)
		}
	}()

	ep = &api.Endpoint{
		ID: id, ContainerID: req.ContainerID, IfName: req.IfName, Netns: req.Netns,
		Namespace: req.Namespace, Name: req.PodName, Labels: copyLabels(req.Labels), Ports: ports,
		IPv4: addr, MAC: vres.PodMAC.String(), HostIfName: hostIf, HostIfIndex: vres.HostIfIndex,
		HostMAC: vres.HostMAC.String(), State: "ready", CreatedAt: m.cfg.Now().UTC(),
		IngressEnforced: true, EgressEnforced: true,
	}
	if err := m.save(ep); err != nil {
		return api.CNIAddResponse{}, err
	}
	m.log.Info("endpoint added", "id", id, "container", req.ContainerID, "pod", req.Namespace+"/"+req.PodName, "ip", addr, "ifname", hostIf)
	return m.response(ep), nil
}

func (m *Manager) response(ep *api.Endpoint) api.CNIAddResponse {
	return api.CNIAddResponse{
		Endpoint: cloneEndpoint(ep),
		Address:  netip.PrefixFrom(ep.IPv4, ep.IPv4.BitLen()),
		Gateway:  m.cfg.Router,
		Routes:   []api.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: m.cfg.Router}},
	}
}

// waitPendingLocked waits, with mu held on entry and on return, until no
// ADD of key is in flight.
func (m *Manager) waitPendingLocked(ctx context.Context, key attachKey) error {
	for {
		ch, ok := m.pending[key]
		if !ok {
			return nil
		}
		m.mu.Unlock()
		select {
		case <-ch:
			m.mu.Lock()
		case <-ctx.Done():
			m.mu.Lock()
			return fmt.Errorf("wait for the ADD of %s in flight: %w", key.owner(), ctx.Err())
		}
	}
}

func (m *Manager) freeID() (uint16, error) {
	for id := 1; id <= 0xffff; id++ {
		if _, used := m.byID[uint16(id)]; !used && !m.reserved[uint16(id)] {
			return uint16(id), nil
		}
	}
	return 0, errors.New("no free endpoint id (65535 endpoints on this node)")
}

// Del removes an attachment. Unknown attachments are not an error.
func (m *Manager) Del(ctx context.Context, req api.CNIDelRequest) error {
	if err := validateAttachment(req.ContainerID, req.IfName); err != nil {
		return err
	}
	key := attachKey{req.ContainerID, req.IfName}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.waitPendingLocked(ctx, key); err != nil {
		return err
	}
	id, ok := m.byAttach[key]
	if !ok {
		// Still release an address this owner might hold (a crash between
		// allocation and the endpoint file).
		return m.releaseOwner(ctx, key.owner())
	}
	return m.remove(ctx, m.byID[id])
}

// remove tears an endpoint down in reverse order of creation; the state
// file goes last so a failure leaves a record to retry from. Caller holds mu.
func (m *Manager) remove(ctx context.Context, ep *api.Endpoint) error {
	if err := m.dp.DeleteEndpoint(ep.IPv4); err != nil {
		return fmt.Errorf("delete endpoint %d (%s): %w", ep.ID, ep.IPv4, err)
	}
	if err := m.dp.DetachEndpoint(ep.HostIfName); err != nil {
		return fmt.Errorf("delete endpoint %d: detach %s: %w", ep.ID, ep.HostIfName, err)
	}
	if err := m.links.DeleteVeth(ep.HostIfName); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", ep.ID, err)
	}
	if err := m.ipam.Release(ctx, ep.IPv4); err != nil {
		return fmt.Errorf("delete endpoint %d: %w", ep.ID, err)
	}
	if err := os.Remove(m.path(ep.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete endpoint %d: remove state: %w", ep.ID, err)
	}
	delete(m.byID, ep.ID)
	delete(m.byAttach, attachKey{ep.ContainerID, ep.IfName})
	m.log.Info("endpoint deleted", "id", ep.ID, "container", ep.ContainerID, "ip", ep.IPv4)
	return nil
}

func (m *Manager) releaseOwner(ctx context.Context, owner string) error {
	for a, o := range m.ipam.Allocations() {
		if o == owner {
			if err := m.ipam.Release(ctx, a); err != nil {
				return err
			}
		}
	}
	return nil
}

// Check verifies an attachment end to end: record, interfaces, address,
// routes, program map entry.
func (m *Manager) Check(ctx context.Context, req api.CNICheckRequest) error {
	if err := validateAttachment(req.ContainerID, req.IfName); err != nil {
		return err
	}
	key := attachKey{req.ContainerID, req.IfName}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.waitPendingLocked(ctx, key); err != nil {
		return err
	}
	id, ok := m.byAttach[key]
	if !ok {
		return fmt.Errorf("%w: container %s interface %s", ErrNotFound, req.ContainerID, req.IfName)
	}
	ep := m.byID[id]
	if req.Netns != "" && req.Netns != ep.Netns {
		return fmt.Errorf("%w: container %s is attached in netns %s, not %s", ErrConflict, req.ContainerID, ep.Netns, req.Netns)
	}
	want := netip.PrefixFrom(ep.IPv4, ep.IPv4.BitLen())
	if req.Address.IsValid() && req.Address != want {
		return fmt.Errorf("%w: container %s has address %s, the runtime expects %s", ErrConflict, req.ContainerID, want, req.Address)
	}
	if err := m.links.CheckVeth(link.VethRequest{HostIfName: ep.HostIfName, Netns: ep.Netns, IfName: ep.IfName, Addr: want, Router: m.cfg.Router}); err != nil {
		return err
	}
	info, ok, err := m.dp.LookupEndpoint(ep.IPv4)
	if err != nil {
		return fmt.Errorf("check endpoint %d: %w", ep.ID, err)
	}
	if !ok || int(info.IfIndex) != ep.HostIfIndex {
		return fmt.Errorf("check endpoint %d: endpoint map entry for %s missing or pointing at ifindex %d instead of %d", ep.ID, ep.IPv4, info.IfIndex, ep.HostIfIndex)
	}
	return nil
}

// GC removes every endpoint not in valid and releases every address whose
// owner is not a live endpoint.
func (m *Manager) GC(ctx context.Context, req api.CNIGCRequest) (api.CNIGCResponse, error) {
	keep := map[attachKey]bool{}
	for _, a := range req.Valid {
		keep[attachKey{a.ContainerID, a.IfName}] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out api.CNIGCResponse
	var errs []error
	for _, id := range m.sortedIDs() {
		ep := m.byID[id]
		k := attachKey{ep.ContainerID, ep.IfName}
		if keep[k] {
			continue
		}
		if err := m.remove(ctx, ep); err != nil {
			errs = append(errs, err)
			continue
		}
		out.RemovedEndpoints = append(out.RemovedEndpoints, api.Attachment{ContainerID: k.containerID, IfName: k.ifName})
		out.ReleasedIPs = append(out.ReleasedIPs, ep.IPv4)
	}
	live := map[string]bool{}
	for k := range m.byAttach {
		live[k.owner()] = true
	}
	for k := range m.pending {
		live[k.owner()] = true // its address is being claimed right now
	}
	allocs := m.ipam.Allocations()
	for _, a := range ipam.SortedAddrs(allocs) {
		if live[allocs[a]] {
			continue
		}
		if err := m.ipam.Release(ctx, a); err != nil {
			errs = append(errs, err)
			continue
		}
		m.log.Info("released leaked address", "addr", a, "owner", allocs[a])
		out.ReleasedIPs = append(out.ReleasedIPs, a)
	}
	return out, errors.Join(errs...)
}

// List returns all endpoints ordered by id.
func (m *Manager) List() []api.Endpoint {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]api.Endpoint, 0, len(m.byID))
	for _, id := range m.sortedIDs() {
		out = append(out, cloneEndpoint(m.byID[id]))
	}
	return out
}

// Get finds an endpoint by numeric id, container id, "namespace/name" or IP.
func (m *Manager) Get(ref string) (api.Endpoint, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep, err := m.lookup(ref)
	if err != nil {
		return api.Endpoint{}, err
	}
	return cloneEndpoint(ep), nil
}

func (m *Manager) lookup(ref string) (*api.Endpoint, error) {
	if n, err := strconv.ParseUint(ref, 10, 16); err == nil {
		if ep, ok := m.byID[uint16(n)]; ok {
			return ep, nil
		}
	}
	if a, err := netip.ParseAddr(ref); err == nil {
		for _, ep := range m.byID {
			if ep.IPv4 == a {
				return ep, nil
			}
		}
	}
	var matches []*api.Endpoint
	for _, id := range m.sortedIDs() {
		ep := m.byID[id]
		if ep.ContainerID == ref || ep.Namespace+"/"+ep.Name == ref {
			return ep, nil
		}
		if ep.Name == ref || (len(ref) >= 6 && strings.HasPrefix(ep.ContainerID, ref)) {
			matches = append(matches, ep)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return nil, fmt.Errorf("%w: %q (give an id, container id, namespace/name or IP)", ErrNotFound, ref)
	default:
		return nil, fmt.Errorf("%w: %q matches %d endpoints; use namespace/name or the id", ErrInvalid, ref, len(matches))
	}
}

// Patch changes labels or named ports of an endpoint.
func (m *Manager) Patch(ref string, p api.EndpointPatch) (api.Endpoint, error) {
	var ports []api.NamedPort
	if p.Labels != nil {
		if err := ValidateLabels(*p.Labels); err != nil {
			return api.Endpoint{}, err
		}
	}
	if p.Ports != nil {
		var err error
		if ports, err = ValidatePorts(*p.Ports); err != nil {
			return api.Endpoint{}, err
		}
	}
	if p.Readiness != nil {
		switch *p.Readiness {
		case api.ReadinessReady, api.ReadinessNotReady, api.ReadinessTerminating:
		default:
			return api.Endpoint{}, fmt.Errorf("%w: readiness %q: want ready, not-ready or terminating", ErrInvalid, *p.Readiness)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ep, err := m.lookup(ref)
	if err != nil {
		return api.Endpoint{}, err
	}
	next := cloneEndpoint(ep)
	if p.Readiness != nil {
		next.Readiness = *p.Readiness
		if next.Readiness == api.ReadinessReady {
			next.Readiness = ""
		}
	}
	if p.Labels != nil {
		next.Labels = copyLabels(*p.Labels)
	}
	if p.Ports != nil {
		next.Ports = ports
	}
	if err := m.save(&next); err != nil {
		return api.Endpoint{}, err
	}
	*ep = next
	m.log.Info("endpoint updated", "id", ep.ID, "labels", ep.Labels, "ports", len(ep.Ports), "readiness", ep.Readiness)
	return cloneEndpoint(ep), nil
}

// Restore loads endpoints from the state directory and re-applies them to
// the datapath. Endpoints whose node-side interface is gone are removed.
func (m *Manager) Restore(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	files, err := filepath.Glob(filepath.Join(m.cfg.StateDir, "endpoints", "*.json"))
	if err != nil {
		return fmt.Errorf("restore endpoints: %w", err)
	}
	sort.Strings(files)
	var errs []error
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s: %w", f, err))
			continue
		}
		var ep api.Endpoint
		if err := json.Unmarshal(data, &ep); err != nil {
			// Keep the file for a human to look at; never delete data we
			// cannot read.
			errs = append(errs, fmt.Errorf("restore %s: decode: %w", f, err))
			continue
		}
		if err := m.restoreOne(ctx, &ep); err != nil {
			errs = append(errs, fmt.Errorf("restore endpoint %d (%s): %w", ep.ID, ep.ContainerID, err))
		}
	}
	m.log.Info("endpoints restored", "count", len(m.byID), "errors", len(errs))
	return errors.Join(errs...)
}

func (m *Manager) restoreOne(ctx context.Context, ep *api.Endpoint) error {
	owner := attachKey{ep.ContainerID, ep.IfName}.owner()
	ifindex, mac, exists, err := m.links.HostLink(ep.HostIfName)
	if err != nil {
		return err
	}
	if !exists {
		m.log.Warn("endpoint interface vanished while the agent was down; removing it", "id", ep.ID, "ifname", ep.HostIfName)
		_ = m.dp.DeleteEndpoint(ep.IPv4)
		_ = m.dp.DetachEndpoint(ep.HostIfName)
		if err := m.ipam.Release(ctx, ep.IPv4); err != nil {
			return err
		}
		return os.Remove(m.path(ep.ID))
	}
	if err := m.ipam.AllocateAddr(ctx, ep.IPv4, owner); err != nil {
		return err
	}
	if err := m.dp.AttachEndpoint(ep.HostIfName, ifindex); err != nil {
		return err
	}
	podMAC, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("pod MAC %q: %w", ep.MAC, err)
	}
	ep.HostIfIndex = ifindex
	ep.HostMAC = mac.String()
	// Keep the identity and enforcement the datapath has: the agent's
	// first policy computation replaces them, and until then traffic is
	// governed by the state from before the restart, not by nothing.
	info := loader.EndpointInfo{IfIndex: uint32(ifindex), PodMAC: podMAC, HostMAC: mac, EndpointID: ep.ID,
		Flags: loader.FlagIngressEnforced | loader.FlagEgressEnforced}
	if cur, ok, err := m.dp.LookupEndpoint(ep.IPv4); err == nil && ok {
		info.Flags, info.Identity = cur.Flags, cur.Identity
	}
	ep.Identity = info.Identity
	ep.IngressEnforced = info.Flags&loader.FlagIngressEnforced != 0
	ep.EgressEnforced = info.Flags&loader.FlagEgressEnforced != 0
	if err := m.dp.UpsertEndpoint(ep.IPv4, info); err != nil {
		return err
	}
	ep.State = "ready"
	m.byID[ep.ID] = ep
	m.byAttach[attachKey{ep.ContainerID, ep.IfName}] = ep.ID
	return nil
}

func (m *Manager) path(id uint16) string {
	return filepath.Join(m.cfg.StateDir, "endpoints", strconv.Itoa(int(id))+".json")
}

// save writes the endpoint atomically (temp file, fsync, rename).
func (m *Manager) save(ep *api.Endpoint) error {
	data, err := json.MarshalIndent(ep, "", "  ")
	if err != nil {
		return fmt.Errorf("save endpoint %d: %w", ep.ID, err)
	}
	dst := m.path(ep.ID)
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".tmp-*")
	if err != nil {
		return fmt.Errorf("save endpoint %d: %w", ep.ID, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save endpoint %d: %w", ep.ID, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("save endpoint %d: %w", ep.ID, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save endpoint %d: %w", ep.ID, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("save endpoint %d: %w", ep.ID, err)
	}
	return nil
}

func (m *Manager) sortedIDs() []uint16 {
	ids := make([]uint16, 0, len(m.byID))
	for id := range m.byID {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func copyLabels(l map[string]string) map[string]string {
	if len(l) == 0 {
		return nil
	}
	out := make(map[string]string, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}

func cloneEndpoint(ep *api.Endpoint) api.Endpoint {
	c := *ep
	c.Labels = copyLabels(ep.Labels)
	c.Ports = append([]api.NamedPort(nil), ep.Ports...)
	return c
}

// SetPolicyState records an endpoint's identity and enforcement and writes
// them to its endpoint map entry. The endpoint must exist.
func (m *Manager) SetPolicyState(id uint16, identity uint32, ingress, egress bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	ep, ok := m.byID[id]
	if !ok {
		return fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	if ep.Identity == identity && ep.IngressEnforced == ingress && ep.EgressEnforced == egress {
		return nil
	}
	podMAC, err := net.ParseMAC(ep.MAC)
	if err != nil {
		return fmt.Errorf("endpoint %d: pod MAC %q: %w", id, ep.MAC, err)
	}
	hostMAC, err := net.ParseMAC(ep.HostMAC)
	if err != nil {
		return fmt.Errorf("endpoint %d: host MAC %q: %w", id, ep.HostMAC, err)
	}
	var flags uint16
	if ingress {
		flags |= loader.FlagIngressEnforced
	}
	if egress {
		flags |= loader.FlagEgressEnforced
	}
	info := loader.EndpointInfo{IfIndex: uint32(ep.HostIfIndex), PodMAC: podMAC, HostMAC: hostMAC, EndpointID: id, Flags: flags, Identity: identity}
	if err := m.dp.UpsertEndpoint(ep.IPv4, info); err != nil {
		return fmt.Errorf("endpoint %d: %w", id, err)
	}
	ep.Identity, ep.IngressEnforced, ep.EgressEnforced = identity, ingress, egress
	return nil
}

// Count is the number of endpoints.
func (m *Manager) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.byID)
}
