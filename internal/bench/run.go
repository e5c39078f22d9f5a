package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/membrane-net/membrane/internal/lab"
)

// Run performs a benchmark run: it checks the tools, builds every topology,
// starts the servers, runs the rounds, measures the control plane and tears
// everything down (also on failure and when ctx is cancelled). It returns
// the results even when some steps failed (they are listed in
// Results.Errors); the error is non-nil only when nothing useful could run.
func Run(ctx context.Context, cfg Config) (_ *Results, retErr error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("membrane-bench needs root (network namespaces, veths, BPF)")
	}
	if err := CheckDeps(cfg); err != nil {
		return nil, err
	}
	membraneBinDir := ""
	if cfg.needsMembrane() {
		var err error
		if membraneBinDir, err = findMembraneBinDir(cfg.BinDir); err != nil {
			return nil, err
		}
		cfg.BinDir = membraneBinDir
	}
	lg := cfg.Logger
	env, err := NewEnv(cfg.WorkDir, randHex(6), cfg.CPU, lg)
	if err != nil {
		return nil, err
	}
	defer func() {
		lg.Info("cleaning up", "run", env.ID)
		if err := env.Close(ctx); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("cleanup: %w", err))
		}
	}()
	env.CNIDir = cfg.CNIPluginDir
	if membraneBinDir != "" {
		// Snapshot the binaries: a rebuild of bin/ during a long run must
		// not change the agent under test half-way.
		if cfg.BinDir, err = snapshotBinaries(membraneBinDir, filepath.Join(env.Dir, "bin")); err != nil {
			return nil, err
		}
	}
	env.BinDir = cfg.BinDir

	res := &Results{
		Version:   ResultsVersion,
		RunID:     env.ID,
		Profile:   cfg.Profile,
		StartedAt: time.Now().UTC().Truncate(time.Second),
		Config:    cfg,
		Host:      hostInfo(ctx, cfg),
	}
	lg.Info("benchmark run", "run", env.ID, "profile", cfg.Profile, "rounds", cfg.Rounds, "duration", cfg.Duration, "workdir", env.Dir)

	// Workloads.
	workloads := map[string]Workload{}
	for _, name := range cfg.Workloads {
		w := workloadKinds[name]()
		workloads[name] = w
		res.Workloads = append(res.Workloads, WorkloadInfo{Name: name, Tool: w.Tool(), Metrics: w.Metrics()})
	}

	// Topologies and their servers. A topology that fails to come up is
	// reported and left out; the others still run.
	type liveTopo struct {
		name  string
		spec  TopologySpec
		pair  Pair
		info  int       // index in res.Topologies
		mem   *membrane // Membrane topologies
		flows uint64    // the agent's flow event counter before the rounds
	}
	var live []liveTopo
	var membraneLab *lab.Lab
	for i, spec := range cfg.Topologies {
		if ctx.Err() != nil {
			break
		}
		topo := topologyKinds[spec.Kind](spec, i)
		mem, isMembrane := topo.(*membrane)
		labTopo, onLab := topo.(labTopology)
		if onLab {
			labTopo.setAgentArgs(cfg.AgentArgs)
		}
		info := TopologyInfo{Name: spec.Name(), Spec: spec, Description: topo.Describe()}
		lg.Info("setting up topology", "topology", info.Name)
		t0 := time.Now()
		pair, err := topo.Setup(ctx, env)
		if onLab {
			if mi := labTopo.labInfo(); mi.Lab != "" {
				info.Membrane = &mi
			}
		}
		if st, ok := topo.(serviceTopology); ok && err == nil {
			info.Services = st.serviceInstall()
		}
		if err == nil {
			err = startServers(ctx, env, cfg, workloads, spec, roleName(spec), pair)
		}
		if err == nil {
			err = warmUp(ctx, env, pair)
		}
		if err == nil && pair.Service.IsValid() {
			err = warmUpService(ctx, env, pair)
		}
		if err != nil {
			info.Error = err.Error()
			res.Errors = append(res.Errors, fmt.Sprintf("topology %s: %v", info.Name, err))
			lg.Error("topology failed", "topology", info.Name, "err", err)
		} else {
			info.Pair = &pair
			lt := liveTopo{name: info.Name, spec: spec, pair: pair, info: len(res.Topologies)}
			if isMembrane {
				lt.mem = mem
				if lt.flows, err = mem.flowsSeen(ctx); err != nil {
					lg.Warn("agent status", "topology", info.Name, "err", err)
				}
				// The CNI measurement uses the agent with default flags.
				if membraneLab == nil && spec.plainMembrane() {
					membraneLab = mem.lab
				}
			}
			live = append(live, lt)
			lg.Info("topology ready", "topology", info.Name, "client", pair.Client.Addr, "server", pair.Server.Addr, "took", time.Since(t0).Round(time.Millisecond))
		}
		res.Topologies = append(res.Topologies, info)
	}
	if len(live) == 0 && len(cfg.Topologies) > 0 {
		return res, fmt.Errorf("no topology came up: %v", res.Errors)
	}

	// The datapath matrix: round → workload → topology, so that the same
	// workload runs on every topology back to back (A B C A B C …).
	perRound := 0
	for _, wname := range cfg.Workloads {
		for _, t := range live {
			for round := 1; round <= cfg.Rounds; round++ {
				if t.spec.runs(wname) && t.spec.inRound(round) {
					perRound++
				}
			}
		}
	}
	total := perRound // every measurement of every round
	n := 0
	for round := 1; round <= cfg.Rounds && ctx.Err() == nil; round++ {
		for _, wname := range cfg.Workloads {
			for _, t := range live {
				if ctx.Err() != nil {
					break
				}
				if !t.spec.runs(wname) || !t.spec.inRound(round) {
					continue
				}
				n++
				m := Measurement{Round: round, Topology: t.name, Workload: wname, Start: time.Now().UTC()}
				vals, err := workloads[wname].Run(ctx, env, t.pair, cfg.Duration)
				if err != nil {
					m.Error = err.Error()
					if ctx.Err() == nil {
						res.Errors = append(res.Errors, fmt.Sprintf("round %d %s on %s: %v", round, wname, t.name, err))
					}
					lg.Warn("measurement failed", "round", round, "workload", wname, "topology", t.name, "err", err)
				} else {
					m.Values = vals
					lg.Info("measured", "n", fmt.Sprintf("%d/%d", n, total), "round", round, "workload", wname, "topology", t.name,
						workloads[wname].Metrics()[0].Name, vals[workloads[wname].Metrics()[0].Name])
				}
				res.Measurements = append(res.Measurements, m)
			}
		}
	}

	// Flow events each Membrane agent saw during the rounds.
	for _, t := range live {
		if t.mem == nil || ctx.Err() != nil {
			continue
		}
		if end, err := t.mem.flowsSeen(ctx); err == nil && end >= t.flows {
			d := end - t.flows
			res.Topologies[t.info].Membrane.FlowEvents = &d
		}
	}

	// Control plane: CNI ADD latency.
	if len(cfg.CNI.Plugins) > 0 && ctx.Err() == nil {
		lg.Info("measuring CNI ADD latency", "plugins", cfg.CNI.Plugins, "concurrency", cfg.CNI.Concurrency, "rounds", cfg.CNI.Rounds)
		series, errs := runCNI(ctx, env, cfg, membraneLab)
		res.CNI = series
		for _, err := range errs {
			res.Errors = append(res.Errors, err.Error())
		}
	}

	// Control plane: agent memory per endpoint.
	if cfg.Memory.Endpoints > 0 && ctx.Err() == nil {
		lg.Info("measuring agent memory", "endpoints", cfg.Memory.Endpoints)
		mem, err := measureMemory(ctx, env, cfg.Memory, cfg.BinDir, cfg.AgentArgs)
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("memory: %v", err))
		} else {
			res.Memory = mem
			lg.Info("agent memory", "rss0KiB", mem.RSS0KiB, "rssKKiB", mem.RSSKKiB, "perEndpointKiB", mem.PerEndpointKiB)
		}
	}
	// Control plane: policy propagation.
	if cfg.Propagation.Endpoints > 0 && ctx.Err() == nil {
		lg.Info("measuring policy propagation", "endpoints", cfg.Propagation.Endpoints, "iterations", cfg.Propagation.Iterations)
		prop, err := measurePropagation(ctx, env, cfg.Propagation, cfg.AgentArgs)
		if err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("propagation: %v", err))
		} else {
			res.Propagation = prop
			lg.Info("policy propagation", "deny", summaryLine(prop.DenyMs), "allow", summaryLine(prop.AllowMs),
				"timeouts", prop.DenyTimeouts+prop.AllowTimeouts, "setup", fmt.Sprintf("%.1fs", prop.SetupSeconds))
		}
	}
	res.FinishedAt = time.Now().UTC().Truncate(time.Second)
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("benchmark interrupted: %w", err)
	}
	return res, nil
}

