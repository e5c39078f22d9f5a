package bench

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// ChartPolicy is the "rate vs policy entries" chart, relative to the docs
// directory.
const ChartPolicy = "images/bench-policy-scaling.png"

// Targets of the policy, propagation and events parts.
const (
	policyTargetN          = 10000
	policyTargetVsZero     = 0.95 // MEMBRANE-POLICY-10000 / MEMBRANE-POLICY-0
	policyTargetVsIPTables = 1.3  // MEMBRANE-POLICY-10000 / IPTABLES-10000
	propagationTargetP99Ms = 100.0
	propagationTargetEPs   = 100
	eventsTarget           = 0.95 // MEMBRANE / MEMBRANE-MONITOR-OFF
	eventsOffTopology      = "MEMBRANE-MONITOR-OFF"
)

// Policy families compared in the policy scaling section, in table order.
const (
	familyMembrane = "MEMBRANE"
	familyIPTables = "IPTABLES"
	familyNFTSet   = "NFT-SET"
)

var policyFamilies = []string{familyMembrane, familyIPTables, familyNFTSet}

// policyTopology is the topology of a family at N entries, "" if the run
// has none. The baselines' N=0 is ROUTED, their policy-free twin.
func (r *Results) policyTopology(family string, n int) string {
	name := ""
	switch family {
	case familyMembrane:
		name = fmt.Sprintf("MEMBRANE-POLICY-%d", n)
	case familyIPTables, familyNFTSet:
		name = family + "-" + strconv.Itoa(n)
		if n == 0 {
			name = "ROUTED"
		}
	}
	if slices.Contains(r.topologyNames(), name) {
		return name
	}
	return ""
}

// policyNs lists the entry counts of the run's MEMBRANE-POLICY-N,
// IPTABLES-N and NFT-SET-N topologies, ascending; nil without any
// MEMBRANE-POLICY-N.
func (r *Results) policyNs() []int {
	var ns []int
	membrane := false
	for _, t := range r.Topologies {
		if t.Error != "" || t.Spec.MonitorLevel != "" {
			continue
		}
		switch t.Spec.Kind {
		case KindMembranePolicy:
			membrane = true
			ns = append(ns, t.Spec.PolicyEntries)
		case KindIPTables, KindNFTSet:
			ns = append(ns, t.Spec.PolicyEntries)
		}
	}
	if !membrane {
		return nil
	}
	if slices.Contains(r.topologyNames(), "ROUTED") {
		ns = append(ns, 0)
	}
	slices.Sort(ns)
	return slices.Compact(ns)
}

// policyWorkloads are the workloads measured on a MEMBRANE-POLICY-N.
func (r *Results) policyWorkloads() []WorkloadInfo {
	var out []WorkloadInfo
	for _, w := range r.Workloads {
		for _, n := range r.policyNs() {
			if t := r.policyTopology(familyMembrane, n); t != "" && len(r.Values(t, w.Name, w.Metrics[0].Name)) > 0 {
				out = append(out, w)
				break
			}
		}
	}
	return out
}

// ratioTarget judges median(a)/median(b) ≥ min on a workload.
func (r *Results) ratioTarget(what, a, b, workload string, min float64) Target {
	t := Target{What: what, Status: "not measured", Measured: "—"}
	m := r.primary(workload)
	if m == "" || a == "" || b == "" {
		return t
	}
	if ratio, ok := r.Ratio(a, b, workload, m); ok {
		t.Measured = fmt.Sprintf("%.3f (per round %s)", ratio.OfMedians, fmtRange(ratio.PerRound, "%.3f"))
		t.Status = metStatus(ratio.OfMedians >= min)
	}
	return t
}

