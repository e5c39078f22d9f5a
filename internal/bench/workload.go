package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Metric describes one number a workload reports.
type Metric struct {
	Name           string `json:"name"`
	Unit           string `json:"unit"`
	HigherIsBetter bool   `json:"higherIsBetter"`
}

// Workload is traffic run through a Pair. Serve starts its server(s) in the
// server endpoint once per topology; Run measures for about d and returns
// one value per metric. Metrics()[0] is the primary metric, the one ratios
// and targets use.
type Workload interface {
	Metrics() []Metric
	Tool() string // the tool behind it, for the report ("sockperf 3.7")
	Serve(ctx context.Context, env *Env, srv Endpoint, tag string) error
	Run(ctx context.Context, env *Env, pair Pair, d time.Duration) (map[string]float64, error)
}

var workloadKinds = map[string]func() Workload{
	WorkloadTCPRR:     func() Workload { return &sockperfRR{proto: "tcp", port: 11111} },
	WorkloadUDPRR:     func() Workload { return &sockperfRR{proto: "udp", port: 11112} },
	WorkloadTCPStream: func() Workload { return &iperfStream{port: 15201} },
	WorkloadTCPCRR:    func() Workload { return &wrkCRR{port: 18080, conns: 4} },
	WorkloadSvcCRR:    func() Workload { return &svcCRR{port: svcServerPort} },
}

// runTimeout bounds one client run of duration d.
func runTimeout(d time.Duration) time.Duration { return d + 20*time.Second }

// wholeSeconds rounds up to whole seconds (the tools take integers).
func wholeSeconds(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }

// ---- request/response: sockperf ping-pong ----

// sockperfRR is a ping-pong of 14-byte messages (sockperf's minimum size):
// one message in flight, so transactions/s is 1/RTT.
type sockperfRR struct {
	proto string
	port  uint16
}

const sockperfMsgSize = 14

// sockperfMinSeconds is the shortest sockperf run: sockperf 3.7 leaves its
// first 400 ms (warm-up) and the last moments out of the "valid duration",
// and at -t 1 that window is sometimes empty on a loaded machine ("No
// valid observations found"), which fails the measurement.
const sockperfMinSeconds = 2

// sockperfSeconds is sockperf's -t for a measurement of d.
func sockperfSeconds(d time.Duration) int { return max(wholeSeconds(d), sockperfMinSeconds) }

func (w *sockperfRR) Metrics() []Metric {
	return []Metric{
		{"tps", "transactions/s", true},
		{"p50_rtt_us", "µs", false},
		{"p99_rtt_us", "µs", false},
	}
}

func (w *sockperfRR) Tool() string { return "sockperf" }

func (w *sockperfRR) protoArgs() []string {
	if w.proto == "tcp" {
		return []string{"--tcp"}
	}
	return nil
}

func (w *sockperfRR) Serve(ctx context.Context, env *Env, srv Endpoint, tag string) error {
	argv := append([]string{"sockperf", "server"}, w.protoArgs()...)
	argv = append(argv, "-i", srv.Addr.String(), "-p", strconv.Itoa(int(w.port)))
	p, err := env.StartIn(srv.Netns, tag+"-sockperf-"+w.proto, argv...)
	if err != nil {
		return err
	}
	return env.WaitListen(ctx, srv.Netns, w.proto, w.port, p)
}

func (w *sockperfRR) Run(ctx context.Context, env *Env, pair Pair, d time.Duration) (map[string]float64, error) {
	argv := append([]string{"sockperf", "ping-pong"}, w.protoArgs()...)
	argv = append(argv, "-i", pair.Server.Addr.String(), "-p", strconv.Itoa(int(w.port)),
		"-t", strconv.Itoa(sockperfSeconds(d)), "-m", strconv.Itoa(sockperfMsgSize), "--full-rtt")
	out, err := env.ExecIn(ctx, pair.Client.Netns, runTimeout(d), argv...)
	if err != nil {
		return nil, err
	}
	return parseSockperf(out)
}

var (
	sockperfValidRE = regexp.MustCompile(`\[Valid Duration\] RunTime=([0-9.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)`)
	sockperfPctRE   = regexp.MustCompile(`percentile (\d+\.\d+) =\s+([0-9.]+)`)
	ansiRE          = regexp.MustCompile("\x1b\\[[0-9;]*m")
)

// parseSockperf reads a sockperf ping-pong report run with --full-rtt
// (round-trip times rather than sockperf's default RTT/2). sockperf
// excludes its warm-up and the last moments from the "valid duration".
func parseSockperf(out string) (map[string]float64, error) {
	out = ansiRE.ReplaceAllString(out, "")
	m := sockperfValidRE.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("sockperf: no valid-duration line in output: %q", lastLines(out, 5))
	}
	secs, _ := strconv.ParseFloat(m[1], 64)
	recv, _ := strconv.ParseFloat(m[3], 64)
	if secs <= 0 || recv <= 0 {
		return nil, fmt.Errorf("sockperf: no messages received (runtime %s s)", m[1])
	}
	res := map[string]float64{"tps": recv / secs}
	for _, pm := range sockperfPctRE.FindAllStringSubmatch(out, -1) {
		v, err := strconv.ParseFloat(pm[2], 64)
		if err != nil {
			continue
		}
		switch pm[1] {
		case "50.000":
			res["p50_rtt_us"] = v
		case "99.000":
			res["p99_rtt_us"] = v
		}
	}
	if _, ok := res["p50_rtt_us"]; !ok {
		return nil, errors.New("sockperf: no percentiles in output")
	}
	return res, nil
}

// ---- stream: iperf3 ----

type iperfStream struct{ port uint16 }

