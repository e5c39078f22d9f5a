package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
)

// fakeAgent records requests and answers with canned values.
type fakeAgent struct {
	addResp api.CNIAddResponse
	err     error // returned by every call
	delErr  error // overrides err for CNIDel when set

	adds   []api.CNIAddRequest
	dels   []api.CNIDelRequest
	checks []api.CNICheckRequest
	gcs    []api.CNIGCRequest
	status int
}

func (f *fakeAgent) CNIAdd(_ context.Context, r api.CNIAddRequest) (api.CNIAddResponse, error) {
	f.adds = append(f.adds, r)
	return f.addResp, f.err
}

func (f *fakeAgent) CNIDel(_ context.Context, r api.CNIDelRequest) error {
	f.dels = append(f.dels, r)
	if f.delErr != nil {
		return f.delErr
	}
	return f.err
}

func (f *fakeAgent) CNICheck(_ context.Context, r api.CNICheckRequest) error {
	f.checks = append(f.checks, r)
	return f.err
}

func (f *fakeAgent) CNIGC(_ context.Context, r api.CNIGCRequest) (api.CNIGCResponse, error) {
	f.gcs = append(f.gcs, r)
	return api.CNIGCResponse{}, f.err
}

func (f *fakeAgent) CNIStatus(context.Context) error {
	f.status++
	return f.err
}

func (f *fakeAgent) calls() int {
	return len(f.adds) + len(f.dels) + len(f.checks) + len(f.gcs) + f.status
}

// newTestPlugin returns a plugin wired to agent, a fake netns file and a
// different fake "own netns" file.
func newTestPlugin(t *testing.T, agent *fakeAgent) (*Plugin, *bytes.Buffer, string) {
	t.Helper()
	dir := t.TempDir()
	netns := filepath.Join(dir, "netns")
	self := filepath.Join(dir, "self")
	for _, f := range []string{netns, self} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	p := &Plugin{
		NewAgent:  func(string) Agent { return agent },
		Stdout:    &out,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
		SelfNetns: self,
	}
	return p, &out, netns
}

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *types.Error", err, err)
	}
	return e.Code
}

func TestAddRequestAndLabelMerge(t *testing.T) {
	agent := &fakeAgent{addResp: sampleAddResponse()}
	p, out, netns := newTestPlugin(t, agent)
	conf := `{"cniVersion":"1.0.0","name":"membrane","type":"membrane-cni","mtu":1400,
	  "args":{"cni":{"labels":{"b":"conf-args","c":"conf-args"}}},
	  "runtimeConfig":{"labels":{"c":"runtime"},"containerPorts":[{"name":"http","containerPort":80}]}}`
	args := &skel.CmdArgs{
		ContainerID: "0123456789abcdef", Netns: netns, IfName: "eth0",
		Args:      "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_UID=u;MEMBRANE_LABELS=a=cni-args,b=cni-args,c=cni-args",
		StdinData: []byte(conf),
	}
	if err := p.Add(args); err != nil {
		t.Fatalf("Add: %v", err)
	}
	want := []api.CNIAddRequest{{
		ContainerID: "0123456789abcdef", Netns: netns, IfName: "eth0",
		Namespace: "shop", PodName: "0123456789ab",
		Labels: map[string]string{"a": "cni-args", "b": "conf-args", "c": "runtime"},
		Ports:  []api.NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}},
		MTU:    1400,
	}}
	if d := cmp.Diff(want, agent.adds); d != "" {
		t.Errorf("agent request (-want +got):\n%s", d)
	}
	var res map[string]any
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("result %q: %v", out.String(), err)
	}
	if res["cniVersion"] != "1.0.0" {
		t.Errorf("result cniVersion = %v", res["cniVersion"])
	}
}

