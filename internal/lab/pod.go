package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/membrane-net/membrane/internal/api"
)

// PodSpec describes a pod to add.
type PodSpec struct {
	Namespace string            // default "default"
	Name      string            // required
	Labels    map[string]string // passed to the plugin as the "labels" capability
	Ports     []api.NamedPort   // passed as "containerPorts"; TCP/UDP ones are also served
	Node      string            // default "node1"
}

// Pods lists the lab's pods sorted by namespace/name.
func (l *Lab) Pods() []Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st, err := loadState(l.st.Dir); err == nil {
		l.st = st
	}
	pods := slices.Clone(l.st.Pods)
	slices.SortFunc(pods, func(a, b Pod) int { return strings.Compare(a.Key(), b.Key()) })
	return pods
}

// AddPod creates the pod's namespace (lo up), attaches it with CNI ADD
// through libcni and starts its traffic server bound to the pod's address
// and 127.0.0.1. On failure the pod is rolled back (server, CNI DEL,
// namespace, state).
func (l *Lab) AddPod(ctx context.Context, spec PodSpec) (_ Pod, retErr error) {
	if spec.Namespace == "" {
		spec.Namespace = DefaultPodNamespace
	}
	if spec.Node == "" {
		spec.Node = DefaultNode
	}
	if err := ValidatePodName(spec.Namespace, spec.Name); err != nil {
		return Pod{}, err
	}
	for _, p := range spec.Ports {
		if p.Port == 0 || !slices.Contains([]string{"TCP", "UDP", "SCTP"}, strings.ToUpper(p.Protocol)) {
			return Pod{}, fmt.Errorf("pod port %q %d/%s: want a non-zero port and TCP, UDP or SCTP", p.Name, p.Port, p.Protocol)
		}
	}
	unlock, err := l.lock(ctx)
	if err != nil {
		return Pod{}, err
	}
	defer unlock()
	node, ok := l.node(spec.Node)
	if !ok {
		return Pod{}, fmt.Errorf("node %q: %w", spec.Node, ErrNotFound)
	}
	if i := l.podIndex(spec.Namespace, spec.Name); i >= 0 {
		return Pod{}, fmt.Errorf("pod %s: %w", PodKey(spec.Namespace, spec.Name), ErrExists)
	}
	nsName := ""
	for _, hashed := range []bool{false, true} {
		cand := podNetnsName(l.st.Name, spec.Namespace, spec.Name, hashed)
		taken := netnsExists(cand) || slices.ContainsFunc(l.st.Pods, func(p Pod) bool { return p.Netns == cand })
		if !taken {
			nsName = cand
			break
		}
	}
	if nsName == "" {
		return Pod{}, fmt.Errorf("pod %s: no free namespace name (is %s left over?)", PodKey(spec.Namespace, spec.Name), podNetnsName(l.st.Name, spec.Namespace, spec.Name, true))
	}
	pod := Pod{
		Namespace:   spec.Namespace,
		Name:        spec.Name,
		Node:        node.Name,
		Netns:       nsName,
		ContainerID: l.st.Name + "-" + randHex(16),
		Labels:      spec.Labels,
		Ports:       spec.Ports,
		LogPath:     filepath.Join(l.st.Dir, "pods", spec.Namespace+"_"+spec.Name+".log"),
		State:       PodCreating,
	}
	if node.Cgroup != "" {
		pod.Cgroup = filepath.Join(node.Cgroup, cgroupPodsDir, podCgroupName(spec.Namespace, spec.Name))
	}
	// Record first, so a crash leaves a trace Down can follow.
	l.st.Pods = append(l.st.Pods, pod)
	if err := l.st.save(); err != nil {
		l.st.Pods = l.st.Pods[:len(l.st.Pods)-1]
		return Pod{}, err
	}
	defer func() {
		if retErr == nil {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		l.log.Warn("pod add failed; rolling back", "pod", pod.Key(), "err", retErr)
		if err := l.removePod(rctx, &pod, true); err != nil {
			retErr = fmt.Errorf("%w (rollback: %v)", retErr, err)
			return
		}
		l.dropPod(pod.Namespace, pod.Name)
		if err := l.st.save(); err != nil {
			retErr = fmt.Errorf("%w (rollback: %v)", retErr, err)
		}
	}()

	l.log.Info("creating pod", "pod", pod.Key(), "netns", pod.Netns)
	if err := os.MkdirAll(filepath.Dir(pod.LogPath), 0o700); err != nil {
		return Pod{}, fmt.Errorf("create pod log dir: %w", err)
	}
	if err := createNetns(ctx, pod.Netns); err != nil {
		return Pod{}, err
	}
	if err := l.st.mkCgroups(pod.Cgroup); err != nil {
		return Pod{}, err
	}
	ip, err := l.cniAdd(ctx, *node, pod)
	if err != nil {
		return Pod{}, err
	}
	pod.IP = ip
	proc, err := startServer(l.serverArgv(pod), nil, pod.LogPath, pod.Cgroup)
	if err != nil {
		return Pod{}, err
	}
	pod.ServerPID, pod.ServerStart = proc.PID, proc.StartTime
	l.setPod(pod)
	if err := l.st.save(); err != nil {
		return Pod{}, err
	}
	if err := waitServer(ctx, netnsPath(pod.Netns), pod.Key(), servePorts(l.st.ServePorts, pod.Ports), proc, pod.LogPath); err != nil {
		return Pod{}, err
	}
	pod.State = PodReady
	l.setPod(pod)
	if err := l.st.save(); err != nil {
		return Pod{}, err
	}
	l.log.Info("pod ready", "pod", pod.Key(), "ip", pod.IP)
	return pod, nil
}

// DelPod removes a pod: server, CNI DEL, namespace. If CNI DEL fails the
// pod stays recorded (and its namespace in place) so that DelPod can be
// retried, as a runtime would.
func (l *Lab) DelPod(ctx context.Context, namespace, name string) error {
	if namespace == "" {
		namespace = DefaultPodNamespace
	}
	unlock, err := l.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	i := l.podIndex(namespace, name)
	if i < 0 {
		return fmt.Errorf("pod %s: %w", PodKey(namespace, name), ErrNotFound)
	}
	pod := l.st.Pods[i]
	if err := l.removePod(ctx, &pod, false); err != nil {
		l.setPod(pod)
		_ = l.st.save()
		return err
	}
	l.dropPod(namespace, name)
	return l.st.save()
}

// CheckPod runs CNI CHECK for a pod.
func (l *Lab) CheckPod(ctx context.Context, namespace, name string) error {
	if namespace == "" {
		namespace = DefaultPodNamespace
	}
	pod, err := l.findPod(PodKey(namespace, name))
	if err != nil {
		return err
	}
	l.mu.Lock()
	node, ok := l.node(pod.Node)
	var n Node
	if ok {
		n = *node
	}
	l.mu.Unlock()
	if !ok {
		return fmt.Errorf("node %q: %w", pod.Node, ErrNotFound)
	}
	list, err := l.confList(n)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	if err := l.cniConfig().CheckNetworkList(cctx, list, l.runtimeConf(pod)); err != nil {
		return fmt.Errorf("cni check %s: %w", pod.Key(), err)
	}
	return nil
}

// GC runs CNI GC on every node with the lab's pods as the valid
// attachments.
func (l *Lab) GC(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cniGC(ctx)
}

// removePod stops the server, runs CNI DEL and deletes the namespace. With
// force, every step runs whatever fails; without, a failed DEL stops it.
func (l *Lab) removePod(ctx context.Context, pod *Pod, force bool) error {
	var errs []error
	if err := pod.server().stop(ctx, serverStopGrace); err != nil {
		errs = append(errs, fmt.Errorf("stop server of %s: %w", pod.Key(), err))
	}
	pod.ServerPID, pod.ServerStart = 0, 0
	if err := l.cniDel(ctx, pod, force); err != nil {
		errs = append(errs, err)
		if !force {
			return errors.Join(errs...)
		}
	}
	if err := deleteNetns(ctx, pod.Netns); err != nil {
		errs = append(errs, err)
	}
	if err := l.st.removeCgroup(ctx, pod.Cgroup); err != nil {
		errs = append(errs, fmt.Errorf("remove cgroup of %s: %w", pod.Key(), err))
	}
	_ = os.Remove(pod.LogPath)
	return errors.Join(errs...)
}

func (l *Lab) podIndex(namespace, name string) int {
	return slices.IndexFunc(l.st.Pods, func(p Pod) bool { return p.Namespace == namespace && p.Name == name })
}

func (l *Lab) setPod(p Pod) {
	if i := l.podIndex(p.Namespace, p.Name); i >= 0 {
		l.st.Pods[i] = p
	}
}

func (l *Lab) dropPod(namespace, name string) {
	if i := l.podIndex(namespace, name); i >= 0 {
		l.st.Pods = slices.Delete(l.st.Pods, i, i+1)
	}
}

// findPod resolves "ns/name" or a name unique across namespaces.
func (l *Lab) findPod(ref string) (Pod, error) {
	pods := l.Pods()
	if ns, name, ok := strings.Cut(ref, "/"); ok {
		for _, p := range pods {
			if p.Namespace == ns && p.Name == name {
				return p, nil
			}
		}
		return Pod{}, fmt.Errorf("pod %s: %w", ref, ErrNotFound)
	}
	var found []Pod
	for _, p := range pods {
		if p.Name == ref {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return Pod{}, fmt.Errorf("pod %s: %w", ref, ErrNotFound)
	case 1:
		return found[0], nil
	}
	return Pod{}, fmt.Errorf("pod name %q is ambiguous (in %d namespaces); use NAMESPACE/NAME", ref, len(found))
}

// ---- CNI ----

// cniConfig invokes plugins from the lab's CNI bin dir and keeps libcni's
// result cache inside the lab directory.
func (l *Lab) cniConfig() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{l.st.CNIBinDir}, filepath.Join(l.st.Dir, "cni-cache"), nil)
}

