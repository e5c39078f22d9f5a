package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// ResultsVersion is the version of the JSON results format.
const ResultsVersion = 1

// Results is everything one run measured; it is what the report renders.
type Results struct {
	Version    int       `json:"version"`
	RunID      string    `json:"runID"` // names the run's namespaces (mbb-<id>-…) and labs
	Profile    string    `json:"profile"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	Config     Config    `json:"config"`
	Host       Host      `json:"host"`
	// Topologies in run order, with what was built.
	Topologies []TopologyInfo `json:"topologies"`
	// Workloads and their metrics (primary first).
	Workloads []WorkloadInfo `json:"workloads"`
	// Measurements of the datapath matrix, in the order they ran.
	Measurements []Measurement `json:"measurements"`
	// CNI ADD latencies per (plugin, concurrency).
	CNI []CNISeries `json:"cni,omitempty"`
	// Memory of the agent with 0 and K endpoints.
	Memory *MemoryResult `json:"memory,omitempty"`
	// Propagation of policy changes to the datapath.
	Propagation *PropagationResult `json:"propagation,omitempty"`
	// Errors met on the way (failed set-ups, failed measurements). A run
	// with errors still writes its results.
	Errors []string `json:"errors,omitempty"`

	// ServicesFrom, when these results have no service topologies, are
	// other results whose Services section the report shows (a separate
	// run of the service part, which the quick profile leaves out), named
	// ServicesRef in the text. Not stored.
	ServicesFrom *Results `json:"-"`
	ServicesRef  string   `json:"-"`
}

// Host describes the machine and the tools.
type Host struct {
	Kernel     string            `json:"kernel"`
	CPUs       int               `json:"cpus"`
	CPUModel   string            `json:"cpuModel,omitempty"`
	GoVersion  string            `json:"goVersion"`
	Tools      map[string]string `json:"tools"`
	IPTables   string            `json:"iptables,omitempty"`
	BridgeNFIP string            `json:"bridgeNfCallIptables,omitempty"`
}

// TopologyInfo is a topology of the run.
type TopologyInfo struct {
	Name        string       `json:"name"`
	Spec        TopologySpec `json:"spec"`
	Description string       `json:"description"`
	Pair        *Pair        `json:"pair,omitempty"`
	Error       string       `json:"error,omitempty"`
	// Membrane holds what a Membrane topology's set-up found out (lab,
	// agent flags, monitor level, installed policy, flow events).
	Membrane *MembraneInfo `json:"membrane,omitempty"`
	// Services is what installing a service topology's N services took.
	Services *ServiceInstall `json:"services,omitempty"`
}

// WorkloadInfo is a workload of the run.
type WorkloadInfo struct {
	Name    string   `json:"name"`
	Tool    string   `json:"tool"`
	Metrics []Metric `json:"metrics"`
}

// Measurement is one run of one workload on one topology.
type Measurement struct {
	Round    int                `json:"round"`
	Topology string             `json:"topology"`
	Workload string             `json:"workload"`
	Start    time.Time          `json:"start"`
	Values   map[string]float64 `json:"values,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// CNISeries is the per-ADD latency of one plugin at one concurrency.
type CNISeries struct {
	Plugin      string    `json:"plugin"`
	Concurrency int       `json:"concurrency"`
	LatencyMs   []float64 `json:"latencyMs"`
	Failures    int       `json:"failures"`
}

// MemoryResult is the agent's resident memory with 0 and K endpoints.
type MemoryResult struct {
	Endpoints      int     `json:"endpoints"`
	RSS0KiB        float64 `json:"rss0KiB"`
	RSSKKiB        float64 `json:"rssKKiB"`
	PerEndpointKiB float64 `json:"perEndpointKiB"`
	AddSeconds     float64 `json:"addSeconds"`
}

// Save writes r to dir/<timestamp>-<profile>.json and
// dir/latest-<profile>.json and returns the first path.
func (r *Results) Save(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create results dir: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode results: %w", err)
	}
	b = append(b, '\n')
	name := filepath.Join(dir, r.StartedAt.UTC().Format("20060102T150405Z")+"-"+r.Profile+".json")
	for _, p := range []string{name, filepath.Join(dir, "latest-"+r.Profile+".json")} {
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			return "", fmt.Errorf("write results: %w", err)
		}
		if err := os.Rename(tmp, p); err != nil {
			return "", fmt.Errorf("write results: %w", err)
		}
	}
	return name, nil
}

// LoadResults reads a results file.
func LoadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read results: %w", err)
	}
	var r Results
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse results %s: %w", path, err)
	}
	if r.Version != ResultsVersion {
		return nil, fmt.Errorf("results %s have version %d, want %d", path, r.Version, ResultsVersion)
	}
	return &r, nil
}

// LatestResults is the most recently written latest-<profile>.json in dir.
func LatestResults(dir string) (string, error) {
	matches, _ := filepath.Glob(filepath.Join(dir, "latest-*.json"))
	best, bestT := "", time.Time{}
	for _, m := range matches {
		if fi, err := os.Stat(m); err == nil && fi.ModTime().After(bestT) {
			best, bestT = m, fi.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("no latest-*.json in %s; run `membrane-bench run` first", dir)
	}
	return best, nil
}

// ServicesResultsSuffix ends the name of a results file that holds a
// separate run of the service scaling part; the report of a run without
// service topologies shows the newest such file's Services section.
const ServicesResultsSuffix = "-services.json"

// LatestServicesResults is the newest <timestamp>-…-services.json in dir,
// "" if there is none.
func LatestServicesResults(dir string) string {
	matches, _ := filepath.Glob(filepath.Join(dir, "*"+ServicesResultsSuffix))
	slices.Sort(matches) // names start with the UTC timestamp
	if len(matches) == 0 {
		return ""
	}
	return matches[len(matches)-1]
}

// ---- statistics ----

// Summary is the median and range of a sample.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns the median, minimum and maximum of xs.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return Summary{N: len(s), Median: Percentile(s, 50), Min: s[0], Max: s[len(s)-1]}
}