// TestAddRefusesBadInput: each case fails with its code before the agent
// hears anything.
func TestAddRefusesBadInput(t *testing.T) {
	const good = `{"cniVersion":"1.0.0","name":"m","type":"membrane-cni"}`
	tests := []struct {
		name  string
		conf  string
		args  string
		netns string // "" uses the test netns; "self" the plugin's own
		code  uint
	}{
		{name: "bad labels", conf: `{"cniVersion":"1.0.0","name":"m","runtimeConfig":{"labels":{"a b":"c"}}}`, code: types.ErrInvalidNetworkConfig},
		{name: "bad CNI_ARGS", conf: good, args: "NOPE", code: types.ErrInvalidEnvironmentVariables},
		{name: "unknown CNI_ARGS key", conf: good, args: "FOO=1", code: types.ErrInvalidEnvironmentVariables},
		{name: "netns missing", conf: good, netns: "/nonexistent/netns", code: types.ErrInvalidEnvironmentVariables},
		{name: "own netns", conf: good, netns: "self", code: types.ErrInvalidNetNS},
		{name: "ipam section", conf: `{"cniVersion":"1.0.0","name":"m","ipam":{"type":"host-local"}}`, code: types.ErrUnsupportedField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent := &fakeAgent{addResp: sampleAddResponse()}
			p, out, netns := newTestPlugin(t, agent)
			switch tt.netns {
			case "":
			case "self":
				netns = p.SelfNetns
			default:
				netns = tt.netns
			}
			err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: netns, IfName: "eth0", Args: tt.args, StdinData: []byte(tt.conf)})
			if got := cniCode(t, err); got != tt.code {
				t.Errorf("code = %d, want %d (%v)", got, tt.code, err)
			}
			if agent.calls() != 0 {
				t.Errorf("agent saw %d calls, want none", agent.calls())
			}
			if out.Len() != 0 {
				t.Errorf("stdout = %q, want nothing", out.String())
			}
		})
	}
}

// TestAddRollsBackUnusableAnswer: an ADD the plugin cannot report is
// undone in the agent.
func TestAddRollsBackUnusableAnswer(t *testing.T) {
	agent := &fakeAgent{} // answers without an address
	p, out, netns := newTestPlugin(t, agent)
	err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: netns, IfName: "eth0", StdinData: []byte(`{"cniVersion":"1.0.0","name":"m"}`)})
	if got := cniCode(t, err); got != types.ErrInternal {
		t.Errorf("code = %d, want 999", got)
	}
	want := []api.CNIDelRequest{{ContainerID: "c1", IfName: "eth0", Netns: netns}}
	if d := cmp.Diff(want, agent.dels); d != "" {
		t.Errorf("rollback DEL (-want +got):\n%s", d)
	}
	if out.Len() != 0 {
		t.Errorf("stdout = %q", out.String())
	}
}

func TestDel(t *testing.T) {
	unreachable := fmt.Errorf("%w at /x.sock: connect: no such file or directory", api.ErrAgentUnreachable)
	tests := []struct {
		name string
		conf string
		err  error
		code uint // 0: success
	}{
		{"ok", `{"cniVersion":"1.0.0","name":"m"}`, nil, 0},
		{"unknown attachment is success", `{"cniVersion":"1.0.0","name":"m"}`, &api.Error{Code: api.CodeNotFound, Message: "no such attachment"}, 0},
		{"invalid metadata does not block DEL", `{"cniVersion":"1.0.0","name":"m","mtu":3,"runtimeConfig":{"labels":{"-":"-"}}}`, nil, 0},
		{"agent unreachable is try again later", `{"cniVersion":"1.0.0","name":"m"}`, unreachable, types.ErrTryAgainLater},
		{"agent internal error", `{"cniVersion":"1.0.0","name":"m"}`, &api.Error{Code: api.CodeInternal, Message: "boom"}, types.ErrInternal},
		{"relative socket", `{"cniVersion":"1.0.0","name":"m","socketPath":"x"}`, nil, types.ErrInvalidNetworkConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent := &fakeAgent{err: tt.err}
			p, out, _ := newTestPlugin(t, agent)
			// The netns is gone: DEL passes the path on and does not look at it.
			err := p.Del(&skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/gone", IfName: "eth0", StdinData: []byte(tt.conf)})
			if tt.code == 0 {
				if err != nil {
					t.Fatalf("Del: %v", err)
				}
				if len(agent.dels) != 1 || agent.dels[0].Netns != "/var/run/netns/gone" {
					t.Errorf("agent dels = %+v", agent.dels)
				}
			} else if got := cniCode(t, err); got != tt.code {
				t.Errorf("code = %d, want %d (%v)", got, tt.code, err)
			}
			if out.Len() != 0 {
				t.Errorf("DEL printed %q", out.String())
			}
		})
	}
}

