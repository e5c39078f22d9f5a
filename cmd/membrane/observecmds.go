package main

import (
	"context"
	"encoding/json"
	"fmt"

	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/monitor"
)

// followCtx ends on Ctrl-C (or SIGTERM) for streaming commands.
func followCtx() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

func newObserveCmd(g *globals) *cobra.Command {
	var q api.FlowQuery
	var since string
	var format string
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows: forwarded and dropped packets with reasons and the deciding policy",
		Long: `observe prints the flows the agent keeps (the newest 64K by default) and,
with --follow, new ones as they happen. Filters of the same kind are ORed,
different kinds ANDed. A peer (--from/--to) is a pod (ns/name or name),
ns:<namespace>, id:<identity>, an IP or CIDR, or labels k=v[,k2=v2].`,
		Example: `  membrane observe --verdict DROPPED --last 20
  membrane observe --from tools/client --to ns:shop --port 8080 -f
  membrane observe --to app=db --protocol udp -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since != "" {
				d, err := time.ParseDuration(since)
				if err == nil {
					q.Since = time.Now().Add(-d)
				} else if t, terr := time.Parse(time.RFC3339, since); terr == nil {
					q.Since = t
				} else {
					return fmt.Errorf("--since %q: want a duration (5m) or an RFC 3339 time", since)
				}
			}
			if f := cmd.Flags().Lookup("output"); f != nil && f.Changed {
				format = g.output
			}
			var write func(api.Flow) error
			w := cmd.OutOrStdout()
			switch format {
			case "compact", "":
				write = func(f api.Flow) error { _, err := fmt.Fprintln(w, monitor.FormatCompact(f)); return err }
			case "json", "jsonl":
				write = func(f api.Flow) error { return monitor.WriteJSONLines(w, []api.Flow{f}) }
			case "table":
				if q.Follow {
					return fmt.Errorf("-o table cannot follow; use compact or json")
				}
			default:
				return fmt.Errorf("--output %q: want compact, table or json", format)
			}
			ctx, cancel := followCtx()
			defer cancel()
			if !q.Follow {
				var tctx context.Context
				tctx, cancel = context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				ctx = tctx
			}
			var all []api.Flow
			err := g.client().Flows(ctx, q, func(f api.Flow) error {
				if write == nil {
					all = append(all, f)
					return nil
				}
				return write(f)
			})
			if err != nil {
				return g.explain(err)
			}
			if write == nil {
				return monitor.WriteTable(w, all)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&q.From, "from", nil, "source peer(s)")
	fl.StringSliceVar(&q.To, "to", nil, "destination peer(s)")
	fl.StringVar(&q.Verdict, "verdict", "", "FORWARDED or DROPPED")
	fl.StringVar(&q.Protocol, "protocol", "", "TCP, UDP, ICMP or SCTP")
	fl.StringVar(&q.Type, "type", "", "drop, trace or policy-verdict")
	fl.Uint16Var(&q.Port, "port", 0, "source or destination port")
	fl.IntVar(&q.Last, "last", 0, "only the newest N matching flows (default 100 without --follow)")
	fl.BoolVarP(&q.Follow, "follow", "f", false, "keep printing new flows until Ctrl-C")
	fl.StringVar(&since, "since", "", "only flows newer than a duration ago (5m) or an RFC 3339 time")
	fl.StringVar(&format, "format", "compact", "compact, table or json (also -o)")
	return cmd
}

func newMonitorCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "monitor",
		Short: "Stream raw datapath events (undecorated; one JSON object per event) until Ctrl-C",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := followCtx()
			defer cancel()
			w := cmd.OutOrStdout()
			err := g.client().Monitor(ctx, func(raw json.RawMessage) error {
				_, err := fmt.Fprintln(w, strings.TrimSpace(string(raw)))
				return err
			})
			return g.explain(err)
		},
	}
}

// mapWarnings lists maps above 90% of their capacity.
func mapWarnings(maps []api.MapUsage) []string {
	var out []string
	for _, m := range maps {
		if m.Capacity > 0 && m.Entries*10 > m.Capacity*9 {
			out = append(out, fmt.Sprintf("WARNING: BPF map %s is %.0f%% full (%d/%d entries); raise its size flag", m.Name, 100*float64(m.Entries)/float64(m.Capacity), m.Entries, m.Capacity))
		}
	}
	return out
}
