package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	gray      = color.Gray{Y: 100}
	lightGray = color.Gray{Y: 170}
)

// RatioChart draws, per workload, one bar per topology: the ratio of its
// median primary metric to DIRECT's. Reference lines at 1.0 and 0.95.
func RatioChart(r *Results, path string) error {
	var topos []string
	for _, t := range r.fullTopologies() {
		if t != "DIRECT" {
			topos = append(topos, t)
		}
	}
	var workloads []string
	for _, w := range r.Workloads {
		workloads = append(workloads, w.Name)
	}
	p := plot.New()
	p.Title.Text = "Primary metric relative to DIRECT (median; higher is better)"
	p.Y.Label.Text = "ratio to DIRECT (veth pair)"
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.Padding = vg.Points(2)
	barWidth := vg.Points(min(18, 300/float64(max(1, len(topos)*len(workloads)))+6))
	ymax := 1.1
	for i, t := range topos {
		vals := make(plotter.Values, len(workloads))
		lbl := plotter.XYLabels{}
		for j, w := range r.Workloads {
			if ratio, ok := r.Ratio(t, "DIRECT", w.Name, w.Metrics[0].Name); ok {
				vals[j] = ratio.OfMedians
				ymax = math.Max(ymax, ratio.OfMedians*1.15)
				lbl.XYs = append(lbl.XYs, plotter.XY{X: float64(j), Y: ratio.OfMedians})
				lbl.Labels = append(lbl.Labels, fmt.Sprintf("%.2f", ratio.OfMedians))
			}
		}
		bars, err := plotter.NewBarChart(vals, barWidth)
		if err != nil {
			return fmt.Errorf("ratio chart: %w", err)
		}
		bars.Color = topologyColor(t, i)
		bars.LineStyle.Width = vg.Length(0)
		bars.Offset = barWidth * vg.Length(float64(i)-float64(len(topos)-1)/2)
		p.Add(bars)
		p.Legend.Add(t, bars)
		if len(lbl.XYs) > 0 {
			labels, err := plotter.NewLabels(lbl)
			if err != nil {
				return fmt.Errorf("ratio chart: %w", err)
			}
			for k := range labels.TextStyle {
				labels.TextStyle[k].Font.Size = vg.Points(7)
				labels.TextStyle[k].XAlign = draw.XCenter
			}
			labels.Offset = vg.Point{X: bars.Offset, Y: vg.Points(2)}
			p.Add(labels)
		}
	}
	for _, ref := range []struct {
		y      float64
		dashed bool
	}{{1.0, false}, {0.95, true}} {
		f := plotter.NewFunction(func(float64) float64 { return ref.y })
		f.Color = gray
		f.Width = vg.Points(1)
		if ref.dashed {
			f.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		f.XMin, f.XMax = -0.5, float64(len(workloads))-0.5
		p.Add(f)
		if ref.dashed {
			p.Legend.Add("0.95 × DIRECT (target)", f)
		} else {
			p.Legend.Add("1.0 = DIRECT", f)
		}
	}
	p.Y.Max = ymax + 0.35 // room for the legend
	p.X.Min, p.X.Max = -0.5, float64(len(workloads))-0.5
	p.NominalX(workloads...)
	p.Add(plotter.NewGrid())
	return save(p, path, 9*vg.Inch, 5*vg.Inch)
}

// topologyColor gives MEMBRANE a fixed, strong colour and the baselines
// the palette's others.
func topologyColor(name string, i int) color.Color {
	if name == "MEMBRANE" {
		return color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	}
	palette := []color.Color{
		color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
		color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
		color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
		color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
		color.RGBA{R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
		color.RGBA{R: 0x17, G: 0xbe, B: 0xcf, A: 0xff},
		color.RGBA{R: 0xbc, G: 0xbd, B: 0x22, A: 0xff},
	}
	return palette[i%len(palette)]
}

// CNIChart draws the empirical distribution (CDF) of CNI ADD latency per
// plugin and concurrency, on a log time axis, with the targets marked.
func CNIChart(r *Results, path string) error {
	p := plot.New()
	p.Title.Text = "CNI ADD latency: cumulative distribution"
	p.X.Label.Text = "ADD latency (ms, log scale)"
	p.Y.Label.Text = "fraction of ADDs ≤ x"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = logTicks{}
	// Headroom above 1.0 keeps the legend (top left) off the curves.
	p.Y.Min, p.Y.Max = 0, 1.45
	p.Y.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 0, Label: "0"}, {Value: 0.25, Label: "0.25"}, {Value: 0.5, Label: "0.5"}, {Value: 0.75, Label: "0.75"}, {Value: 1, Label: "1"}})
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(8)
	lo, hi := math.Inf(1), 0.0
	for _, s := range r.CNI {
		if len(s.LatencyMs) == 0 {
			continue
		}
		sorted := slices.Sorted(slices.Values(s.LatencyMs))
		xys := make(plotter.XYs, 0, 2*len(sorted))
		for k, v := range sorted {
			v = math.Max(v, 0.01)
			xys = append(xys, plotter.XY{X: v, Y: float64(k) / float64(len(sorted))}, plotter.XY{X: v, Y: float64(k+1) / float64(len(sorted))})
		}
		lo, hi = math.Min(lo, xys[0].X), math.Max(hi, xys[len(xys)-1].X)
		line, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("cni chart: %w", err)
		}
		line.Width = vg.Points(2)
		line.Color = cniColor(s.Plugin)
		if s.Concurrency > 1 {
			line.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
		}
		p.Add(line)
		p.Legend.Add(fmt.Sprintf("%s, %d concurrent (n=%d)", s.Plugin, s.Concurrency, len(sorted)), line)
	}
	if hi == 0 {
		return nil
	}
	for _, t := range []float64{cniTargetP50Ms, cniTargetP99Ms} {
		l, _ := plotter.NewLine(plotter.XYs{{X: t, Y: 0}, {X: t, Y: 1}})
		l.Color = lightGray
		l.Width = vg.Points(1)
		l.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
		p.Add(l)
	}
	p.Legend.Add(fmt.Sprintf("targets at %d concurrent: p50 ≤ %.0f ms, p99 ≤ %.0f ms", cniTargetConc, cniTargetP50Ms, cniTargetP99Ms),
		&plotter.Line{LineStyle: draw.LineStyle{Color: lightGray, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(2), vg.Points(2)}}})
	p.X.Min = math.Min(lo, cniTargetP50Ms) * 0.8
	p.X.Max = math.Max(hi*1.2, cniTargetP99Ms*1.2)
	p.Add(plotter.NewGrid())
	return save(p, path, 9*vg.Inch, 5*vg.Inch)
}

