// Package metrics exposes the agent's Prometheus metrics: datapath
// counters by verdict and drop reason (read from per-CPU BPF maps at scrape
// time), BPF map pressure, endpoint/identity/policy gauges, flow-event
// counters, and latency histograms for the API and CNI ADD, and kvstore
// operation counters. The agent serves them on an opt-in TCP address.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DatapathCounter is one per-CPU counter summed over CPUs.
type DatapathCounter struct {
	Reason  string // "FORWARDED" or a drop reason
	Egress  bool
	Packets uint64
	Bytes   uint64
}

// MapUsage is the fill level of one BPF map.
type MapUsage struct {
	Name     string
	Entries  int
	Capacity int
}

// Source answers the scrape-time questions; the agent implements it.
type Source interface {
	DatapathCounters() ([]DatapathCounter, error)
	MapUsage() ([]MapUsage, error)
	Endpoints() int
	Identities() int
	PolicyRevision() uint64
	EventsLost() (uint64, error)
	FlowsSeen() uint64
}

// Metrics holds the instrumented histograms and counters.
type Metrics struct {
	Registry    *prometheus.Registry
	APIDuration *prometheus.HistogramVec
	CNIAdd      *prometheus.HistogramVec
	KvstoreOps  *prometheus.CounterVec
}

var latencyBuckets = []float64{.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5}

// New registers everything against a fresh registry.
func New(src Source) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		APIDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "membrane", Name: "api_request_duration_seconds",
			Help: "Latency of the agent's API requests.", Buckets: latencyBuckets,
		}, []string{"method", "route", "code"}),
		CNIAdd: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "membrane", Name: "cni_add_duration_seconds",
			Help: "Time the agent spends on a CNI ADD, including policy computation.", Buckets: latencyBuckets,
		}, []string{"outcome"}),
		KvstoreOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "membrane", Name: "kvstore_operations_total",
			Help: "etcd requests by method and outcome.",
		}, []string{"method", "outcome"}),
	}
	reg.MustRegister(m.APIDuration, m.CNIAdd, m.KvstoreOps, &collector{src: src},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// InstrumentHandler times every request of h by its route pattern.
func (m *Metrics) InstrumentHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &statusWriter{ResponseWriter: w, code: 200}
		h.ServeHTTP(rw, r)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		m.APIDuration.WithLabelValues(r.Method, route, strconv.Itoa(rw.code)).Observe(time.Since(start).Seconds())
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) { w.code = code; w.ResponseWriter.WriteHeader(code) }

// Flush lets streaming responses through the wrapper.
func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

var (
	descPackets   = prometheus.NewDesc("membrane_datapath_packets_total", "Packets seen by the BPF datapath by verdict (FORWARDED or a drop reason) and direction.", []string{"reason", "direction"}, nil)
	descBytes     = prometheus.NewDesc("membrane_datapath_bytes_total", "Bytes seen by the BPF datapath by verdict and direction.", []string{"reason", "direction"}, nil)
	descMapEnt    = prometheus.NewDesc("membrane_bpf_map_entries", "Entries in a BPF map.", []string{"map"}, nil)
	descMapCap    = prometheus.NewDesc("membrane_bpf_map_capacity", "Maximum entries of a BPF map.", []string{"map"}, nil)
	descMapPress  = prometheus.NewDesc("membrane_bpf_map_pressure", "Fill ratio of a BPF map (entries / capacity).", []string{"map"}, nil)
	descEndpoints = prometheus.NewDesc("membrane_endpoints", "Endpoints on this node.", nil, nil)
	descIdents    = prometheus.NewDesc("membrane_identities", "Security identities known to this node (cluster and local).", nil, nil)
	descPolRev    = prometheus.NewDesc("membrane_policy_revision", "Local policy computation counter.", nil, nil)
	descLost      = prometheus.NewDesc("membrane_events_lost_total", "Flow events dropped because the BPF ring buffer was full.", nil, nil)
	descFlows     = prometheus.NewDesc("membrane_flows_seen_total", "Flow events read from the datapath.", nil, nil)
	descScrapeErr = prometheus.NewDesc("membrane_metrics_scrape_errors", "1 if reading a datapath source failed during this scrape.", []string{"source"}, nil)
)

type collector struct{ src Source }

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descMapEnt, descMapCap, descMapPress, descEndpoints, descIdents, descPolRev, descLost, descFlows, descScrapeErr} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	failed := func(src string, err error) {
		v := 0.0
		if err != nil {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, v, src)
	}
	counters, err := c.src.DatapathCounters()
	failed("datapath_counters", err)
	for _, ct := range counters {
		dir := "ingress"
		if ct.Egress {
			dir = "egress"
		}
		ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(ct.Packets), ct.Reason, dir)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(ct.Bytes), ct.Reason, dir)
	}
	maps, err := c.src.MapUsage()
	failed("map_usage", err)
	for _, m := range maps {
		ch <- prometheus.MustNewConstMetric(descMapEnt, prometheus.GaugeValue, float64(m.Entries), m.Name)
		ch <- prometheus.MustNewConstMetric(descMapCap, prometheus.GaugeValue, float64(m.Capacity), m.Name)
		if m.Capacity > 0 {
			ch <- prometheus.MustNewConstMetric(descMapPress, prometheus.GaugeValue, float64(m.Entries)/float64(m.Capacity), m.Name)
		}
	}
	ch <- prometheus.MustNewConstMetric(descEndpoints, prometheus.GaugeValue, float64(c.src.Endpoints()))
	ch <- prometheus.MustNewConstMetric(descIdents, prometheus.GaugeValue, float64(c.src.Identities()))
	ch <- prometheus.MustNewConstMetric(descPolRev, prometheus.GaugeValue, float64(c.src.PolicyRevision()))
	lost, err := c.src.EventsLost()
	failed("events_lost", err)
	ch <- prometheus.MustNewConstMetric(descLost, prometheus.CounterValue, float64(lost))
	ch <- prometheus.MustNewConstMetric(descFlows, prometheus.CounterValue, float64(c.src.FlowsSeen()))
}

// Server serves /metrics on a TCP address.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Serve starts the metrics endpoint on addr (host:port).
func Serve(addr string, m *Metrics, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	s := &Server{ln: ln, done: make(chan error, 1), srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if e := <-s.done; e != nil && !errors.Is(e, http.ErrServerClosed) {
		return e
	}
	return err
}
