package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/lab"
)

// cniPlugin is a CNI network under test and the namespace its plugins run in.
type cniPlugin struct {
	name string
	net  *cniNet
}

// setupCNIPlugin prepares one plugin for the ADD latency measurement.
// "membrane" talks to the given lab's agent; "ptp" gets its own node
// namespace. Both are invoked the same way: libcni, plugin run under
// nsenter into the node namespace.
func setupCNIPlugin(ctx context.Context, env *Env, name string, l *lab.Lab, membraneBin string) (*cniPlugin, error) {
	switch name {
	case "membrane":
		nodes := l.Nodes()
		if len(nodes) == 0 {
			return nil, errors.New("membrane lab has no node")
		}
		net, err := newCNINet(membraneConf(nodes[0].Socket), []string{membraneBin}, filepath.Join(env.Dir, "cni-cache-membrane"), nodes[0].Netns)
		if err != nil {
			return nil, err
		}
		return &cniPlugin{name: name, net: net}, nil
	case "ptp":
		node := env.NetnsName("ptp-n")
		if err := env.CreateNetns(ctx, node); err != nil {
			return nil, err
		}
		net, err := newCNINet(ptpConf(netip.MustParsePrefix("10.214.0.0/16"), filepath.Join(env.Dir, "ipam-ptp")),
			[]string{env.CNIDir}, filepath.Join(env.Dir, "cni-cache-ptp"), node)
		if err != nil {
			return nil, err
		}
		return &cniPlugin{name: name, net: net}, nil
	}
	return nil, fmt.Errorf("cni plugin %q: %w", name, ErrNotSupported)
}

// attachment is one CNI attachment: a namespace and a container id.
type attachment struct {
	netns, id, pod string
}

