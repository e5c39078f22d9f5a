package bench

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// ChartServices is the "latency vs service count" chart, relative to the
// docs directory.
const ChartServices = "images/bench-services.png"

// The service scaling target: Membrane's p99 at 30000 services within 5%
// of its p99 at 1.
const (
	serviceTargetN     = 30000
	serviceTargetRatio = 1.05
)

// Service datapaths, in table order, with their kinds and legends.
var serviceFamilies = []struct{ kind, label string }{
	{KindMembraneSvc, "Membrane (MEMBRANE-SVC-N)"},
	{KindKubeProxyIPTables, "kube-proxy iptables (KUBE-PROXY-IPTABLES-N)"},
	{KindNFTVMap, "kube-proxy nftables (NFT-VMAP-N)"},
}

// serviceTopology is the topology of a kind at N services, "" if none ran.
func (r *Results) serviceTopology(kind string, n int) string {
	name := TopologySpec{Kind: kind, Services: n}.Name()
	if slices.Contains(r.topologyNames(), name) {
		return name
	}
	return ""
}

// serviceNs lists the service counts of the run, ascending.
func (r *Results) serviceNs() []int {
	var ns []int
	for _, t := range r.Topologies {
		if t.Error == "" && t.Spec.service() {
			ns = append(ns, t.Spec.Services)
		}
	}
	slices.Sort(ns)
	return slices.Compact(ns)
}

// serviceInstallOf is the install record of a topology, nil if none.
func (r *Results) serviceInstallOf(name string) *ServiceInstall {
	for _, t := range r.Topologies {
		if t.Name == name {
			return t.Services
		}
	}
	return nil
}

// serviceTarget judges Membrane's p99 at serviceTargetN against its p99 at
// the smallest N (1 in the profiles). Without 30000 in the run, the ratio
// at the largest N is shown and not judged.
func (top *Results) serviceTarget() Target {
	r := top.servicesSource()
	if r == nil {
		r = top
	}
	t := Target{What: fmt.Sprintf("services: MEMBRANE-SVC-%d p99 ≤ %.2f × MEMBRANE-SVC-1 p99 (svc-crr)", serviceTargetN, serviceTargetRatio),
		Status: "not measured", Measured: "—"}
	ns := r.serviceNs()
	if len(ns) < 2 {
		return t
	}
	lo, hi := r.serviceTopology(KindMembraneSvc, ns[0]), r.serviceTopology(KindMembraneSvc, ns[len(ns)-1])
	if lo == "" || hi == "" || lo == hi {
		return t
	}
	ratio, ok := r.Ratio(hi, lo, WorkloadSvcCRR, "p99_us")
	if !ok {
		return t
	}
	t.Measured = fmt.Sprintf("%.3f (per round %s)", ratio.OfMedians, fmtRange(ratio.PerRound, "%.3f"))
	if r != top {
		t.Measured += " (separate service run)"
	}
	if ns[0] != 1 || ns[len(ns)-1] != serviceTargetN {
		t.Measured += fmt.Sprintf(" — %s / %s; not judged (the target compares %d with 1)", hi, lo, serviceTargetN)
		return t
	}
	t.Status = metStatus(ratio.OfMedians <= serviceTargetRatio)
	return t
}

// servicesSource is the results the Services section and its target come
// from: r itself when it measured services, else r.ServicesFrom (nil if
// neither has any).
func (r *Results) servicesSource() *Results {
	if len(r.serviceNs()) > 0 {
		return r
	}
	if s := r.ServicesFrom; s != nil && len(s.serviceNs()) > 0 {
		return s
	}
	return nil
}

