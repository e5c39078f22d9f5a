package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The svc-crr workload: connect, request, close through a service. Each
// iteration opens a TCP socket, connect()s to the service address (where
// Membrane's connect4 hook picks the backend, and iptables/nftables DNAT
// the SYN), sends an HTTP/1.1 request with `Connection: close`, reads the
// answer until nginx closes, and closes; its latency runs from before
// socket() to after close(), so it includes the connect and the SYN's
// trip through the service translation. (wrk times a request from its
// first write, after the connect has completed, which would leave out the
// very step that differs between the datapaths.) One connection at a time,
// so the latency is the path's, not a queue's; the rate is connections per
// second of that loop.
//
// The client is this program run again as a helper (RunHelper), because a
// Membrane pod's process must be born in the pod's cgroup for the cgroup
// hooks to see it: it is started in the client's network namespace and
// cgroup, pinned to the run's CPU.

// helperEnv carries a helper's job (JSON) to the re-executed program.
const helperEnv = "MEMBRANE_BENCH_HELPER_CRR"

// crrJob is what the helper runs.
type crrJob struct {
	Addr     netip.AddrPort `json:"addr"`
	Duration time.Duration  `json:"duration"`
	Timeout  time.Duration  `json:"timeout"` // per socket operation
}

// crrReport is what the helper prints.
type crrReport struct {
	Connections int     `json:"connections"`
	Errors      int     `json:"errors"`
	FirstError  string  `json:"firstError,omitempty"`
	Seconds     float64 `json:"seconds"`
	P50us       float64 `json:"p50us"`
	P90us       float64 `json:"p90us"`
	P99us       float64 `json:"p99us"`
}

// maxCRRSamples bounds the helper's memory (about 30 s at 100K/s).
const maxCRRSamples = 3_000_000

// RunHelper runs the helper job given in the environment, if any, writes
// its report to stdout and returns true; the caller (membrane-bench's main,
// the package's TestMain) must then exit. It returns false for a normal
// start.
func RunHelper() bool {
	spec := os.Getenv(helperEnv)
	if spec == "" {
		return false
	}
	var job crrJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		fmt.Fprintf(os.Stderr, "crr helper: parse job %q: %v\n", spec, err)
		os.Exit(2)
	}
	rep, err := runCRR(job)
	if err != nil {
		fmt.Fprintf(os.Stderr, "crr helper: %v\n", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		os.Exit(1)
	}
	return true
}

// runCRR loops connect-request-close for job.Duration.
func runCRR(job crrJob) (crrReport, error) {
	if !job.Addr.IsValid() || !job.Addr.Addr().Is4() || job.Duration <= 0 || job.Duration > maxDuration {
		return crrReport{}, fmt.Errorf("job %+v: want an IPv4 address and a duration up to %s", job, maxDuration)
	}
	if job.Timeout <= 0 {
		job.Timeout = 2 * time.Second
	}
	req := []byte("GET / HTTP/1.1\r\nHost: " + job.Addr.String() + "\r\nConnection: close\r\n\r\n")
	sa := &syscall.SockaddrInet4{Port: int(job.Addr.Port()), Addr: job.Addr.Addr().As4()}
	tv := syscall.NsecToTimeval(job.Timeout.Nanoseconds())
	buf := make([]byte, 4096)
	lat := make([]float64, 0, 1<<16)
	var rep crrReport
	once := func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer syscall.Close(fd)
		// Blocking socket with timeouts: SO_SNDTIMEO bounds connect and
		// write, SO_RCVTIMEO each read.
		_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
		_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
		if err := connectEINTR(fd, sa, job.Timeout); err != nil {
			return fmt.Errorf("connect %s: %w", job.Addr, err)
		}
		if _, err := retryEINTR(func() (int, error) { return syscall.Write(fd, req) }); err != nil {
			return fmt.Errorf("write to %s: %w", job.Addr, err)
		}
		got := 0
		for range 64 { // a 3-byte answer with headers takes one or two reads
			n, err := retryEINTR(func() (int, error) { return syscall.Read(fd, buf) })
			if err != nil {
				return fmt.Errorf("read from %s: %w", job.Addr, err)
			}
			if n == 0 {
				if got == 0 {
					return fmt.Errorf("%s closed without answering", job.Addr)
				}
				return nil
			}
			got += n
		}
		return fmt.Errorf("%s kept sending", job.Addr)
	}
	start := time.Now()
	end := start.Add(job.Duration)
	for now := start; now.Before(end) && len(lat) < maxCRRSamples; now = time.Now() {
		err := once()
		d := time.Since(now)
		if err != nil {
			rep.Errors++
			if rep.FirstError == "" {
				rep.FirstError = err.Error()
			}
			continue
		}
		lat = append(lat, float64(d.Nanoseconds())/1e3)
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.Connections = len(lat)
	if len(lat) > 0 {
		slices.Sort(lat)
		rep.P50us, rep.P90us, rep.P99us = Percentile(lat, 50), Percentile(lat, 90), Percentile(lat, 99)
	}
	return rep, nil
}

// helperPath is the program re-executed as the helper: this one.
func helperPath() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the crr helper (this executable): %w", err)
	}
	return exe, nil
}

// ---- the workload ----

// svcCRR measures connect/request/close through Pair.Service (the server's
// svcServerPort when the pair has no service) against one nginx worker.
type svcCRR struct{ port uint16 }

