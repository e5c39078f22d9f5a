package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
)

// PropagationResult is how long policy changes took to reach the datapath.
type PropagationResult struct {
	// Endpoints on the node while measuring (as the agent counts them).
	Endpoints  int     `json:"endpoints"`
	Iterations int     `json:"iterations"`
	IntervalUs float64 `json:"intervalUs"`
	// DenyMs: from the apply call (no wait) returning to the last echo
	// before the probes went silent, per iteration. Negative when the
	// datapath enforced the policy before the call had returned.
	DenyMs []float64 `json:"denyMs"`
	// AllowMs: from the delete call returning to the first echo after the
	// silence, per iteration.
	AllowMs []float64 `json:"allowMs"`
	// DenyTimeouts and AllowTimeouts count the transitions not seen within
	// the timeout; they are not in DenyMs and AllowMs.
	DenyTimeouts  int `json:"denyTimeouts"`
	AllowTimeouts int `json:"allowTimeouts"`
	// ApplyCallMs and DeleteCallMs are how long the API calls took.
	ApplyCallMs  []float64 `json:"applyCallMs"`
	DeleteCallMs []float64 `json:"deleteCallMs"`
	// ProbesSent and ProbesEchoed over the whole measurement.
	ProbesSent   int `json:"probesSent"`
	ProbesEchoed int `json:"probesEchoed"`
	// SetupSeconds is the time to start the lab and attach the endpoints.
	SetupSeconds float64 `json:"setupSeconds"`
}

// Propagation constants.
var (
	// probePorts are the UDP echo ports of the propagation lab's pods;
	// four of them make the probe tuple space last 100 s at 0.5 ms.
	probePorts = []uint16{7001, 7002, 7003, 7004}
	// probeSilence: no echo for this long (and at least 40 intervals)
	// means the probes are denied.
	probeSilence = 50 * time.Millisecond
	// propagationSettle: a random pause of up to this between changes, so
	// that changes do not fall into step with anything periodic.
	propagationSettle = 60 * time.Millisecond
	// propagationPoll is how often the prober's state is looked at.
	propagationPoll = time.Millisecond
	// attachParallel CNI ADDs at once for the endpoints without traffic.
	attachParallel = 4
)