func TestCheck(t *testing.T) {
	prev040 := `"prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"lxc1"},{"name":"eth0","sandbox":"/ns"}],
	  "ips":[{"version":"4","interface":1,"address":"10.1.0.9/32","gateway":"10.1.0.1"}]}`
	prev100 := `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/ns"}],
	  "ips":[{"interface":0,"address":"10.1.0.7/32"}]}`
	tests := []struct {
		name     string
		conf     string
		agentErr error
		wantAddr netip.Prefix
		code     uint
	}{
		{"0.4.0 prevResult", `{"cniVersion":"0.4.0","name":"m",` + prev040 + `}`, nil, netip.MustParsePrefix("10.1.0.9/32"), 0},
		{"1.0.0 prevResult", `{"cniVersion":"1.0.0","name":"m",` + prev100 + `}`, nil, netip.MustParsePrefix("10.1.0.7/32"), 0},
		{"no prevResult", `{"cniVersion":"1.1.0","name":"m"}`, nil, netip.Prefix{}, 0},
		{"bad prevResult", `{"cniVersion":"1.0.0","name":"m","prevResult":{"ips":[{"address":"nonsense"}]}}`, nil, netip.Prefix{}, types.ErrDecodingFailure},
		{"unknown container", `{"cniVersion":"1.0.0","name":"m"}`, &api.Error{Code: api.CodeNotFound, Message: "no endpoint for c1/eth0"}, netip.Prefix{}, types.ErrUnknownContainer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent := &fakeAgent{err: tt.agentErr}
			p, _, netns := newTestPlugin(t, agent)
			err := p.Check(&skel.CmdArgs{ContainerID: "c1", Netns: netns, IfName: "eth0", StdinData: []byte(tt.conf)})
			if tt.code != 0 {
				if got := cniCode(t, err); got != tt.code {
					t.Errorf("code = %d, want %d (%v)", got, tt.code, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			want := []api.CNICheckRequest{{ContainerID: "c1", IfName: "eth0", Netns: netns, Address: tt.wantAddr}}
			if d := cmp.Diff(want, agent.checks, cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
				t.Errorf("check request (-want +got):\n%s", d)
			}
		})
	}
}

func TestGC(t *testing.T) {
	agent := &fakeAgent{}
	p, out, _ := newTestPlugin(t, agent)
	conf := `{"cniVersion":"1.1.0","name":"m","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"eth0"}]}`
	if err := p.GC(&skel.CmdArgs{StdinData: []byte(conf)}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	want := []api.CNIGCRequest{{Valid: []api.Attachment{{ContainerID: "c1", IfName: "eth0"}, {ContainerID: "c2", IfName: "eth0"}}}}
	if d := cmp.Diff(want, agent.gcs); d != "" {
		t.Errorf("GC request (-want +got):\n%s", d)
	}
	if out.Len() != 0 {
		t.Errorf("GC printed %q", out.String())
	}

	// No list: nothing is valid (libcni's reading); the agent gets an empty,
	// non-null list.
	agent.gcs = nil
	if err := p.GC(&skel.CmdArgs{StdinData: []byte(`{"cniVersion":"1.1.0","name":"m"}`)}); err != nil {
		t.Fatal(err)
	}
	if len(agent.gcs) != 1 || agent.gcs[0].Valid == nil || len(agent.gcs[0].Valid) != 0 {
		t.Errorf("GC request = %+v", agent.gcs)
	}

	agent.err = &api.Error{Code: api.CodeUnavailable, Message: "kvstore not ready"}
	if got := cniCode(t, p.GC(&skel.CmdArgs{StdinData: []byte(conf)})); got != types.ErrTryAgainLater {
		t.Errorf("code = %d, want 11", got)
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code uint
	}{
		{"ready", nil, 0},
		{"unreachable", fmt.Errorf("%w at /x.sock", api.ErrAgentUnreachable), types.ErrPluginNotAvailable},
		{"not ready", &api.Error{Code: api.CodeUnavailable, Message: "datapath loading"}, types.ErrPluginNotAvailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent := &fakeAgent{err: tt.err}
			p, _, _ := newTestPlugin(t, agent)
			err := p.Status(&skel.CmdArgs{StdinData: []byte(`{"cniVersion":"1.1.0","name":"m"}`)})
			if tt.code == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if got := cniCode(t, err); got != tt.code {
				t.Errorf("code = %d, want %d", got, tt.code)
			}
		})
	}
}

// TestErrorObject: the printed error carries the config's cniVersion.
func TestErrorObject(t *testing.T) {
	p, out, _ := newTestPlugin(t, &fakeAgent{})
	if _, e := p.loadConfig([]byte(`{"cniVersion":"1.0.0","name":"m","mtu":1}`), true); e == nil {
		t.Fatal("no error")
	} else if err := p.writeError(e); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got["cniVersion"] != "1.0.0" || got["code"] != float64(7) || !strings.HasPrefix(got["msg"].(string), "invalid network config: mtu: 1") {
		t.Errorf("error object = %v", got)
	}
}