// runCNI sets up the CNI plugins (a lab of its own if the run has no
// MEMBRANE topology) and measures ADD latency.
func runCNI(ctx context.Context, env *Env, cfg Config, l *lab.Lab) ([]CNISeries, []error) {
	var plugins []*cniPlugin
	for _, name := range cfg.CNI.Plugins {
		if name == "membrane" && l == nil {
			var err error
			if l, err = upLab(ctx, env, labSpec{name: "bench-" + env.ID, cidr: benchLabCIDR, agentArgs: cfg.AgentArgs}); err != nil {
				return nil, []error{fmt.Errorf("cni: %w", err)}
			}
		}
		p, err := setupCNIPlugin(ctx, env, name, l, cfg.BinDir)
		if err != nil {
			return nil, []error{fmt.Errorf("cni: set up %s: %w", name, err)}
		}
		plugins = append(plugins, p)
	}
	return measureCNI(ctx, env, cfg.CNI, plugins)
}

// summaryLine is "p50 … p99 … max … ms" for a log line.
func summaryLine(ms []float64) string {
	if len(ms) == 0 {
		return "—"
	}
	s := slices.Sorted(slices.Values(ms))
	return fmt.Sprintf("p50 %.1f p99 %.1f max %.1f ms (n=%d)", Percentile(s, 50), Percentile(s, 99), s[len(s)-1], len(s))
}