// denyProbesPolicy is a MembranePolicy that selects every endpoint of the
// bench namespace (so that a change regenerates the policy of all of them)
// and denies the client's UDP probes; deny rules alone do not turn default
// deny on, so nothing else changes.
func denyProbesPolicy() string {
	var ports []any
	for _, p := range probePorts {
		ports = append(ports, map[string]any{"port": fmt.Sprint(p), "protocol": "UDP"})
	}
	b, err := json.Marshal(map[string]any{
		"apiVersion": "membrane.io/v1",
		"kind":       "MembranePolicy",
		"metadata":   map[string]string{"name": "mbb-deny-probes", "namespace": benchPodNamespace},
		"spec": map[string]any{
			"endpointSelector":  map[string]any{},
			"enableDefaultDeny": map[string]bool{"ingress": false},
			"ingressDeny": []any{map[string]any{
				"fromEndpoints": []any{clientSelector},
				"toPorts":       []any{map[string]any{"ports": ports}},
			}},
		},
	})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// measurePropagation starts a lab with cfg.Endpoints endpoints on its one
// node, runs the UDP prober from the client pod to the server pod, and
// alternates applying (Wait=false) and deleting the deny policy, timing
// each change from the API call's return to the probes' change of fate.
func measurePropagation(ctx context.Context, env *Env, cfg PropagationConfig, agentArgs []string) (*PropagationResult, error) {
	t0 := time.Now()
	var servePorts []lab.Port
	for _, p := range probePorts {
		servePorts = append(servePorts, lab.Port{Port: p, Proto: "udp"})
	}
	l, err := upLab(ctx, env, labSpec{name: "bprop-" + env.ID, cidr: propagationLabCIDR, servePorts: servePorts, agentArgs: agentArgs})
	if err != nil {
		return nil, err
	}
	nodes := l.Nodes()
	if len(nodes) == 0 {
		return nil, fmt.Errorf("propagation lab has no node")
	}
	node := nodes[0]
	var pods [2]lab.Pod
	for i, name := range []string{"client", "server"} {
		if pods[i], err = l.AddPod(ctx, lab.PodSpec{Namespace: benchPodNamespace, Name: name, Labels: map[string]string{"app": "bench-" + name}}); err != nil {
			return nil, fmt.Errorf("propagation: %w", err)
		}
	}
	// The other endpoints only need to exist for the agent: attached
	// through membrane-cni, no traffic server. They go with the lab.
	if err := attachEndpoints(ctx, env, node, cfg.Endpoints-2); err != nil {
		return nil, err
	}
	c := api.NewClient(node.Socket)
	st, err := c.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("propagation: agent status: %w", err)
	}
	res := &PropagationResult{Endpoints: st.Endpoints, Iterations: cfg.Iterations, IntervalUs: float64(cfg.Interval.Microseconds()),
		SetupSeconds: time.Since(t0).Seconds()}
	if st.Endpoints != cfg.Endpoints {
		return nil, fmt.Errorf("propagation: agent has %d endpoints, want %d", st.Endpoints, cfg.Endpoints)
	}

	pr := newUDPProber(pods[0].IP, pods[1].IP, probePorts, cfg.Interval)
	pr.Start(netnsPath(pods[0].Netns))
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		err := pr.Stop()
		res.ProbesSent, res.ProbesEchoed = pr.Counts()
		return err
	}
	defer func() { _ = stop() }()
	// The path must work before anything is timed.
	if !waitFor(ctx, 5*time.Second, func() bool { return pr.LastEcho() > 0 }) {
		return nil, fmt.Errorf("propagation: no echo from %s to %s within 5s", pods[0].IP, pods[1].IP)
	}
	deny := api.ApplyRequest{Manifest: denyProbesPolicy()}
	silence := max(probeSilence, 40*cfg.Interval)
	// A third of the probes due in a silence must have gone out unanswered
	// for it to count: a prober that was not scheduled saw no silence.
	minSilentProbes := int(silence/cfg.Interval) / 3
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	for it := 0; it < cfg.Iterations && ctx.Err() == nil; it++ {
		// Deny: the probes go silent.
		sleepCtx(ctx, rand.N(propagationSettle))
		callStart := time.Now()
		if _, err := c.Apply(ctx, deny); err != nil {
			return nil, fmt.Errorf("propagation: apply: %w", err)
		}
		applied := pr.now()
		res.ApplyCallMs = append(res.ApplyCallMs, ms(time.Since(callStart).Nanoseconds()))
		// Silence is a gap of probeSilence without echo during which the
		// prober kept sending (a descheduled prober is no silence).
		silent := waitFor(ctx, cfg.Timeout, func() bool {
			now, since := pr.now(), max(pr.LastEcho(), applied)
			return now-since >= silence.Nanoseconds() && pr.SentBetween(since, now) >= minSilentProbes
		})
		if silent {
			res.DenyMs = append(res.DenyMs, ms(pr.LastEcho()-applied))
		} else if it == 0 {
			return nil, fmt.Errorf("propagation: the deny policy did not stop the probes within %s", cfg.Timeout)
		} else {
			res.DenyTimeouts++
		}
		silenceSeen := pr.now()

		// Allow: the first echo after the silence.
		sleepCtx(ctx, rand.N(propagationSettle))
		callStart = time.Now()
		if _, err := c.DeleteResources(ctx, deny); err != nil {
			return nil, fmt.Errorf("propagation: delete: %w", err)
		}
		deleted := pr.now()
		res.DeleteCallMs = append(res.DeleteCallMs, ms(time.Since(callStart).Nanoseconds()))
		var first int64
		if waitFor(ctx, cfg.Timeout, func() bool { first = pr.FirstEchoAfter(silenceSeen); return first > 0 }) {
			res.AllowMs = append(res.AllowMs, ms(first-deleted))
		} else {
			res.AllowTimeouts++
			// Start the next iteration from a working path, or give up.
			if !waitFor(ctx, 10*time.Second, func() bool { return pr.FirstEchoAfter(deleted) > 0 }) {
				return nil, fmt.Errorf("propagation: probes still denied 10s after the policy was deleted (iteration %d)", it+1)
			}
		}
	}
	if err := stop(); err != nil {
		return nil, err
	}
	return res, ctx.Err()
}

// attachEndpoints attaches n namespaces to the lab node's agent through
// membrane-cni, a few at a time.
func attachEndpoints(ctx context.Context, env *Env, node lab.Node, n int) error {
	if n <= 0 {
		return nil
	}
	net, err := newCNINet(membraneConf(node.Socket), []string{env.BinDir}, filepath.Join(env.Dir, "cni-cache-prop"), node.Netns)
	if err != nil {
		return err
	}
	atts, err := makeAttachments(ctx, env, "prop", n)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, attachParallel)
	for i := range atts {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				return
			}
			if _, err := net.add(ctx, "mbb-prop-"+randHex(12), atts[i].netns, atts[i].pod); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("propagation: %d of %d endpoint ADDs failed: %w", len(errs), n, errs[0])
	}
	return ctx.Err()
}

// waitFor polls cond every propagationPoll until it holds (true) or
// timeout passes (false).
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(propagationPoll)
	}
}