// netConfList is the node's network configuration, as a runtime would find
// it in /etc/cni/net.d.
func netConfList(socket string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "membrane",
		"plugins": []map[string]any{{
			"type":         "membrane-cni",
			"socketPath":   socket,
			"capabilities": map[string]bool{"labels": true, "containerPorts": true},
		}},
	})
}

func (l *Lab) confList(n Node) (*libcni.NetworkConfigList, error) {
	b, err := netConfList(n.Socket)
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("parse cni config: %w", err)
	}
	return list, nil
}

func (l *Lab) runtimeConf(p Pod) *libcni.RuntimeConf {
	ports := make([]map[string]any, 0, len(p.Ports))
	for _, np := range p.Ports {
		ports = append(ports, map[string]any{"name": np.Name, "containerPort": np.Port, "protocol": strings.ToUpper(np.Protocol)})
	}
	labels := p.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       netnsPath(p.Netns),
		IfName:      "eth0",
		Args:        [][2]string{{"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}},
		CapabilityArgs: map[string]any{
			"labels":         labels,
			"containerPorts": ports,
		},
	}
}

// cniAdd attaches the pod and returns its IPv4 address.
func (l *Lab) cniAdd(ctx context.Context, n Node, p Pod) (netip.Addr, error) {
	list, err := l.confList(n)
	if err != nil {
		return netip.Addr{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	res, err := l.cniConfig().AddNetworkList(cctx, list, l.runtimeConf(p))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cni add %s: %w", p.Key(), err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cni add %s: convert result: %w", p.Key(), err)
	}
	for _, ipc := range r.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok && a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("cni add %s: result has no IPv4 address (%d IPs)", p.Key(), len(r.IPs))
}

// cniDel detaches the pod. When the node's agent is not running and force
// is set, a failure is only logged: the namespace and pins that Down
// removes next take the attachment with them.
func (l *Lab) cniDel(ctx context.Context, p *Pod, force bool) error {
	n, ok := l.node(p.Node)
	if !ok {
		return nil
	}
	list, err := l.confList(*n)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	if err := l.cniConfig().DelNetworkList(cctx, list, l.runtimeConf(*p)); err != nil {
		if force && !n.Agent.Alive() {
			l.log.Warn("cni del failed; agent not running", "pod", p.Key(), "err", err)
			return nil
		}
		return fmt.Errorf("cni del %s: %w", p.Key(), err)
	}
	return nil
}

// cniGC runs CNI GC per node with the lab's pods as valid attachments.
// Failures are logged.
func (l *Lab) cniGC(ctx context.Context) error {
	var errs []error
	for _, n := range l.st.Nodes {
		if !n.Agent.Alive() {
			continue
		}
		list, err := l.confList(n)
		if err != nil {
			return err
		}
		var args libcni.GCArgs
		for _, p := range l.st.Pods {
			if p.Node == n.Name && netnsExists(p.Netns) {
				args.ValidAttachments = append(args.ValidAttachments, cnitypes.GCAttachment{ContainerID: p.ContainerID, IfName: "eth0"})
			}
		}
		cctx, cancel := context.WithTimeout(ctx, cniTimeout)
		err = l.cniConfig().GCNetworkList(cctx, list, &args)
		cancel()
		if err != nil {
			l.log.Warn("cni gc failed", "node", n.Name, "err", err)
			errs = append(errs, fmt.Errorf("cni gc on %s: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// ---- traffic server ----

// servePorts is the lab's serve ports plus the pod's TCP/UDP ports.
func servePorts(lab []Port, pod []api.NamedPort) []Port {
	out := slices.Clone(lab)
	for _, np := range pod {
		p := Port{Port: np.Port, Proto: strings.ToLower(np.Protocol)}
		if (p.Proto == "tcp" || p.Proto == "udp") && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// serverArgv is `ip netns exec <pod netns> membrane lab serve ...`.
func (l *Lab) serverArgv(p Pod) []string {
	cfg := ServeConfig{Name: p.Key(), Listen: []netip.Addr{p.IP, netip.MustParseAddr("127.0.0.1")}}
	for _, sp := range servePorts(l.st.ServePorts, p.Ports) {
		if sp.Proto == "tcp" {
			cfg.TCP = append(cfg.TCP, sp.Port)
		} else {
			cfg.UDP = append(cfg.UDP, sp.Port)
		}
	}
	argv := []string{"ip", "netns", "exec", p.Netns, l.st.MembraneBin, "lab", "serve"}
	return append(argv, cfg.Args()...)
}

// startServer starts a traffic server detached, in cgroup if set.
func startServer(argv, env []string, logPath, cgroup string) (Proc, error) {
	p, err := startDetached(argv, env, logPath, cgroup)
	if err != nil {
		return Proc{}, fmt.Errorf("start traffic server: %w", err)
	}
	return p, nil
}

// waitServer waits until the server in nsPath answers on its first port
// through 127.0.0.1.
func waitServer(ctx context.Context, nsPath, name string, ports []Port, proc Proc, logPath string) error {
	if len(ports) == 0 {
		return nil
	}
	lo := netip.MustParseAddr("127.0.0.1")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if !proc.Alive() {
			return fmt.Errorf("traffic server of %s exited; last lines of %s:\n%s", name, logPath, tailFile(logPath, 20))
		}
		err := probeOne(nsPath, lo, ports[0].Port, ports[0].Proto, name, 300*time.Millisecond)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("traffic server of %s not answering on %s (%v); last lines of %s:\n%s", name, ports[0], err, logPath, tailFile(logPath, 20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ParseNamedPorts parses "http:80/tcp,dns:53/udp,8080" into named ports
// (the name is optional; the protocol defaults to TCP).
func ParseNamedPorts(s string) ([]api.NamedPort, error) {
	var out []api.NamedPort
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, rest, ok := strings.Cut(item, ":")
		if !ok {
			name, rest = "", item
		}
		num, proto, ok := strings.Cut(rest, "/")
		if !ok {
			proto = "tcp"
		}
		n, err := strconv.ParseUint(num, 10, 16)
		proto = strings.ToUpper(proto)
		if err != nil || n == 0 || !slices.Contains([]string{"TCP", "UDP", "SCTP"}, proto) {
			return nil, fmt.Errorf("parse port %q: want [NAME:]PORT[/tcp|/udp|/sctp]", item)
		}
		out = append(out, api.NamedPort{Name: name, Port: uint16(n), Protocol: proto})
	}
	return out, nil
}

func randHex(n int) string {
	b := make([]byte, n/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