// cniColor: one colour per plugin (Membrane's as in the ratio chart); the
// concurrency level is told by the dashes.
func cniColor(plugin string) color.Color {
	if plugin == "membrane" {
		return topologyColor("MEMBRANE", 0)
	}
	return topologyColor("", 0)
}

// logTicks labels 1-2-5 steps of each decade.
type logTicks struct{}

func (logTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(min)); e <= math.Ceil(math.Log10(max)); e++ {
		base := math.Pow(10, e)
		for _, m := range []float64{1, 2, 5} {
			v := m * base
			if v < min || v > max {
				continue
			}
			ticks = append(ticks, plot.Tick{Value: v, Label: strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", v), "0"), ".")})
		}
		for m := 1.0; m < 10; m++ {
			if v := m * base; v >= min && v <= max && m != 1 && m != 2 && m != 5 {
				ticks = append(ticks, plot.Tick{Value: v})
			}
		}
	}
	return ticks
}

func save(p *plot.Plot, path string, w, h vg.Length) error {
	if err := p.Save(w, h, path); err != nil {
		return fmt.Errorf("save chart %s: %w", path, err)
	}
	return nil
}

// policySeries is one family's median rate at each N, with its range.
type policySeries struct {
	xys  plotter.XYs
	errs plotter.YErrors
}

func (s policySeries) Len() int                        { return len(s.xys) }
func (s policySeries) XY(i int) (float64, float64)     { return s.xys[i].X, s.xys[i].Y }
func (s policySeries) YError(i int) (float64, float64) { return s.errs[i].Low, s.errs[i].High }

// PolicyChart draws the rate vs policy entries chart: one panel per
// workload measured on MEMBRANE-POLICY-N, one line per datapath (median,
// bars from min to max), N on an evenly spaced axis.
func PolicyChart(r *Results, path string) error {
	ns := r.policyNs()
	workloads := r.policyWorkloads()
	if len(ns) == 0 || len(workloads) == 0 {
		return nil
	}
	labels := make([]string, len(ns))
	for i, n := range ns {
		labels[i] = fmt.Sprint(n)
	}
	legend := map[string]string{
		familyMembrane: "Membrane (MEMBRANE-POLICY-N)",
		familyIPTables: "iptables (IPTABLES-N; ROUTED at 0)",
		familyNFTSet:   "nftables set (NFT-SET-N; ROUTED at 0)",
	}
	var row []*plot.Plot
	for _, w := range workloads {
		m := w.Metrics[0]
		p := plot.New()
		p.Title.Text = fmt.Sprintf("%s: %s vs policy entries", w.Name, m.Unit)
		p.X.Label.Text = "policy entries N (never matching)"
		p.Y.Label.Text = m.Unit + " (median, min–max)"
		p.Y.Min = 0
		p.Legend.Top = true
		p.Legend.Left = false
		ymax := 0.0
		for k, fam := range policyFamilies {
			var s policySeries
			for i, n := range ns {
				t := r.policyTopology(fam, n)
				if t == "" {
					continue
				}
				sum := Summarize(r.Values(t, w.Name, m.Name))
				if sum.N == 0 {
					continue
				}
				// Families side by side around each N, so that their
				// ranges do not hide one another.
				s.xys = append(s.xys, plotter.XY{X: float64(i) + 0.06*float64(k-1), Y: sum.Median})
				s.errs = append(s.errs, struct{ Low, High float64 }{sum.Median - sum.Min, sum.Max - sum.Median})
				ymax = math.Max(ymax, sum.Max)
			}
			if s.Len() == 0 {
				continue
			}
			c := topologyColor("", k)
			if fam == familyMembrane {
				c = topologyColor("MEMBRANE", 0)
			}
			if err := addSeries(p, s, c, legend[fam]); err != nil {
				return fmt.Errorf("policy chart: %w", err)
			}
		}
		p.Y.Max = ymax * 1.35 // room for the legend
		p.X.Min, p.X.Max = -0.3, float64(len(ns)-1)+0.3
		p.NominalX(labels...)
		p.Add(plotter.NewGrid())
		row = append(row, p)
	}
	return savePanels(row, 5.5*vg.Inch, path)
}

// CrossNodeChart draws, per workload, one bar per cross-node comparison
// (Membrane mode / its kernel baseline, ratio of medians) with the
// per-round range as an error bar, and reference lines at 1.0 and at the
// 0.9 target. Bars are polygons in data coordinates so that the error bars
// and labels sit on them.
func CrossNodeChart(r *Results, path string) error {
	ws := r.crossNodeWorkloads()
	if len(ws) == 0 {
		return nil
	}
	var names []string
	for _, w := range ws {
		names = append(names, w.Name)
	}
	p := plot.New()
	p.Title.Text = "Cross-node: Membrane relative to its kernel baseline (higher is better)"
	p.Y.Label.Text = "ratio of medians (whiskers: per-round min–max)"
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = false
	p.Legend.Padding = vg.Points(2)
	const width = 0.35 // of a bar, in workload slots
	ymax := 1.1
	for i, c := range crossNodePairs {
		col := topologyColor("", i)
		if i == 0 {
			col = topologyColor("MEMBRANE", 0)
		}
		dx := width * (float64(i) - float64(len(crossNodePairs)-1)/2)
		var s policySeries
		lbl := plotter.XYLabels{}
		var first *plotter.Polygon
		for j, w := range ws {
			ratio, ok := r.Ratio(c.membrane, c.baseline, w.Name, w.Metrics[0].Name)
			if !ok {
				continue
			}
			x := float64(j) + dx
			bar, err := plotter.NewPolygon(plotter.XYs{{X: x - width/2, Y: 0}, {X: x + width/2, Y: 0}, {X: x + width/2, Y: ratio.OfMedians}, {X: x - width/2, Y: ratio.OfMedians}})
			if err != nil {
				return fmt.Errorf("cross-node chart: %w", err)
			}
			bar.Color = col
			bar.LineStyle.Width = 0
			p.Add(bar)
			if first == nil {
				first = bar
			}
			ymax = math.Max(ymax, ratio.PerRound.Max*1.1)
			s.xys = append(s.xys, plotter.XY{X: x, Y: ratio.OfMedians})
			s.errs = append(s.errs, struct{ Low, High float64 }{ratio.OfMedians - ratio.PerRound.Min, ratio.PerRound.Max - ratio.OfMedians})
			lbl.XYs = append(lbl.XYs, plotter.XY{X: x, Y: math.Max(ratio.PerRound.Max, ratio.OfMedians)})
			lbl.Labels = append(lbl.Labels, fmt.Sprintf("%.3f", ratio.OfMedians))
		}
		if first == nil {
			continue
		}
		p.Legend.Add(c.membrane+" / "+c.baseline, first)
		errs, err := plotter.NewYErrorBars(s)
		if err != nil {
			return fmt.Errorf("cross-node chart: %w", err)
		}
		errs.Color = color.Black
		p.Add(errs)
		labels, err := plotter.NewLabels(lbl)
		if err != nil {
			return fmt.Errorf("cross-node chart: %w", err)
		}
		for k := range labels.TextStyle {
			labels.TextStyle[k].Font.Size = vg.Points(8)
			labels.TextStyle[k].XAlign = draw.XCenter
		}
		labels.Offset = vg.Point{Y: vg.Points(3)}
		p.Add(labels)
	}
	for _, ref := range []struct {
		y      float64
		dashed bool
		what   string
	}{{1.0, false, "1.0 = kernel baseline"}, {crossNodeTarget, true, fmt.Sprintf("%.1f × baseline (target)", crossNodeTarget)}} {
		f := plotter.NewFunction(func(float64) float64 { return ref.y })
		f.Color = gray
		f.Width = vg.Points(1)
		if ref.dashed {
			f.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		f.XMin, f.XMax = -0.5, float64(len(ws))-0.5
		p.Add(f)
		p.Legend.Add(ref.what, f)
	}
	p.Y.Max = ymax + 0.3 // room for the legend
	p.X.Min, p.X.Max = -0.5, float64(len(ws))-0.5
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return save(p, path, 8*vg.Inch, 4.5*vg.Inch)
}

// savePanels draws plots side by side, panelW wide and 4.5 inches high
// each, on white, and writes them to path as PNG.
func savePanels(row []*plot.Plot, panelW vg.Length, path string) error {
	const panelH = 4.5 * vg.Inch
	img := vgimg.New(panelW*vg.Length(len(row)), panelH)
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	tiles := draw.Tiles{Rows: 1, Cols: len(row), PadX: vg.Points(12), PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(8)}
	canvases := plot.Align([][]*plot.Plot{row}, tiles, dc)
	for i, p := range row {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("save chart %s: %w", path, err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("save chart %s: %w", path, err)
	}
	return f.Close()
}

// addSeries draws s as a line with points and min–max error bars in colour
// c, with a legend entry.
func addSeries(p *plot.Plot, s policySeries, c color.Color, label string) error {
	line, points, err := plotter.NewLinePoints(s.xys)
	if err != nil {
		return err
	}
	line.Color, line.Width = c, vg.Points(2)
	points.Color, points.Radius = c, vg.Points(3)
	points.Shape = draw.CircleGlyph{}
	bars, err := plotter.NewYErrorBars(s)
	if err != nil {
		return err
	}
	bars.Color = c
	p.Add(line, points, bars)
	p.Legend.Add(label, line, points)
	return nil
}