func (w *iperfStream) Metrics() []Metric { return []Metric{{"gbps", "Gbit/s", true}} }
func (w *iperfStream) Tool() string      { return "iperf3" }

func (w *iperfStream) Serve(ctx context.Context, env *Env, srv Endpoint, tag string) error {
	p, err := env.StartIn(srv.Netns, tag+"-iperf3", "iperf3", "--server", "--bind", srv.Addr.String(), "--port", strconv.Itoa(int(w.port)))
	if err != nil {
		return err
	}
	return env.WaitListen(ctx, srv.Netns, "tcp", w.port, p)
}

func (w *iperfStream) Run(ctx context.Context, env *Env, pair Pair, d time.Duration) (map[string]float64, error) {
	out, err := env.ExecIn(ctx, pair.Client.Netns, runTimeout(d), "iperf3", "--client", pair.Server.Addr.String(),
		"--port", strconv.Itoa(int(w.port)), "--time", strconv.Itoa(wholeSeconds(d)), "--json", "--connect-timeout", "3000")
	if err != nil {
		return nil, err
	}
	return parseIperf(out)
}

func parseIperf(out string) (map[string]float64, error) {
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return nil, fmt.Errorf("iperf3: parse json: %w", err)
	}
	if r.Error != "" {
		return nil, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return nil, errors.New("iperf3: nothing received")
	}
	return map[string]float64{"gbps": r.End.SumReceived.BitsPerSecond / 1e9}, nil
}

// ---- connect/request/close: wrk against nginx ----

// wrkCRR opens a new TCP connection per HTTP request (`Connection: close`)
// with one wrk thread and a few connections in flight against a single
// nginx worker answering from memory.
type wrkCRR struct {
	port  uint16
	conns int
}

func (w *wrkCRR) Metrics() []Metric {
	return []Metric{
		{"cps", "connections/s", true},
		{"p50_us", "µs", false},
		{"p99_us", "µs", false},
	}
}

func (w *wrkCRR) Tool() string { return "wrk + nginx" }

func nginxConf(dir string, addr string, port uint16) string {
	return fmt.Sprintf(`worker_processes 1;
daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[1]s/cb;
	proxy_temp_path %[1]s/px;
	fastcgi_temp_path %[1]s/fc;
	uwsgi_temp_path %[1]s/uw;
	scgi_temp_path %[1]s/sc;
	server {
		listen %[2]s:%[3]d;
		location / { return 200 "ok\n"; }
	}
}
`, dir, addr, port)
}

func (w *wrkCRR) Serve(ctx context.Context, env *Env, srv Endpoint, tag string) error {
	return serveNginx(ctx, env, srv, tag, w.port)
}

// serveNginx starts one nginx worker answering "ok" on the endpoint's
// address and port.
func serveNginx(ctx context.Context, env *Env, srv Endpoint, tag string, port uint16) error {
	dir := "nginx-" + tag
	conf, err := env.writeFile(dir+"/nginx.conf", []byte(nginxConf(env.Dir+"/"+dir, srv.Addr.String(), port)))
	if err != nil {
		return err
	}
	p, err := env.StartIn(srv.Netns, tag+"-nginx", "nginx", "-e", "stderr", "-p", env.Dir+"/"+dir, "-c", conf)
	if err != nil {
		return err
	}
	return env.WaitListen(ctx, srv.Netns, "tcp", port, p)
}

func (w *wrkCRR) Run(ctx context.Context, env *Env, pair Pair, d time.Duration) (map[string]float64, error) {
	url := fmt.Sprintf("http://%s:%d/", pair.Server.Addr, w.port)
	out, err := env.ExecIn(ctx, pair.Client.Netns, runTimeout(d), "wrk", "--threads", "1",
		"--connections", strconv.Itoa(w.conns), "--duration", strconv.Itoa(wholeSeconds(d))+"s",
		"--timeout", "2s", "--latency", "--header", "Connection: close", url)
	if err != nil {
		return nil, err
	}
	return parseWrk(out)
}

var (
	wrkRateRE    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPctRE     = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkErrorsRE  = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xxRE  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkRequestRE = regexp.MustCompile(`(\d+) requests in`)
)

func parseWrk(out string) (map[string]float64, error) {
	m := wrkRateRE.FindStringSubmatch(out)
	if m == nil {
		return nil, fmt.Errorf("wrk: no Requests/sec in output: %q", lastLines(out, 5))
	}
	rate, _ := strconv.ParseFloat(m[1], 64)
	if rate <= 0 {
		return nil, errors.New("wrk: zero requests/s")
	}
	res := map[string]float64{"cps": rate}
	for _, pm := range wrkPctRE.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(pm[2], 64)
		switch pm[3] {
		case "ms":
			v *= 1e3
		case "s":
			v *= 1e6
		}
		res["p"+pm[1]+"_us"] = v
	}
	// Errors are reported, and fail the measurement when they are more than
	// a trace: a connect-rate number built on failed connects is no number.
	var errs float64
	if em := wrkErrorsRE.FindStringSubmatch(out); em != nil {
		for _, s := range em[1:] {
			n, _ := strconv.ParseFloat(s, 64)
			errs += n
		}
	}
	if nm := wrkNon2xxRE.FindStringSubmatch(out); nm != nil {
		n, _ := strconv.ParseFloat(nm[1], 64)
		errs += n
	}
	if rm := wrkRequestRE.FindStringSubmatch(out); rm != nil && errs > 0 {
		total, _ := strconv.ParseFloat(rm[1], 64)
		if total == 0 || errs/total > 0.01 {
			return nil, fmt.Errorf("wrk: %.0f errors in %.0f requests: %s", errs, total, strings.TrimSpace(lastLines(out, 4)))
		}
	}
	res["errors"] = errs
	return res, nil
}
