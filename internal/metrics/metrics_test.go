package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

type fakeSource struct{ packets uint64 }

func (f *fakeSource) DatapathCounters() ([]DatapathCounter, error) {
	return []DatapathCounter{{Reason: "FORWARDED", Egress: true, Packets: f.packets, Bytes: f.packets * 100}, {Reason: "POLICY_DENIED", Packets: 2, Bytes: 120}}, nil
}
func (f *fakeSource) MapUsage() ([]MapUsage, error) {
	return []MapUsage{{Name: "mbr_endpoints", Entries: 3, Capacity: 65536}}, nil
}
func (f *fakeSource) Endpoints() int              { return 3 }
func (f *fakeSource) Identities() int             { return 9 }
func (f *fakeSource) PolicyRevision() uint64      { return 4 }
func (f *fakeSource) EventsLost() (uint64, error) { return 0, errors.New("map gone") }
func (f *fakeSource) FlowsSeen() uint64           { return 11 }

func scrape(t *testing.T, m *Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	s, err := Serve("127.0.0.1:0", m, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("metrics do not parse as Prometheus text: %v\n%s", err, body)
	}
	return fams
}

func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
next:
	for _, m := range f.Metric {
		for k, v := range labels {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("metric %s%v missing", name, labels)
	return 0
}

func TestScrapeParsesAndMoves(t *testing.T) {
	src := &fakeSource{packets: 5}
	m := New(src)
	h := m.InstrumentHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/v1/status", nil))
	m.CNIAdd.WithLabelValues("ok").Observe(0.012)

	fams := scrape(t, m)
	if v := value(t, fams, "membrane_datapath_packets_total", map[string]string{"reason": "FORWARDED", "direction": "egress"}); v != 5 {
		t.Errorf("forwarded packets = %v", v)
	}
	if v := value(t, fams, "membrane_datapath_packets_total", map[string]string{"reason": "POLICY_DENIED", "direction": "ingress"}); v != 2 {
		t.Errorf("denied packets = %v", v)
	}
	if v := value(t, fams, "membrane_bpf_map_capacity", map[string]string{"map": "mbr_endpoints"}); v != 65536 {
		t.Errorf("map capacity = %v", v)
	}
	if v := value(t, fams, "membrane_metrics_scrape_errors", map[string]string{"source": "events_lost"}); v != 1 {
		t.Errorf("scrape error not reported: %v", v)
	}
	if v := value(t, fams, "membrane_api_request_duration_seconds", map[string]string{"code": "204"}); v != 1 {
		t.Errorf("api histogram count = %v", v)
	}
	if v := value(t, fams, "membrane_cni_add_duration_seconds", nil); v != 1 {
		t.Errorf("cni histogram count = %v", v)
	}
	src.packets = 9
	if v := value(t, scrape(t, m), "membrane_datapath_packets_total", map[string]string{"reason": "FORWARDED", "direction": "egress"}); v != 9 {
		t.Errorf("counter did not move: %v", v)
	}
}
