package bench

import (
	"fmt"
	"slices"
	"strings"
)

// ChartCrossNode is the cross-node ratio chart, relative to the docs
// directory.
const ChartCrossNode = "images/bench-cross-node.png"

// crossNodeTarget is the cross-node target: each Membrane mode at
// least this fraction of its kernel baseline.
const crossNodeTarget = 0.9

// crossNodeTargetWorkloads are the workloads the issue names (TCP stream
// and request/response); udp-rr is judged too when it was measured.
var crossNodeTargetWorkloads = []string{WorkloadTCPRR, WorkloadTCPStream}

// crossNodeTopologyNames lists the run's cross-node topologies that came
// up, in run order.
func (r *Results) crossNodeTopologyNames() []string {
	var out []string
	for _, t := range r.Topologies {
		if t.Error == "" && t.Spec.crossNode() {
			out = append(out, t.Name)
		}
	}
	return out
}

// crossNodeWorkloads are the workloads with a value on at least one
// cross-node pair (both sides), in the run's order.
func (r *Results) crossNodeWorkloads() []WorkloadInfo {
	var out []WorkloadInfo
	for _, w := range r.Workloads {
		for _, p := range crossNodePairs {
			if _, ok := r.Ratio(p.membrane, p.baseline, w.Name, w.Metrics[0].Name); ok {
				out = append(out, w)
				break
			}
		}
	}
	return out
}

// crossNodeTargetList names the workloads judged: the issue's, plus udp-rr
// when it ran on a cross-node pair.
func (r *Results) crossNodeTargetList() []string {
	ws := slices.Clone(crossNodeTargetWorkloads)
	for _, w := range r.crossNodeWorkloads() {
		if !slices.Contains(ws, w.Name) && w.Name == WorkloadUDPRR {
			ws = append(ws, w.Name)
		}
	}
	return ws
}

// crossNodeTargets judges every Membrane mode against its baseline on each
// workload of crossNodeTargetList; "not measured" where a side is missing.
func (r *Results) crossNodeTargets() []Target {
	names := r.topologyNames()
	present := func(n string) string {
		if slices.Contains(names, n) {
			return n
		}
		return ""
	}
	var out []Target
	for _, p := range crossNodePairs {
		for _, w := range r.crossNodeTargetList() {
			what := fmt.Sprintf("cross-node: %s ≥ %.1f × %s (%s)", p.membrane, crossNodeTarget, p.baseline, w)
			out = append(out, r.ratioTarget(what, present(p.membrane), present(p.baseline), w, crossNodeTarget))
		}
	}
	return out
}

// renderCrossNode writes the cross-node section: the ratio table with the
// target verdicts, the medians behind it and the chart.
func renderCrossNode(r *Results, p func(string, ...any)) {
	if len(r.crossNodeTopologyNames()) == 0 {
		return
	}
	ws := r.crossNodeWorkloads()
	p("## Cross-node\n\n")
	p("Client pod on node A, server pod on node B. The two node namespaces are joined the same way in every topology, " +
		"as the lab joins its nodes: a veth each to a Linux bridge in a fabric namespace (10.214.x.0/24). " +
		"**KERNEL-VXLAN** is flannel's vxlan backend written by hand (a kernel vxlan device per node, VNI 1, UDP 8472, nolearning, " +
		"static FDB and neighbour entries for the other node's VTEP, a route for its pod /24 through the device, pod MTU 1450); " +
		"**ROUTED-2NODE** is plain kernel routing with a static route for the other node's pod /24; in both the pods are veth-attached and routed by their node as in ROUTED. " +
		"**MEMBRANE-VXLAN-2NODE** and **MEMBRANE-NATIVE-2NODE** are two-node labs with a real agent per node (etcd shared), " +
		"`--routing-mode vxlan` and `--routing-mode native` (no BGP: the same static routes as ROUTED-2NODE). " +
		"Each Membrane topology runs right after its baseline in every round.\n\n")
	if len(ws) == 0 {
		p("No cross-node pair produced a value in this run (see the errors below).\n\n")
		return
	}
	p("| workload (metric) |")
	for _, c := range crossNodePairs {
		p(" %s / %s | ≥ %.1f? |", c.membrane, c.baseline, crossNodeTarget)
	}
	p("\n|---|%s\n", strings.Repeat("---|---|", len(crossNodePairs)))
	var met, notMet []string
	for _, w := range ws {
		m := w.Metrics[0]
		p("| %s (%s) |", w.Name, m.Unit)
		for _, c := range crossNodePairs {
			ratio, ok := r.Ratio(c.membrane, c.baseline, w.Name, m.Name)
			if !ok {
				p(" — | — |")
				continue
			}
			verdict := metStatus(ratio.OfMedians >= crossNodeTarget)
			label := fmt.Sprintf("%s / %s on %s (%.3f)", c.membrane, c.baseline, w.Name, ratio.OfMedians)
			if verdict == "met" {
				met = append(met, label)
			} else {
				notMet = append(notMet, label)
				verdict = "**" + verdict + "**"
			}
			p(" %.3f (%s) | %s |", ratio.OfMedians, fmtRange(ratio.PerRound, "%.2f"), verdict)
		}
		p("\n")
	}
	p("\nRatio of medians of the primary metric (higher is better), per-round range in parentheses. ")
	switch {
	case len(notMet) == 0:
		p("The ≥ %.1f target is **met** on all %d comparisons.\n\n", crossNodeTarget, len(met))
	case len(met) == 0:
		p("The ≥ %.1f target is **NOT met** on any of the %d comparisons.\n\n", crossNodeTarget, len(notMet))
	default:
		p("The ≥ %.1f target is met on %d of %d comparisons; **NOT met**: %s.\n\n", crossNodeTarget, len(met), len(met)+len(notMet), strings.Join(notMet, "; "))
	}

	p("| workload (metric) |")
	names := r.crossNodeTopologyNames()
	for _, n := range names {
		p(" %s |", n)
	}
	p("\n|---|%s\n", strings.Repeat("---|", len(names)))
	for _, w := range ws {
		m := w.Metrics[0]
		p("| %s (%s) |", w.Name, m.Unit)
		for _, n := range names {
			s := Summarize(r.Values(n, w.Name, m.Name))
			if s.N == 0 {
				p(" — |")
				continue
			}
			f := metricFormat(s.Median)
			p(" "+f+" (%s) |", s.Median, fmtRange(s, f))
		}
		p("\n")
	}
	p("\nMedian (min–max) over the rounds; the other metrics are in the datapath tables above.\n\n")
	var nodes []string
	for _, t := range r.Topologies {
		if t.Membrane == nil || len(t.Membrane.Nodes) == 0 {
			continue
		}
		var ns []string
		for _, n := range t.Membrane.Nodes {
			ns = append(ns, fmt.Sprintf("%s %s pods %s", n.Name, n.IP, n.PodCIDR))
		}
		nodes = append(nodes, fmt.Sprintf("%s (lab %s): %s", t.Name, t.Membrane.Lab, strings.Join(ns, ", ")))
	}
	if len(nodes) > 0 {
		p("Membrane nodes: %s.\n\n", strings.Join(nodes, "; "))
	}
	p("![cross-node ratios](%s)\n\n", ChartCrossNode)
}