// extraTargets are the policy scaling, propagation and events targets.
func (r *Results) extraTargets() []Target {
	var out []Target
	n := policyTargetN
	mem, zero := r.policyTopology(familyMembrane, n), r.policyTopology(familyMembrane, 0)
	ipt := r.policyTopology(familyIPTables, n)
	for _, w := range []string{WorkloadTCPRR, WorkloadTCPCRR} {
		out = append(out, r.ratioTarget(fmt.Sprintf("policy: MEMBRANE-POLICY-%d ≥ %.2f × MEMBRANE-POLICY-0 (%s)", n, policyTargetVsZero, w), mem, zero, w, policyTargetVsZero))
	}
	for _, w := range []string{WorkloadTCPRR, WorkloadTCPCRR} {
		out = append(out, r.ratioTarget(fmt.Sprintf("policy: MEMBRANE-POLICY-%d ≥ %.1f × IPTABLES-%d (%s)", n, policyTargetVsIPTables, n, w), mem, ipt, w, policyTargetVsIPTables))
	}
	for _, dir := range []struct {
		what string
		ms   func(*PropagationResult) ([]float64, int)
	}{
		{"apply → denied", func(p *PropagationResult) ([]float64, int) { return p.DenyMs, p.DenyTimeouts }},
		{"delete → allowed", func(p *PropagationResult) ([]float64, int) { return p.AllowMs, p.AllowTimeouts }},
	} {
		t := Target{What: fmt.Sprintf("policy propagation p99 ≤ %.0f ms at %d endpoints (%s)", propagationTargetP99Ms, propagationTargetEPs, dir.what), Status: "not measured", Measured: "—"}
		if p := r.Propagation; p != nil {
			ms, timeouts := dir.ms(p)
			if len(ms) > 0 {
				sorted := slices.Sorted(slices.Values(ms))
				v99 := Percentile(sorted, 99)
				t.Measured = fmt.Sprintf("%.1f ms (n=%d, %d endpoints)", v99, len(sorted), p.Endpoints)
				if timeouts > 0 {
					t.Measured += fmt.Sprintf(", %d timed out", timeouts)
				}
				if p.Endpoints >= propagationTargetEPs {
					t.Status = metStatus(v99 <= propagationTargetP99Ms && timeouts == 0)
				} else {
					t.Measured += fmt.Sprintf(" — fewer than %d endpoints, not judged", propagationTargetEPs)
				}
			}
		}
		out = append(out, t)
	}
	off := ""
	if slices.Contains(r.topologyNames(), eventsOffTopology) {
		off = eventsOffTopology
	}
	for _, w := range []string{WorkloadTCPRR, WorkloadTCPCRR} {
		out = append(out, r.ratioTarget(fmt.Sprintf("flow events: MEMBRANE (default monitor level) ≥ %.2f × %s (%s)", eventsTarget, eventsOffTopology, w), "MEMBRANE", off, w, eventsTarget))
	}
	return out
}

// renderPolicy writes the policy scaling section.
func renderPolicy(r *Results, p func(string, ...any)) {
	ns := r.policyNs()
	if len(ns) == 0 {
		return
	}
	p("## Policy scaling\n\n")
	p("The server pod holds N policy entries that no benchmark packet matches, and the same N appear in each datapath: " +
		"**MEMBRANE-POLICY-N** — NetworkPolicies select the server pod with N ingress rules, rule i allowing `ipBlock` 10.99.x.y/32 on one TCP port " +
		"(each a CIDR identity, so one entry of the server's policy map), plus a rule allowing the client pod (N=0 has only that rule: ingress enforced, 2 entries); " +
		"**IPTABLES-N** — the same (source, port) pairs as N `DROP` rules walked in order before the `ACCEPT`; " +
		"**NFT-SET-N** — the same pairs as elements of one nftables hash set looked up by one rule. " +
		"At N=0 the baselines are ROUTED. Membrane judges policy on the first packet of a connection (later packets pass on conntrack), as Cilium does; " +
		"iptables and nftables look up every packet. So tcp-rr, one long connection, shows the per-packet cost of everything but the policy lookup, " +
		"and tcp-crr, a new connection per request, pays Membrane's lookup on every request.\n\n")
	p("| topology | N | policy map entries (agent API) | NetworkPolicies | --policy-map-size | install time (s) |\n|---|---|---|---|---|---|\n")
	for _, t := range r.Topologies {
		pi := policyOf(t)
		if pi == nil {
			continue
		}
		size := "default (16384)"
		if pi.PolicyMapSize > 0 {
			size = strconv.Itoa(pi.PolicyMapSize)
		}
		p("| %s | %d | %d | %d | %s | %.1f |\n", t.Name, pi.Requested, pi.Entries, pi.Objects, size, pi.InstallSeconds)
	}
	p("\nInstall time runs from the first apply to the agent enforcing the last (the agent recomputes the whole policy state on each change).\n\n")
	for _, w := range r.policyWorkloads() {
		m := w.Metrics[0]
		p("### %s (%s)\n\n", w.Name, m.Unit)
		p("| N | MEMBRANE-POLICY-N | IPTABLES-N | NFT-SET-N | Membrane N / 0 | Membrane / IPTABLES | Membrane / NFT-SET |\n|---|---|---|---|---|---|---|\n")
		zero := r.policyTopology(familyMembrane, 0)
		for _, n := range ns {
			p("| %d |", n)
			for _, fam := range policyFamilies {
				t := r.policyTopology(fam, n)
				s := Summarize(r.Values(t, w.Name, m.Name))
				if t == "" || s.N == 0 {
					p(" — |")
					continue
				}
				f := metricFormat(s.Median)
				note := ""
				if t == "ROUTED" {
					note = " (ROUTED)"
				}
				p(" "+f+" (%s)%s |", s.Median, fmtRange(s, f), note)
			}
			mem := r.policyTopology(familyMembrane, n)
			for _, base := range []string{zero, r.policyTopology(familyIPTables, n), r.policyTopology(familyNFTSet, n)} {
				if ratio, ok := r.Ratio(mem, base, w.Name, m.Name); ok && mem != "" && base != "" {
					p(" %.3f (%s) |", ratio.OfMedians, fmtRange(ratio.PerRound, "%.2f"))
				} else {
					p(" — |")
				}
			}
			p("\n")
		}
		p("\n")
	}
	p("Median (min–max) over the rounds; ratios are of medians, per-round range in parentheses.\n\n")
	p("![rate vs policy entries](%s)\n\n", ChartPolicy)
}