// Percentile is the p-th percentile of sorted xs, interpolated linearly
// between closest ranks. xs must be sorted.
func Percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if n == 1 {
		return sorted[0]
	}
	pos := p / 100 * float64(n-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, n-1)
	return sorted[lo] + (pos-float64(lo))*(sorted[hi]-sorted[lo])
}

// Values returns one metric of a topology × workload, in round order.
func (r *Results) Values(topology, workload, metric string) []float64 {
	var out []float64
	for _, m := range r.Measurements {
		if m.Topology == topology && m.Workload == workload && m.Error == "" {
			if v, ok := m.Values[metric]; ok {
				out = append(out, v)
			}
		}
	}
	return out
}

// Ratio compares topology a with baseline b on one metric.
type Ratio struct {
	// OfMedians is median(a) / median(b).
	OfMedians float64 `json:"ofMedians"`
	// PerRound summarises a/b within each round in which both ran: the
	// rounds interleave, so each round is a paired comparison.
	PerRound Summary `json:"perRound"`
}

// Ratio computes a/b for a workload's metric; ok is false without data.
func (r *Results) Ratio(a, b, workload, metric string) (Ratio, bool) {
	ma, mb := Summarize(r.Values(a, workload, metric)), Summarize(r.Values(b, workload, metric))
	if ma.N == 0 || mb.N == 0 || mb.Median == 0 {
		return Ratio{}, false
	}
	byRound := map[int]float64{}
	for _, m := range r.Measurements {
		if m.Topology == b && m.Workload == workload && m.Error == "" && m.Values[metric] > 0 {
			byRound[m.Round] = m.Values[metric]
		}
	}
	var per []float64
	for _, m := range r.Measurements {
		if m.Topology == a && m.Workload == workload && m.Error == "" {
			if base, ok := byRound[m.Round]; ok {
				per = append(per, m.Values[metric]/base)
			}
		}
	}
	return Ratio{OfMedians: ma.Median / mb.Median, PerRound: Summarize(per)}, true
}

// Validate checks that results are well formed: every measurement that did
// not fail has every metric of its workload, all finite and positive.
func (r *Results) Validate() error {
	var errs []error
	if r.Version != ResultsVersion {
		errs = append(errs, fmt.Errorf("version %d", r.Version))
	}
	metrics := map[string][]Metric{}
	for _, w := range r.Workloads {
		metrics[w.Name] = w.Metrics
	}
	for _, m := range r.Measurements {
		if m.Error != "" {
			continue
		}
		ms, ok := metrics[m.Workload]
		if !ok {
			errs = append(errs, fmt.Errorf("measurement of unknown workload %q", m.Workload))
		}
		for _, mt := range ms {
			v, ok := m.Values[mt.Name]
			if !ok || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
				errs = append(errs, fmt.Errorf("%s/%s round %d: %s = %v", m.Topology, m.Workload, m.Round, mt.Name, v))
			}
		}
	}
	for _, c := range r.CNI {
		for _, v := range c.LatencyMs {
			if !(v > 0) || math.IsInf(v, 0) {
				errs = append(errs, fmt.Errorf("cni %s ×%d: latency %v", c.Plugin, c.Concurrency, v))
				break
			}
		}
	}
	if m := r.Memory; m != nil && (m.RSS0KiB <= 0 || m.RSSKKiB <= 0) {
		errs = append(errs, fmt.Errorf("memory: rss %v / %v", m.RSS0KiB, m.RSSKKiB))
	}
	if p := r.Propagation; p != nil {
		if len(p.DenyMs)+p.DenyTimeouts != p.Iterations || len(p.AllowMs)+p.AllowTimeouts != p.Iterations {
			errs = append(errs, fmt.Errorf("propagation: %d+%d deny and %d+%d allow samples for %d iterations",
				len(p.DenyMs), p.DenyTimeouts, len(p.AllowMs), p.AllowTimeouts, p.Iterations))
		}
		for _, v := range append(slices.Clone(p.DenyMs), p.AllowMs...) {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				errs = append(errs, fmt.Errorf("propagation: latency %v", v))
				break
			}
		}
		if p.ProbesEchoed <= 0 || p.ProbesEchoed > p.ProbesSent {
			errs = append(errs, fmt.Errorf("propagation: %d of %d probes echoed", p.ProbesEchoed, p.ProbesSent))
		}
	}
	for _, t := range r.Topologies {
		if si := t.Services; si != nil && (si.Services != t.Spec.Services || si.InstallSeconds <= 0 || !si.Measured.IsValid()) {
			errs = append(errs, fmt.Errorf("%s: service install %+v for %d services", t.Name, *si, t.Spec.Services))
		}
		if t.Error == "" && t.Spec.service() && t.Services == nil {
			errs = append(errs, fmt.Errorf("%s: no service install recorded", t.Name))
		}
	}
	for _, t := range r.Topologies {
		if pi := policyOf(t); pi != nil && (pi.Entries < pi.Requested || !pi.IngressEnforced) {
			errs = append(errs, fmt.Errorf("%s: policy map holds %d entries for %d requested", t.Name, pi.Entries, pi.Requested))
		}
	}
	return errors.Join(errs...)
}

// policyOf is the installed policy of a MEMBRANE-POLICY-N topology, or nil.
func policyOf(t TopologyInfo) *PolicyInstall {
	if t.Membrane == nil {
		return nil
	}
	return t.Membrane.Policy
}
