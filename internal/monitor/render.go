package monitor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/membrane-net/membrane/internal/api"
)

func peerString(p api.FlowPeer) string {
	name := p.Name()
	if p.Pod == "" && p.IP.Is4() && p.Port != 0 {
		name = p.IP.String()
	}
	if p.Port != 0 {
		name = fmt.Sprintf("%s:%d", name, p.Port)
	}
	return fmt.Sprintf("%s (id %d)", name, p.Identity)
}

// detail is the part after the verdict: why and by which rule.
func detail(f api.Flow) string {
	var parts []string
	if f.Type != "" {
		parts = append(parts, f.Type)
	}
	if f.Direction != "" {
		parts = append(parts, f.Direction)
	}
	if f.DropReason != "" {
		parts = append(parts, "reason "+f.DropReason)
	}
	switch {
	case f.Policy != "" && strings.HasPrefix(f.Rule, "no rule"):
		parts = append(parts, "("+f.Rule+")")
	case f.Policy != "":
		parts = append(parts, "by "+f.Policy+" "+strings.TrimPrefix(f.Rule, f.Policy+" "))
	}
	if f.ObsPoint != "" && f.Type == "trace" {
		parts = append(parts, f.ObsPoint)
	}
	return strings.Join(parts, " ")
}

// FormatCompact renders one flow on one line.
func FormatCompact(f api.Flow) string {
	proto := f.Protocol
	if f.TCPFlags != "" {
		proto += " " + f.TCPFlags
	}
	return fmt.Sprintf("%s %-9s %s -> %s %s %s", f.Time.Format("Jan _2 15:04:05.000000"), f.Verdict,
		peerString(f.Source), peerString(f.Dest), proto, detail(f))
}

// WriteCompact writes flows one per line.
func WriteCompact(w io.Writer, flows []api.Flow) error {
	for _, f := range flows {
		if _, err := fmt.Fprintln(w, FormatCompact(f)); err != nil {
			return err
		}
	}
	return nil
}

// WriteTable writes flows as an aligned table.
func WriteTable(w io.Writer, flows []api.Flow) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSOURCE\tDESTINATION\tPROTO\tVERDICT\tDETAIL")
	for _, f := range flows {
		proto := f.Protocol
		if f.TCPFlags != "" {
			proto += " " + f.TCPFlags
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", f.Time.Format("15:04:05.000"), peerString(f.Source), peerString(f.Dest), proto, f.Verdict, detail(f))
	}
	return tw.Flush()
}

// WriteJSONLines writes one JSON object per line.
func WriteJSONLines(w io.Writer, flows []api.Flow) error {
	enc := json.NewEncoder(w)
	for _, f := range flows {
		if err := enc.Encode(f); err != nil {
			return err
		}
	}
	return nil
}
