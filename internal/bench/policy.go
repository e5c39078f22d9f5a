package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/membrane-net/membrane/internal/api"
)

// PolicyInstall is the policy a MEMBRANE-POLICY-N topology installed for
// its server pod, as the agent reports it.
type PolicyInstall struct {
	// Requested is N, the never-matching entries asked for.
	Requested int `json:"requested"`
	// Entries is the size of the server pod's policy map as the agent's
	// API dumps it (GET /v1/bpf/policy/bench/server): N plus the entries
	// that let the client (and the host) in.
	Entries int `json:"entries"`
	// IngressEnforced is the server pod's ingress enforcement flag.
	IngressEnforced bool `json:"ingressEnforced"`
	// Objects is the number of NetworkPolicies applied.
	Objects int `json:"objects"`
	// PolicyMapSize is the agent's --policy-map-size (0: its default).
	PolicyMapSize int `json:"policyMapSize,omitempty"`
	// InstallSeconds runs from the first apply to the agent enforcing the
	// last one (computing identities, map state and writing the map).
	InstallSeconds float64 `json:"installSeconds"`
}

// Policy installation bounds.
const (
	// rulesPerPolicy keeps one NetworkPolicy, as one apply request, well
	// under the agent API's 1 MiB request limit (about 95 bytes a rule).
	rulesPerPolicy = 2000
	// policyMapSlack is room for the entries beyond N (host, client).
	policyMapSlack = 64
	// installPoll is how often the agent's realized revision is polled.
	installPoll = 100 * time.Millisecond
	// defaultPolicyMapSize is the agent's default --policy-map-size
	// (loader.DefaultPolicyMapSize; a test keeps them equal).
	defaultPolicyMapSize = 16384
)

// installTimeout bounds installing n entries: the agent recomputes the
// whole map state on every change, about 20 s for 50000 entries on a
// 2-core VM.
func installTimeout(n int) time.Duration { return time.Minute + time.Duration(n)*4*time.Millisecond }

// policyMapSize is the --policy-map-size that n entries need, 0 when the
// agent's default does: the next power of two with room to spare.
func policyMapSize(n int) int {
	need := n + policyMapSlack
	if need <= defaultPolicyMapSize {
		return 0
	}
	size := defaultPolicyMapSize
	for size < need {
		size *= 2
	}
	return size
}

// Labels of the bench pods, as the policies select them.
var (
	serverSelector = map[string]any{"matchLabels": map[string]string{"app": "bench-server"}}
	clientSelector = map[string]any{"matchLabels": map[string]string{"app": "bench-client"}}
)

// networkPolicy renders a NetworkPolicy selecting the bench server.
func networkPolicy(name string, ingress []any) string {
	b, err := json.Marshal(map[string]any{
		"apiVersion": "networking.k8s.io/v1",
		"kind":       "NetworkPolicy",
		"metadata":   map[string]string{"name": name, "namespace": benchPodNamespace},
		"spec":       map[string]any{"podSelector": serverSelector, "policyTypes": []string{"Ingress"}, "ingress": ingress},
	})
	if err != nil {
		panic(err) // maps of strings always marshal
	}
	return string(b)
}

// allowClientPolicy lets the client reach the server on every port: the
// benchmark traffic.
func allowClientPolicy() string {
	return networkPolicy("mbb-allow-client", []any{map[string]any{"from": []any{map[string]any{"podSelector": clientSelector}}}})
}

// entryPolicies renders n never-matching ingress rules for the server, in
// NetworkPolicies of at most rulesPerPolicy rules: rule i allows
// denyEntry(i), the source /32 and TCP port of the i-th IPTABLES-N rule.
// Each source is a CIDR identity outside every pod CIDR, so each rule is
// one policy map entry that no benchmark packet matches.
func entryPolicies(n int) []string {
	var out []string
	for first := 0; first < n; first += rulesPerPolicy {
		var rules []any
		for i := first; i < min(n, first+rulesPerPolicy); i++ {
			src, port := denyEntry(i)
			rules = append(rules, map[string]any{
				"from":  []any{map[string]any{"ipBlock": map[string]string{"cidr": src.String() + "/32"}}},
				"ports": []any{map[string]any{"protocol": "TCP", "port": port}},
			})
		}
		out = append(out, networkPolicy(fmt.Sprintf("mbb-entries-%d", first), rules))
	}
	return out
}

// policyAPI is the part of the agent API the policy steps use.
type policyAPI interface {
	Apply(ctx context.Context, r api.ApplyRequest) (api.ApplyResponse, error)
	DeleteResources(ctx context.Context, r api.ApplyRequest) (api.ApplyResponse, error)
	Status(ctx context.Context) (api.Status, error)
	BPFPolicy(ctx context.Context, ref string) (api.BPFPolicy, error)
}

// statusAPI reads the agent's status.
type statusAPI interface {
	Status(ctx context.Context) (api.Status, error)
}

// installPolicy applies the client rule and n never-matching entries for
// the server pod, waits until the agent enforces all of it, and checks the
// server's policy map through the agent API.
func installPolicy(ctx context.Context, c policyAPI, n int) (*PolicyInstall, error) {
	t0 := time.Now()
	pi := &PolicyInstall{Requested: n, PolicyMapSize: policyMapSize(n)}
	manifests := append([]string{allowClientPolicy()}, entryPolicies(n)...)
	var last int64
	for _, m := range manifests {
		// Without waiting: the agent coalesces the changes it has not
		// computed yet, and waiting on each would recompute ever larger
		// states one after another.
		resp, err := c.Apply(ctx, api.ApplyRequest{Manifest: m})
		if err != nil {
			return nil, fmt.Errorf("apply policy: %w", err)
		}
		last = max(last, resp.Revision)
		pi.Objects++
	}
	if err := waitRealized(ctx, c, last, installTimeout(n)); err != nil {
		return nil, err
	}
	pi.InstallSeconds = time.Since(t0).Seconds()
	bp, err := c.BPFPolicy(ctx, benchPodNamespace+"/server")
	if err != nil {
		return nil, fmt.Errorf("dump server policy map: %w", err)
	}
	pi.Entries, pi.IngressEnforced = len(bp.Entries), bp.IngressEnforced
	if pi.Entries < n+1 || !pi.IngressEnforced {
		return nil, fmt.Errorf("server policy map holds %d entries (ingress enforced: %v), want at least %d and enforced", pi.Entries, pi.IngressEnforced, n+1)
	}
	return pi, nil
}

// waitRealized polls the agent until its datapath enforces store revision
// rev, for at most timeout.
func waitRealized(ctx context.Context, c statusAPI, rev int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Policy.RealizedRevision >= rev {
			return nil
		}
		if err == nil && st.Policy.LastError != "" {
			err = errors.New(st.Policy.LastError)
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("agent does not enforce policy revision %d after %s (last error: %v)", rev, timeout, err)
		}
		sleepCtx(ctx, installPoll)
	}
}