// renderServices writes the service scaling section, from r or from the
// separate service run it was given.
func renderServices(top *Results, p func(string, ...any)) {
	r := top.servicesSource()
	if r == nil {
		return
	}
	ns := r.serviceNs()
	p("## Services\n\n")
	if r != top {
		p("*From a separate run of the service part (%s, `%s` profile, %s UTC on %s, %d CPUs, kernel %s), not the run above: the quick profile leaves it out to stay within its time budget.*\n\n",
			top.ServicesRef, r.Profile, r.StartedAt.Format("2006-01-02 15:04"), orDash(r.Host.CPUModel), r.Host.CPUs, r.Host.Kernel)
	}
	p("Connect, request and close through a ClusterIP service (`svc-crr`) with N services installed, each with one TCP port and one endpoint (the server pod), " +
		"measured in the same rounds for three datapaths: **MEMBRANE-SVC-N** — N v1 Services applied to the lab agent, translated at `connect()` by its cgroup hooks " +
		"(the client runs in its pod's cgroup); **KUBE-PROXY-IPTABLES-N** — ROUTED plus the nat rules kube-proxy's iptables mode writes for the same services " +
		"(PREROUTING/OUTPUT → KUBE-SERVICES with one `-d VIP/32 -p tcp --dport 80 -j KUBE-SVC-…` rule per service, KUBE-SVC → KUBE-SEP → DNAT, and kube-proxy's masquerade marking, which the pod-to-service traffic does not trigger); " +
		"**NFT-VMAP-N** — ROUTED plus kube-proxy's nftables-mode ruleset (one lookup in the `service-ips` verdict map keyed by `ipv4_addr . inet_proto . inet_service`, a chain per service and per endpoint that DNATs). " +
		"All three give the services the same cluster IPs (10.96.0.10 onwards, port 80).\n\n")
	pos := ""
	for _, n := range ns {
		for _, f := range serviceFamilies {
			if si := r.serviceInstallOf(r.serviceTopology(f.kind, n)); si != nil && n == ns[len(ns)-1] {
				pos = fmt.Sprintf("service %d of %d (%s)", si.MeasuredPosition+1, n, si.Measured)
			}
		}
	}
	p("**The measured service is the last one written** (%s at the largest N): its `KUBE-SERVICES` rule is the last one iptables walks, "+
		"so KUBE-PROXY-IPTABLES-N shows iptables' worst case; a service at a random position walks about N/2 rules. "+
		"For Membrane and the verdict map the position makes no difference (hash lookups).\n\n", pos)
	p("Latency runs from `socket()` to `close()` of one connection (connect, SYN through the service translation, HTTP request with `Connection: close`, answer, nginx's close), "+
		"one connection at a time, client and server pinned to CPU %d; median (min–max) over %d rounds of %s.\n\n", r.Config.CPU, r.serviceRounds(), r.Config.Duration)

	t := r.serviceTarget()
	p("**Target**: %s — measured %s: **%s**.\n\n", t.What, t.Measured, t.Status)

	for _, n := range ns {
		p("### N = %d\n\n", n)
		p("| datapath | p50 (µs) | p99 (µs) | rate (connections/s) | Membrane p99 / this p99 | Membrane rate / this rate |\n|---|---|---|---|---|---|\n")
		mem := r.serviceTopology(KindMembraneSvc, n)
		for _, f := range serviceFamilies {
			name := r.serviceTopology(f.kind, n)
			if name == "" {
				continue
			}
			p("| %s |", name)
			for _, m := range []string{"p50_us", "p99_us", "cps"} {
				s := Summarize(r.Values(name, WorkloadSvcCRR, m))
				if s.N == 0 {
					p(" — |")
					continue
				}
				f := metricFormat(s.Median)
				p(" "+f+" (%s) |", s.Median, fmtRange(s, f))
			}
			for _, m := range []string{"p99_us", "cps"} {
				if mem == "" || name == mem {
					p(" — |")
					continue
				}
				if ratio, ok := r.Ratio(mem, name, WorkloadSvcCRR, m); ok {
					p(" %.3f (%s) |", ratio.OfMedians, fmtRange(ratio.PerRound, "%.2f"))
				} else {
					p(" — |")
				}
			}
			p("\n")
		}
		p("\n")
	}
	if lo := r.serviceTopology(KindMembraneSvc, ns[0]); lo != "" && len(ns) > 1 {
		p("Each datapath against itself at N = %d (ratio of medians, per-round range):\n\n", ns[0])
		p("| datapath | N | p50 / p50 at %d | p99 / p99 at %d | rate / rate at %d |\n|---|---|---|---|---|\n", ns[0], ns[0], ns[0])
		for _, f := range serviceFamilies {
			base := r.serviceTopology(f.kind, ns[0])
			for _, n := range ns[1:] {
				name := r.serviceTopology(f.kind, n)
				if base == "" || name == "" {
					continue
				}
				p("| %s | %d |", strings.TrimSuffix(name, fmt.Sprintf("-%d", n)), n)
				for _, m := range []string{"p50_us", "p99_us", "cps"} {
					if ratio, ok := r.Ratio(name, base, WorkloadSvcCRR, m); ok {
						p(" %.3f (%s) |", ratio.OfMedians, fmtRange(ratio.PerRound, "%.2f"))
					} else {
						p(" — |")
					}
				}
				p("\n")
			}
		}
		p("\n")
	}
	p("![latency and rate vs service count](%s)\n\n", ChartServices)

	p("### Installing the services\n\n")
	p("| topology | N | how | install time (s) | detail |\n|---|---|---|---|---|\n")
	for _, n := range ns {
		for _, f := range serviceFamilies {
			name := r.serviceTopology(f.kind, n)
			si := r.serviceInstallOf(name)
			if si == nil {
				continue
			}
			detail := ""
			switch f.kind {
			case KindMembraneSvc:
				detail = fmt.Sprintf("%d apply calls took %.1f s; %d service ports in the agent's load-balancing map", si.Applies, si.ApplySeconds, si.LBMapServices)
			default:
				detail = fmt.Sprintf("%d lines of input", si.Rules)
			}
			p("| %s | %d | %s | %.1f | %s |\n", name, n, si.How, si.InstallSeconds, detail)
		}
	}
	p("\nMembrane's install time runs from the first apply call to the agent's service list (`membrane service list`) showing all N with their backend active; " +
		"the cluster IPs of one apply are claimed in one etcd transaction, every service is stored in etcd, and the agent recomputes the services on each change. " +
		"The baselines' is one `iptables-restore` or `nft -f` of the whole file, which is what kube-proxy does on a full sync.\n\n")
}

