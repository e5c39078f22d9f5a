// Command membrane-bench runs Membrane's benchmark suite and renders its
// report.
//
//	membrane-bench run --profile quick|full [--out bench/results] [--rounds N]
//	membrane-bench report [--results FILE] [--docs docs]
//	membrane-bench clean
//
// run builds every topology side by side in network namespaces, measures,
// tears everything down (also on SIGINT), writes
// <out>/<timestamp>-<profile>.json and <out>/latest-<profile>.json, and
// regenerates <docs>/performance.md and its charts. report only does the
// last step, from a results file. clean removes what a killed run left.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/membrane-net/membrane/internal/bench"
)

const usage = `usage:
  membrane-bench run --profile quick|full [--out DIR] [--docs DIR] [--rounds N] [--iterations N] [--duration D]
                     [--topologies K1,K2] [--workloads W1,W2] [--bin-dir DIR] [--cpu N] [--agent-arg=--flag=value ...]
                     [--skip datapath,cni,memory,propagation] [--no-report]
  membrane-bench report [--results FILE] [--out DIR] [--docs DIR]
  membrane-bench clean
`

func main() {
	// The harness re-executes this program as its connect/request/close
	// client inside pods (the job comes in the environment).
	if bench.RunHelper() {
		return
	}
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// SIGINT/SIGTERM cancel the context; the run then cleans up and exits.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(ctx, os.Args[2:], logger)
	case "report":
		err = reportCmd(os.Args[2:])
	case "clean":
		err = bench.Clean(ctx, logger)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "membrane-bench:", err)
		stop()
		os.Exit(1)
	}
}

func runCmd(ctx context.Context, args []string, logger *slog.Logger) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	profile := fs.String("profile", bench.ProfileQuick, "quick or full")
	out := fs.String("out", "bench/results", "directory for the JSON results")
	docs := fs.String("docs", "docs", "directory of performance.md (charts go to its images/)")
	rounds := fs.Int("rounds", 0, "rounds (0: the profile's)")
	iterations := fs.Int("iterations", 0, "policy propagation iterations (0: the profile's)")
	duration := fs.Duration("duration", 0, "duration of one measurement (0: the profile's)")
	topologies := fs.String("topologies", "", "only these topology names, comma-separated (e.g. DIRECT,MEMBRANE)")
	workloads := fs.String("workloads", "", "only these workloads, comma-separated (tcp-rr,tcp-stream,tcp-crr,udp-rr)")
	binDir := fs.String("bin-dir", "", "directory of membrane, membrane-agent, membrane-cni (default: next to this binary)")
	cpu := fs.Int("cpu", 0, "CPU that client and server are pinned to")
	noReport := fs.Bool("no-report", false, "write the results only, not docs/performance.md")
	skip := fs.String("skip", "", "skip parts, comma-separated: datapath, cni, memory, propagation")
	var agentArgs stringList
	fs.Var(&agentArgs, "agent-arg", "extra membrane-agent flag for every lab of the run, repeatable (e.g. --agent-arg=--monitor-level=off)")
	_ = fs.Parse(args)

	cfg, err := bench.Profile(*profile)
	if err != nil {
		return err
	}
	if *rounds > 0 {
		cfg.Rounds = *rounds
		cfg.CNI.Rounds = *rounds
	}
	if *iterations > 0 {
		cfg.Propagation.Iterations = *iterations
	}
	if *duration > 0 {
		cfg.Duration = *duration
	}
	if *topologies != "" {
		keep := strings.Split(strings.ToUpper(*topologies), ",")
		var ts []bench.TopologySpec
		for _, t := range cfg.Topologies {
			for _, k := range keep {
				if strings.TrimSpace(k) == t.Name() {
					ts = append(ts, t)
				}
			}
		}
		if len(ts) == 0 {
			return fmt.Errorf("--topologies %q selects none of the profile's topologies", *topologies)
		}
		cfg.Topologies = ts
	}
	if *workloads != "" {
		cfg.Workloads = strings.Split(*workloads, ",")
	}
	if *binDir != "" {
		abs, err := filepath.Abs(*binDir)
		if err != nil {
			return err
		}
		cfg.BinDir = abs
	}
	for _, part := range strings.Split(*skip, ",") {
		switch strings.TrimSpace(part) {
		case "":
		case "datapath":
			cfg.Topologies, cfg.Workloads = nil, nil
		case "cni":
			cfg.CNI.Plugins = nil
		case "memory":
			cfg.Memory.Endpoints = 0
		case "propagation":
			cfg.Propagation.Endpoints = 0
		default:
			return fmt.Errorf("--skip %q: want datapath, cni, memory or propagation", part)
		}
	}
	cfg.AgentArgs = agentArgs
	cfg.CPU = *cpu
	cfg.Logger = logger

	t0 := time.Now()
	res, runErr := bench.Run(ctx, cfg)
	if res == nil || ctx.Err() != nil {
		// An interrupted run keeps the previous results and report.
		return runErr
	}
	path, err := res.Save(*out)
	if err != nil {
		return errors.Join(runErr, err)
	}
	logger.Info("results written", "file", path, "took", time.Since(t0).Round(time.Second))
	if !*noReport {
		withServices(res, *out, *docs)
		if err := bench.WriteReport(res, *docs, relTo(*docs, path)); err != nil {
			return errors.Join(runErr, err)
		}
		logger.Info("report written", "file", filepath.Join(*docs, "performance.md"))
	}
	for _, t := range res.Targets() {
		fmt.Printf("%-55s %-45s %s\n", t.What, t.Measured, t.Status)
	}
	if runErr == nil && len(res.Errors) > 0 {
		runErr = fmt.Errorf("%d step(s) failed (see the results' errors); first: %s", len(res.Errors), res.Errors[0])
	}
	return runErr
}

// withServices gives results without service topologies the newest
// separate service run in dir (<timestamp>-…-services.json), whose
// Services section the report then shows.
func withServices(res *bench.Results, dir, docs string) {
	path := bench.LatestServicesResults(dir)
	if path == "" {
		return
	}
	if s, err := bench.LoadResults(path); err == nil {
		res.ServicesFrom, res.ServicesRef = s, relTo(docs, path)
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func reportCmd(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	results := fs.String("results", "", "results file (default: the newest latest-*.json in --out)")
	out := fs.String("out", "bench/results", "directory of the JSON results")
	docs := fs.String("docs", "docs", "directory of performance.md")
	_ = fs.Parse(args)
	path := *results
	if path == "" {
		var err error
		if path, err = bench.LatestResults(*out); err != nil {
			return err
		}
	}
	res, err := bench.LoadResults(path)
	if err != nil {
		return err
	}
	withServices(res, filepath.Dir(path), *docs)
	if err := bench.WriteReport(res, *docs, relTo(*docs, path)); err != nil {
		return err
	}
	fmt.Printf("wrote %s from %s\n", filepath.Join(*docs, "performance.md"), path)
	return nil
}

// relTo names a results file relative to the repository root (the docs
// dir's parent) when it is inside it.
func relTo(docs, path string) string {
	root, err1 := filepath.Abs(filepath.Dir(filepath.Clean(docs)))
	abs, err2 := filepath.Abs(path)
	if err1 == nil && err2 == nil {
		if rel, err := filepath.Rel(root, abs); err == nil && !strings.HasPrefix(rel, "..") {
			return "`" + rel + "`"
		}
	}
	return "`" + path + "`"
}