// startServers starts the servers of the workloads that run on the
// topology in its server pod.
func startServers(ctx context.Context, env *Env, cfg Config, workloads map[string]Workload, spec TopologySpec, tag string, pair Pair) error {
	for _, name := range cfg.Workloads {
		if !spec.runs(name) {
			continue
		}
		if err := workloads[name].Serve(ctx, env, pair.Server, tag); err != nil {
			return fmt.Errorf("start %s server: %w", name, err)
		}
	}
	return nil
}

// warmUp checks the path end to end (and fills neighbour tables) with a
// short TCP ping-pong that is not recorded.
func warmUp(ctx context.Context, env *Env, pair Pair) error {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		_, err := env.ExecIn(ctx, pair.Client.Netns, 15*time.Second, "ping", "-c", "2", "-i", "0.2", "-W", "2", pair.Server.Addr.String())
		if err == nil {
			return nil
		}
		lastErr = err
		sleepCtx(ctx, 500*time.Millisecond)
	}
	return fmt.Errorf("no path from %s to %s: %w", pair.Client.Addr, pair.Server.Addr, lastErr)
}

// warmUpService checks the service path end to end (the connect through
// the service address, its translation and the server's answer) with a
// short connect/request/close loop that is not recorded.
func warmUpService(ctx context.Context, env *Env, pair Pair) error {
	rep, err := runCRRHelper(ctx, env, pair.Client, crrJob{Addr: pair.Service, Duration: 300 * time.Millisecond})
	if err != nil {
		return fmt.Errorf("service %s from %s: %w", pair.Service, pair.Client.Addr, err)
	}
	if rep.Connections == 0 || rep.Errors > 0 {
		return fmt.Errorf("service %s from %s: %d connections, %d failed (first: %s)", pair.Service, pair.Client.Addr, rep.Connections, rep.Errors, rep.FirstError)
	}
	return nil
}

// snapshotBinaries copies membrane, membrane-agent and membrane-cni into
// dir and returns dir.
func snapshotBinaries(from, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("snapshot binaries: %w", err)
	}
	for _, name := range membraneBinaries {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			return "", fmt.Errorf("snapshot binaries: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			return "", fmt.Errorf("snapshot binaries: %w", err)
		}
	}
	return dir, nil
}

var membraneBinaries = []string{"membrane", "membrane-agent", "membrane-cni"}

// findMembraneBinDir locates membrane, membrane-agent and membrane-cni:
// in binDir if given, else next to this executable, else in $PATH.
func findMembraneBinDir(binDir string) (string, error) {
	names := membraneBinaries
	has := func(dir string) bool {
		return !slices.ContainsFunc(names, func(n string) bool { return !depPresent(filepath.Join(dir, n)) })
	}
	if binDir != "" {
		if has(binDir) {
			return binDir, nil
		}
		return "", fmt.Errorf("membrane binaries (%v) not all in %s; build them with `go build -o bin/ ./cmd/...`", names, binDir)
	}
	if exe, err := os.Executable(); err == nil && has(filepath.Dir(exe)) {
		return filepath.Dir(exe), nil
	}
	if p, err := exec.LookPath("membrane-agent"); err == nil {
		if dir, err := filepath.Abs(filepath.Dir(p)); err == nil && has(dir) {
			return dir, nil
		}
	}
	return "", fmt.Errorf("membrane binaries (%v) not found next to this executable nor in $PATH; build them with `go build -o bin/ ./cmd/...` and pass --bin-dir", names)
}
