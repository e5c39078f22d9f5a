package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
)

// fakeAgent serves the agent's CNI routes on a unix socket with the api
// types, records what it was asked, and fails ADD with a chosen code.
type fakeAgent struct {
	socket string

	mu       sync.Mutex
	requests []string // "METHOD /path"
	adds     []api.CNIAddRequest
	gcs      []api.CNIGCRequest
	addErr   *api.Error // ADD answers this when set
	delErr   *api.Error
}

func startFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	f := &fakeAgent{socket: filepath.Join(t.TempDir(), "agent.sock")}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatalf("listen on %s: %v", f.socket, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/cni/add", func(w http.ResponseWriter, r *http.Request) {
		var req api.CNIAddRequest
		if !decode(w, r, &req) {
			return
		}
		f.mu.Lock()
		f.adds = append(f.adds, req)
		addErr := f.addErr
		f.mu.Unlock()
		if addErr != nil {
			writeJSON(w, http.StatusServiceUnavailable, addErr)
			return
		}
		writeJSON(w, http.StatusOK, api.CNIAddResponse{
			Endpoint: api.Endpoint{ID: 1, ContainerID: req.ContainerID, IfName: req.IfName, Netns: req.Netns,
				MAC: "0a:58:0a:01:00:05", HostIfName: "lxc0001", HostMAC: "0a:58:0a:ff:00:01"},
			Address: netip.MustParsePrefix("10.1.0.5/32"),
			Gateway: netip.MustParseAddr("10.1.0.1"),
			Routes:  []api.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.1.0.1")}},
		})
	})
	mux.HandleFunc("POST /v1/cni/del", func(w http.ResponseWriter, r *http.Request) {
		var req api.CNIDelRequest
		if !decode(w, r, &req) {
			return
		}
		f.mu.Lock()
		delErr := f.delErr
		f.mu.Unlock()
		if delErr != nil {
			writeJSON(w, http.StatusNotFound, delErr)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/cni/check", func(w http.ResponseWriter, r *http.Request) {
		var req api.CNICheckRequest
		if !decode(w, r, &req) {
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /v1/cni/gc", func(w http.ResponseWriter, r *http.Request) {
		var req api.CNIGCRequest
		if !decode(w, r, &req) {
			return
		}
		f.mu.Lock()
		f.gcs = append(f.gcs, req)
		f.mu.Unlock()
		writeJSON(w, http.StatusOK, api.CNIGCResponse{})
	})
	mux.HandleFunc("GET /v1/cni/status", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		mux.ServeHTTP(w, r)
	})}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("fake agent: %v", err)
		}
	}()
	t.Cleanup(func() { srv.Close() })
	return f
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, api.Error{Code: api.CodeInvalid, Message: err.Error()})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// takeRequests returns and clears the recorded requests.
func (f *fakeAgent) takeRequests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.requests
	f.requests = nil
	return r
}

func (f *fakeAgent) setAddErr(e *api.Error) {
	f.mu.Lock()
	f.addErr = e
	f.mu.Unlock()
}

func (f *fakeAgent) setDelErr(e *api.Error) {
	f.mu.Lock()
	f.delErr = e
	f.mu.Unlock()
}

// invocation is one run of the plugin as a runtime performs it.
type invocation struct {
	cmd         string
	containerID string
	netns       string
	ifname      string
	args        string
	stdin       string
	omit        string // environment variable to leave out
}

type outcome struct {
	exitCode int
	stdout   []byte
	stderr   string
}