// makeAttachments creates n namespaces for a plugin; they are reused by
// every round (each ADD gets a fresh container id).
func makeAttachments(ctx context.Context, env *Env, tag string, n int) ([]attachment, error) {
	out := make([]attachment, n)
	for i := range out {
		pod := fmt.Sprintf("%s-%d", tag, i)
		out[i] = attachment{netns: env.NetnsName(pod), pod: pod}
		if err := env.CreateNetns(ctx, out[i].netns); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// cniRound runs one round: ADD on every attachment (all at once when
// concurrent, else one after another), the latency of each recorded, then
// DEL of every attachment that was added (not timed).
func cniRound(ctx context.Context, p *cniPlugin, atts []attachment, concurrent bool, round int) ([]float64, int, error) {
	lat := make([]float64, len(atts))
	errs := make([]error, len(atts))
	for i := range atts {
		atts[i].id = fmt.Sprintf("mbb-%s-r%d-%s", p.name, round, randHex(8))
	}
	addOne := func(i int) {
		t0 := time.Now()
		_, err := p.net.add(ctx, atts[i].id, atts[i].netns, atts[i].pod)
		lat[i] = float64(time.Since(t0).Microseconds()) / 1000
		errs[i] = err
	}
	if concurrent {
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range atts {
			wg.Go(func() { <-start; addOne(i) })
		}
		close(start)
		wg.Wait()
	} else {
		for i := range atts {
			addOne(i)
		}
	}
	// DEL everything, also what failed half-way (DEL is idempotent).
	var delErrs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range atts {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := p.net.del(context.WithoutCancel(ctx), atts[i].id, atts[i].netns, atts[i].pod); err != nil {
				mu.Lock()
				delErrs = append(delErrs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	var ok []float64
	failures := 0
	var firstErr error
	for i, err := range errs {
		if err != nil {
			failures++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		ok = append(ok, lat[i])
	}
	if err := errors.Join(delErrs...); err != nil {
		// A failed DEL leaves state behind that would skew later rounds.
		return ok, failures, fmt.Errorf("cni del after round %d: %w", round, err)
	}
	return ok, failures, firstErr
}

// measureCNI runs the ADD latency rounds, alternating the plugins within
// each round and level so that both see the same machine conditions.
func measureCNI(ctx context.Context, env *Env, cfg CNIConfig, plugins []*cniPlugin) ([]CNISeries, []error) {
	var errs []error
	type key struct {
		plugin string
		conc   int
	}
	atts := map[key][]attachment{}
	series := map[key]*CNISeries{}
	for _, p := range plugins {
		for _, c := range cfg.Concurrency {
			n := c
			if c == 1 {
				n = cfg.Batch
			}
			a, err := makeAttachments(ctx, env, fmt.Sprintf("cni-%s-c%d", p.name, c), n)
			if err != nil {
				return nil, []error{err}
			}
			atts[key{p.name, c}] = a
			series[key{p.name, c}] = &CNISeries{Plugin: p.name, Concurrency: c}
		}
		// Warm-up: one ADD and DEL, so that the first sample does not pay
		// for cold caches of the plugin binaries.
		if _, _, err := cniRound(ctx, p, atts[key{p.name, cfg.Concurrency[0]}][:1], false, 0); err != nil {
			errs = append(errs, fmt.Errorf("cni warm-up %s: %w", p.name, err))
		}
	}
	for round := 1; round <= cfg.Rounds && ctx.Err() == nil; round++ {
		for _, c := range cfg.Concurrency {
			for _, p := range plugins {
				k := key{p.name, c}
				lat, fails, err := cniRound(ctx, p, atts[k], c > 1, round)
				s := series[k]
				s.LatencyMs = append(s.LatencyMs, lat...)
				s.Failures += fails
				if err != nil {
					errs = append(errs, fmt.Errorf("cni %s ×%d round %d: %w", p.name, c, round, err))
				}
				env.Log.Info("cni round", "plugin", p.name, "concurrency", c, "round", round, "ok", len(lat), "failed", fails)
			}
		}
	}
	var out []CNISeries
	for _, p := range plugins {
		for _, c := range cfg.Concurrency {
			out = append(out, *series[key{p.name, c}])
		}
	}
	return out, errs
}

// measureMemory starts a fresh lab, reads the agent's RSS with no endpoint,
// attaches k namespaces through membrane-cni, and reads it again.
func measureMemory(ctx context.Context, env *Env, cfg MemoryConfig, membraneBin string, agentArgs []string) (*MemoryResult, error) {
	// A /21 holds 2046 pods: room for K up to maxEndpoints.
	l, err := upLab(ctx, env, labSpec{name: "bmem-" + env.ID, cidr: memoryLabCIDR, agentArgs: agentArgs})
	if err != nil {
		return nil, err
	}
	pid, err := agentPID(l)
	if err != nil {
		return nil, err
	}
	p, err := setupCNIPlugin(ctx, env, "membrane", l, membraneBin)
	if err != nil {
		return nil, err
	}
	atts, err := makeAttachments(ctx, env, "mem", cfg.Endpoints)
	if err != nil {
		return nil, err
	}
	sleepCtx(ctx, cfg.Settle)
	rss0, err := settledRSS(ctx, pid)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var addErrs []error
	sem := make(chan struct{}, 4)
	for i := range atts {
		atts[i].id = "mbb-mem-" + randHex(12)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if ctx.Err() != nil {
				return
			}
			if _, err := p.net.add(ctx, atts[i].id, atts[i].netns, atts[i].pod); err != nil {
				mu.Lock()
				addErrs = append(addErrs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	addTime := time.Since(t0)
	if len(addErrs) > 0 {
		return nil, fmt.Errorf("memory: %d of %d ADDs failed: %w", len(addErrs), len(atts), addErrs[0])
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sleepCtx(ctx, cfg.Settle)
	rssK, err := settledRSS(ctx, pid)
	if err != nil {
		return nil, err
	}
	// The endpoints go with the lab (its node namespace takes the host-side
	// veths along); no DEL needed.
	return &MemoryResult{
		Endpoints:      cfg.Endpoints,
		RSS0KiB:        rss0,
		RSSKKiB:        rssK,
		PerEndpointKiB: (rssK - rss0) / float64(cfg.Endpoints),
		AddSeconds:     addTime.Seconds(),
	}, nil
}

// settledRSS is the median of five VmRSS readings 200 ms apart.
func settledRSS(ctx context.Context, pid int) (float64, error) {
	var xs []float64
	for i := 0; i < 5 && ctx.Err() == nil; i++ {
		v, err := vmRSS(pid)
		if err != nil {
			return 0, err
		}
		xs = append(xs, v)
		sleepCtx(ctx, 200*time.Millisecond)
	}
	if len(xs) == 0 {
		return 0, ctx.Err()
	}
	slices.Sort(xs)
	return xs[len(xs)/2], nil
}

// vmRSS reads VmRSS (KiB) from /proc/<pid>/status.
func vmRSS(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read agent memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) >= 1 {
				return strconv.ParseFloat(fields[0], 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