// renderPropagation writes the policy propagation section.
func renderPropagation(r *Results, p func(string, ...any)) {
	pr := r.Propagation
	if pr == nil {
		return
	}
	p("## Policy propagation\n\n")
	p("A lab with %d endpoints on one node (a client and a server pod with traffic servers, the others attached through membrane-cni only). "+
		"A prober in the client pod sends a UDP datagram every %.1f ms to the server pod's echo ports, each from a fresh source port, "+
		"so that every datagram is a new flow judged by the policy in force (no conntrack shortcut). "+
		"Each of %d iterations applies a MembranePolicy that selects every endpoint of the namespace and denies the client's datagrams "+
		"(`POST /v1/resources/apply` without waiting), waits for the probes to go silent (%s without an echo while probes kept going out), "+
		"then deletes it and waits for the first echo. "+
		"**apply → denied** runs from the apply call returning to the last echo before the silence; **delete → allowed** from the delete call returning to the first echo after it. "+
		"The resolution is one probe interval; a negative value means the datapath enforced the change before the API call had returned.\n\n",
		pr.Endpoints, pr.IntervalUs/1000, pr.Iterations, max(probeSilence, 40*r.Config.Propagation.Interval))
	p("| change | n | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | timed out |\n|---|---|---|---|---|---|---|\n")
	for _, row := range []struct {
		what     string
		ms       []float64
		timeouts int
	}{
		{"apply → denied", pr.DenyMs, pr.DenyTimeouts},
		{"delete → allowed", pr.AllowMs, pr.AllowTimeouts},
		{"apply API call", pr.ApplyCallMs, 0},
		{"delete API call", pr.DeleteCallMs, 0},
	} {
		if len(row.ms) == 0 {
			p("| %s | 0 | — | — | — | — | %d |\n", row.what, row.timeouts)
			continue
		}
		s := slices.Sorted(slices.Values(row.ms))
		p("| %s | %d | %.1f | %.1f | %.1f | %.1f | %d |\n", row.what, len(s), Percentile(s, 50), Percentile(s, 90), Percentile(s, 99), s[len(s)-1], row.timeouts)
	}
	p("\n%d probes sent, %d echoed; setting up the lab and its endpoints took %.1f s.\n\n", pr.ProbesSent, pr.ProbesEchoed, pr.SetupSeconds)
}

// renderEvents writes the flow events cost section.
func renderEvents(r *Results, p func(string, ...any)) {
	names := r.topologyNames()
	if !slices.Contains(names, "MEMBRANE") || !slices.Contains(names, eventsOffTopology) {
		return
	}
	p("## Flow events cost\n\n")
	p("MEMBRANE (the agent's default monitor level: drops, verdicts, first packet and TCP flag changes per connection) against %s "+
		"(a second lab whose agent runs with `--monitor-level=off`), measured back to back in the same rounds.\n\n", eventsOffTopology)
	p("| workload (metric) | MEMBRANE | %s | MEMBRANE / %s |\n|---|---|---|---|\n", eventsOffTopology, eventsOffTopology)
	for _, w := range r.Workloads {
		m := w.Metrics[0]
		a, b := Summarize(r.Values("MEMBRANE", w.Name, m.Name)), Summarize(r.Values(eventsOffTopology, w.Name, m.Name))
		if a.N == 0 || b.N == 0 {
			continue
		}
		fa, fb := metricFormat(a.Median), metricFormat(b.Median)
		p("| %s (%s) | "+fa+" (%s) | "+fb+" (%s) |", w.Name, m.Unit, a.Median, fmtRange(a, fa), b.Median, fmtRange(b, fb))
		if ratio, ok := r.Ratio("MEMBRANE", eventsOffTopology, w.Name, m.Name); ok {
			p(" %.3f (%s) |\n", ratio.OfMedians, fmtRange(ratio.PerRound, "%.2f"))
		} else {
			p(" — |\n")
		}
	}
	var seen []string
	for _, t := range r.Topologies {
		if t.Membrane != nil && t.Membrane.FlowEvents != nil {
			seen = append(seen, fmt.Sprintf("%s %d (level %s)", t.Name, *t.Membrane.FlowEvents, orDash(t.Membrane.MonitorLevel)))
		}
	}
	if len(seen) > 0 {
		p("\nFlow events the agents saw during the rounds: %s.\n", strings.Join(seen, "; "))
	}
	p("\n")
}