func run(t *testing.T, bin string, inv invocation) outcome {
	t.Helper()
	env := map[string]string{
		"CNI_COMMAND":     inv.cmd,
		"CNI_CONTAINERID": inv.containerID,
		"CNI_NETNS":       inv.netns,
		"CNI_IFNAME":      inv.ifname,
		"CNI_ARGS":        inv.args,
		"CNI_PATH":        "/opt/cni/bin",
	}
	delete(env, inv.omit)
	cmd := exec.Command(bin)
	for k, v := range env {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdin = strings.NewReader(inv.stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	code := 0
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %s: %v", bin, err)
	}
	return outcome{exitCode: code, stdout: stdout.Bytes(), stderr: stderr.String()}
}

type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

func (o outcome) cniError(t *testing.T) cniError {
	t.Helper()
	if o.exitCode == 0 {
		t.Fatalf("exit 0, want failure; stdout %s", o.stdout)
	}
	var e cniError
	if err := json.Unmarshal(o.stdout, &e); err != nil {
		t.Fatalf("stdout is not a CNI error object: %v\n%s\nstderr: %s", err, o.stdout, o.stderr)
	}
	return e
}

func conf(version, socket, extra string) string {
	return `{"cniVersion":"` + version + `","name":"membrane","type":"membrane-cni","socketPath":"` + socket + `"` + extra + `}`
}

func TestBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "membrane-cni")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	agent := startFakeAgent(t)
	netns := filepath.Join(t.TempDir(), "netns") // stands in for /var/run/netns/cni-…
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missingSocket := filepath.Join(t.TempDir(), "no-agent.sock")
	add := func(stdin string) invocation {
		return invocation{cmd: "ADD", containerID: "0123456789abcdef0123", netns: netns, ifname: "eth0",
			args:  "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=y;MEMBRANE_LABELS=team=a,app=old",
			stdin: stdin}
	}

	t.Run("VERSION", func(t *testing.T) {
		o := run(t, bin, invocation{cmd: "VERSION"})
		var v struct {
			CNIVersion        string   `json:"cniVersion"`
			SupportedVersions []string `json:"supportedVersions"`
		}
		if o.exitCode != 0 || json.Unmarshal(o.stdout, &v) != nil {
			t.Fatalf("exit %d stdout %s", o.exitCode, o.stdout)
		}
		if d := cmp.Diff([]string{"0.4.0", "1.0.0", "1.1.0"}, v.SupportedVersions); d != "" {
			t.Errorf("supportedVersions (-want +got):\n%s", d)
		}
	})

	t.Run("ADD 1.0.0", func(t *testing.T) {
		agent.takeRequests()
		o := run(t, bin, add(conf("1.0.0", agent.socket, `,"capabilities":{"labels":true},"runtimeConfig":{"labels":{"app":"web"},"containerPorts":[{"name":"http","containerPort":80}]}`)))
		if o.exitCode != 0 {
			t.Fatalf("exit %d: %s %s", o.exitCode, o.stdout, o.stderr)
		}
		var res struct {
			CNIVersion string `json:"cniVersion"`
			Interfaces []struct {
				Name, Mac, Sandbox string
			} `json:"interfaces"`
			IPs []map[string]any `json:"ips"`
		}
		if err := json.Unmarshal(o.stdout, &res); err != nil {
			t.Fatalf("result: %v\n%s", err, o.stdout)
		}
		if res.CNIVersion != "1.0.0" || len(res.Interfaces) != 2 || res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != netns {
			t.Errorf("result = %s", o.stdout)
		}
		if len(res.IPs) != 1 || res.IPs[0]["address"] != "10.1.0.5/32" || res.IPs[0]["interface"] != float64(1) {
			t.Errorf("ips = %v", res.IPs)
		}
		if _, ok := res.IPs[0]["version"]; ok {
			t.Errorf("1.0.0 result has ips[].version")
		}
		agent.mu.Lock()
		last := agent.adds[len(agent.adds)-1]
		agent.mu.Unlock()
		want := api.CNIAddRequest{ContainerID: "0123456789abcdef0123", Netns: netns, IfName: "eth0", Namespace: "shop", PodName: "web-0",
			Labels: map[string]string{"team": "a", "app": "web"}, Ports: []api.NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}}}
		if d := cmp.Diff(want, last); d != "" {
			t.Errorf("agent saw (-want +got):\n%s", d)
		}
	})

	t.Run("ADD 0.4.0", func(t *testing.T) {
		o := run(t, bin, add(conf("0.4.0", agent.socket, "")))
		var res struct {
			CNIVersion string           `json:"cniVersion"`
			IPs        []map[string]any `json:"ips"`
		}
		if o.exitCode != 0 || json.Unmarshal(o.stdout, &res) != nil {
			t.Fatalf("exit %d: %s", o.exitCode, o.stdout)
		}
		if res.CNIVersion != "0.4.0" || len(res.IPs) != 1 || res.IPs[0]["version"] != "4" {
			t.Errorf("result = %s", o.stdout)
		}
	})

	t.Run("CHECK, GC, STATUS, DEL 1.1.0", func(t *testing.T) {
		agent.takeRequests()
		prev := `,"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"` + netns + `"}],"ips":[{"interface":0,"address":"10.1.0.5/32"}]}`
		steps := []invocation{
			{cmd: "CHECK", containerID: "c1", netns: netns, ifname: "eth0", stdin: conf("1.1.0", agent.socket, prev)},
			{cmd: "GC", stdin: conf("1.1.0", agent.socket, `,"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]`)},
			{cmd: "STATUS", stdin: conf("1.1.0", agent.socket, "")},
			{cmd: "DEL", containerID: "c1", netns: netns, ifname: "eth0", stdin: conf("1.1.0", agent.socket, "")},
		}
		for _, inv := range steps {
			o := run(t, bin, inv)
			if o.exitCode != 0 || len(o.stdout) != 0 {
				t.Errorf("%s: exit %d stdout %q stderr %q", inv.cmd, o.exitCode, o.stdout, o.stderr)
			}
		}
		want := []string{"POST /v1/cni/check", "POST /v1/cni/gc", "GET /v1/cni/status", "POST /v1/cni/del"}
		if d := cmp.Diff(want, agent.takeRequests()); d != "" {
			t.Errorf("agent requests (-want +got):\n%s", d)
		}
	})

	t.Run("DEL of unknown attachment with netns gone", func(t *testing.T) {
		agent.setDelErr(&api.Error{Code: api.CodeNotFound, Message: "no attachment c9/eth0"})
		defer agent.setDelErr(nil)
		o := run(t, bin, invocation{cmd: "DEL", containerID: "c9", netns: "/var/run/netns/gone", ifname: "eth0", stdin: conf("1.0.0", agent.socket, "")})
		if o.exitCode != 0 || len(o.stdout) != 0 {
			t.Errorf("exit %d stdout %q", o.exitCode, o.stdout)
		}
	})

	t.Run("exhausted", func(t *testing.T) {
		agent.setAddErr(&api.Error{Code: api.CodeExhausted, Message: "pool 10.1.0.0/24 has no free address"})
		defer agent.setAddErr(nil)
		e := run(t, bin, add(conf("1.0.0", agent.socket, ""))).cniError(t)
		if e.Code != 100 || !strings.Contains(e.Msg, "address pool exhausted: pool 10.1.0.0/24") || e.CNIVersion != "1.0.0" {
			t.Errorf("error = %+v", e)
		}
	})

	// Bad input: the right code, and the agent hears nothing.
	bad := []struct {
		name string
		inv  invocation
		code uint
	}{
		{"unknown cniVersion", add(conf("9.9.9", agent.socket, "")), 1},
		{"malformed JSON", add(`{"cniVersion":"1.0.0","name":"membrane",`), 6},
		{"missing name", add(`{"cniVersion":"1.0.0","type":"membrane-cni"}`), 7},
		{"bad port", add(conf("1.0.0", agent.socket, `,"runtimeConfig":{"containerPorts":[{"name":"a","containerPort":70000}]}`)), 7},
		{"bad label", add(conf("1.0.0", agent.socket, `,"runtimeConfig":{"labels":{"-bad":"x"}}`)), 7},
		{"missing CNI_NETNS", func() invocation { i := add(conf("1.0.0", agent.socket, "")); i.omit = "CNI_NETNS"; return i }(), 4},
		{"netns does not exist", func() invocation { i := add(conf("1.0.0", agent.socket, "")); i.netns = "/nonexistent/ns"; return i }(), 4},
		{"bad CNI_ARGS", func() invocation { i := add(conf("1.0.0", agent.socket, "")); i.args = "GARBAGE"; return i }(), 4},
		{"STATUS with 1.0.0 config", invocation{cmd: "STATUS", stdin: conf("1.0.0", agent.socket, "")}, 1},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			agent.takeRequests()
			e := run(t, bin, tt.inv).cniError(t)
			if e.Code != tt.code {
				t.Errorf("code = %d, want %d (%s)", e.Code, tt.code, e.Msg)
			}
			if reqs := agent.takeRequests(); len(reqs) != 0 {
				t.Errorf("agent saw %v, want nothing", reqs)
			}
		})
	}

	t.Run("agent down", func(t *testing.T) {
		e := run(t, bin, add(conf("1.0.0", missingSocket, ""))).cniError(t)
		if e.Code != 11 || !strings.Contains(e.Msg, missingSocket) || !strings.Contains(e.Msg, "membrane-agent") {
			t.Errorf("ADD error = %+v", e)
		}
		e = run(t, bin, invocation{cmd: "DEL", containerID: "c1", ifname: "eth0", stdin: conf("1.0.0", missingSocket, "")}).cniError(t)
		if e.Code != 11 {
			t.Errorf("DEL error = %+v", e)
		}
		e = run(t, bin, invocation{cmd: "STATUS", stdin: conf("1.1.0", missingSocket, "")}).cniError(t)
		if e.Code != 50 || !strings.Contains(e.Msg, missingSocket) {
			t.Errorf("STATUS error = %+v", e)
		}
	})
}