func (w *svcCRR) Metrics() []Metric {
	return []Metric{
		{"cps", "connections/s", true},
		{"p50_us", "µs", false},
		{"p99_us", "µs", false},
	}
}

func (w *svcCRR) Tool() string { return "connect/request/close loop (membrane-bench) + nginx" }

func (w *svcCRR) Serve(ctx context.Context, env *Env, srv Endpoint, tag string) error {
	return serveNginx(ctx, env, srv, tag+"-svc", w.port)
}

// target is where the client connects.
func (w *svcCRR) target(pair Pair) netip.AddrPort {
	if pair.Service.IsValid() {
		return pair.Service
	}
	return netip.AddrPortFrom(pair.Server.Addr, w.port)
}

func (w *svcCRR) Run(ctx context.Context, env *Env, pair Pair, d time.Duration) (map[string]float64, error) {
	rep, err := runCRRHelper(ctx, env, pair.Client, crrJob{Addr: w.target(pair), Duration: d})
	if err != nil {
		return nil, err
	}
	return rep.values()
}

// values turns a helper report into the workload's metrics; more than a
// trace of errors fails the measurement.
func (r crrReport) values() (map[string]float64, error) {
	if r.Connections == 0 || r.Seconds <= 0 {
		return nil, fmt.Errorf("crr: no connection completed (%d errors, first: %s)", r.Errors, r.FirstError)
	}
	if float64(r.Errors) > 0.01*float64(r.Connections+r.Errors) {
		return nil, fmt.Errorf("crr: %d of %d connections failed, first: %s", r.Errors, r.Connections+r.Errors, r.FirstError)
	}
	return map[string]float64{
		"cps":    float64(r.Connections) / r.Seconds,
		"p50_us": r.P50us,
		"p99_us": r.P99us,
		"p90_us": r.P90us,
		"errors": float64(r.Errors),
	}, nil
}

// runCRRHelper runs the helper in an endpoint: its network namespace, its
// cgroup (when it has one) and the run's CPU.
func runCRRHelper(ctx context.Context, env *Env, ep Endpoint, job crrJob) (crrReport, error) {
	exe, err := helperPath()
	if err != nil {
		return crrReport{}, err
	}
	spec, err := json.Marshal(job)
	if err != nil {
		return crrReport{}, err
	}
	out, err := env.ExecInEndpoint(ctx, ep, runTimeout(job.Duration), []string{helperEnv + "=" + string(spec)}, exe)
	if err != nil {
		return crrReport{}, err
	}
	var rep crrReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return crrReport{}, fmt.Errorf("crr helper in %s: parse report %q: %w", ep.Netns, lastLines(out, 3), err)
	}
	return rep, nil
}

// ExecInEndpoint runs argv in an endpoint's namespace and cgroup (the
// process is born in it: clone3 with CLONE_INTO_CGROUP), pinned to the
// run's CPU, with extra environment variables, and returns its stdout.
func (e *Env) ExecInEndpoint(ctx context.Context, ep Endpoint, timeout time.Duration, environ []string, argv ...string) (string, error) {
	if ep.Cgroup == "" {
		full := append([]string{"ip", "netns", "exec", ep.Netns, "taskset", "-c", strconv.Itoa(e.CPU)}, argv...)
		return outputEnv(ctx, timeout, environ, -1, full...)
	}
	cg, err := os.Open(ep.Cgroup)
	if err != nil {
		return "", fmt.Errorf("open cgroup of %s: %w", ep.Netns, err)
	}
	defer cg.Close()
	full := append([]string{"ip", "netns", "exec", ep.Netns, "taskset", "-c", strconv.Itoa(e.CPU)}, argv...)
	return outputEnv(ctx, timeout, environ, int(cg.Fd()), full...)
}

// outputEnv runs argv with extra environment variables, in cgroup fd
// cgroupFD when it is not negative, bounded by timeout, and returns stdout.
func outputEnv(ctx context.Context, timeout time.Duration, environ []string, cgroupFD int, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), environ...)
	var stdout, stderr limitedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgroupFD
	}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Run(); err != nil {
		msg := stderr.String()
		if msg == "" {
			msg = lastLines(stdout.String(), 5)
		}
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return stdout.String(), fmt.Errorf("%s: %w: %s", shortArgs(argv), err, lastLines(msg, 5))
	}
	return stdout.String(), nil
}

// limitedBuffer keeps at most 1 MiB of a command's output.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 1<<20 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(len(p), room)]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }

// Socket calls with SO_SNDTIMEO/SO_RCVTIMEO set are not restarted after a
// signal (signal(7)), and the Go runtime signals its threads (preemption):
// EINTR is retried here, a bounded number of times.
func retryEINTR(f func() (int, error)) (int, error) {
	for range 100 {
		n, err := f()
		if err != syscall.EINTR {
			return n, err
		}
	}
	return 0, syscall.EINTR
}

// connectEINTR connects a blocking socket; a connect interrupted by a
// signal goes on in the kernel, so it waits for the socket to become
// writable and reads the outcome from SO_ERROR.
func connectEINTR(fd int, sa syscall.Sockaddr, timeout time.Duration) error {
	err := syscall.Connect(fd, sa)
	if err != syscall.EINTR {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return syscall.ETIMEDOUT
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return syscall.ETIMEDOUT
		}
		soerr, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err != nil {
			return err
		}
		if soerr != 0 {
			return syscall.Errno(soerr)
		}
		return nil
	}
}