// serviceRounds is the number of rounds the service topologies ran in.
func (r *Results) serviceRounds() int {
	n := 0
	for _, m := range r.Measurements {
		if m.Workload == WorkloadSvcCRR {
			n = max(n, m.Round)
		}
	}
	return n
}

// ServicesChart draws p50, p99 and the connection rate against the
// number of services (log x), one line per datapath (median, bars from
// min to max).
func ServicesChart(top *Results, path string) error {
	r := top.servicesSource()
	if r == nil {
		return nil
	}
	ns := r.serviceNs()
	panels := []struct{ metric, title, unit string }{
		{"p50_us", "p50 latency", "µs"},
		{"p99_us", "p99 latency", "µs"},
		{"cps", "connection rate", "connections/s"},
	}
	var row []*plot.Plot
	for _, pn := range panels {
		p := plot.New()
		p.Title.Text = fmt.Sprintf("svc-crr: %s vs services", pn.title)
		p.X.Label.Text = "services installed N (log scale)"
		p.Y.Label.Text = pn.unit + " (median, min–max)"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = decadeTicks{}
		p.Y.Min = 0
		p.Legend.Top = true
		ymax := 0.0
		for k, f := range serviceFamilies {
			var s policySeries
			for _, n := range ns {
				t := r.serviceTopology(f.kind, n)
				if t == "" {
					continue
				}
				sum := Summarize(r.Values(t, WorkloadSvcCRR, pn.metric))
				if sum.N == 0 {
					continue
				}
				// Datapaths side by side around each N (a few percent on
				// the log axis) so that their bars do not hide one another.
				x := float64(n) * math.Pow(1.06, float64(k-1))
				s.xys = append(s.xys, plotter.XY{X: x, Y: sum.Median})
				s.errs = append(s.errs, struct{ Low, High float64 }{sum.Median - sum.Min, sum.Max - sum.Median})
				ymax = math.Max(ymax, sum.Max)
			}
			if s.Len() == 0 {
				continue
			}
			c := topologyColor("", k)
			if f.kind == KindMembraneSvc {
				c = topologyColor("MEMBRANE", 0)
			}
			if err := addSeries(p, s, c, f.label); err != nil {
				return fmt.Errorf("services chart: %w", err)
			}
		}
		p.Y.Max = ymax * 1.6 // room for the legend
		p.X.Min, p.X.Max = float64(ns[0])*0.7, float64(ns[len(ns)-1])*1.4
		p.Add(plotter.NewGrid())
		row = append(row, p)
	}
	return savePanels(row, 5*vg.Inch, path)
}

// decadeTicks labels the powers of ten (1, 10, 100, 1K, 10K) of a log
// axis, with unlabelled ticks between them.
type decadeTicks struct{}

func (decadeTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(min)); e <= math.Ceil(math.Log10(max)) && e < 10; e++ {
		base := math.Pow(10, e)
		for m := 1.0; m < 10; m++ {
			v := m * base
			if v < min || v > max {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 {
				t.Label = decadeLabel(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

func decadeLabel(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gK", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}
