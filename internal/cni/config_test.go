package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
)

const validConf = `{
  "cniVersion": "1.0.0", "name": "membrane", "type": "membrane-cni",
  "socketPath": "/run/membrane/membrane.sock", "mtu": 1450,
  "capabilities": {"labels": true, "containerPorts": true},
  "runtimeConfig": {
    "labels": {"app": "web", "example.com/tier": "front", "empty": ""},
    "containerPorts": [
      {"name": "http", "containerPort": 80, "protocol": "TCP"},
      {"name": "dns", "containerPort": 53, "protocol": "udp"},
      {"containerPort": 9090}
    ]
  },
  "args": {"cni": {"labels": {"team": "a"}}}
}`

func TestParseConfigValid(t *testing.T) {
	conf, err := ParseConfig([]byte(validConf))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if err := conf.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if conf.Socket() != "/run/membrane/membrane.sock" || conf.MTU != 1450 {
		t.Errorf("socket %q mtu %d", conf.Socket(), conf.MTU)
	}
	ports, err := convertPorts("runtimeConfig.containerPorts", conf.RuntimeConfig.ContainerPorts)
	if err != nil {
		t.Fatal(err)
	}
	want := []api.NamedPort{
		{Name: "http", Port: 80, Protocol: "TCP"},
		{Name: "dns", Port: 53, Protocol: "UDP"},
		{Port: 9090, Protocol: "TCP"},
	}
	if d := cmp.Diff(want, ports); d != "" {
		t.Errorf("ports (-want +got):\n%s", d)
	}

	def, err := ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"m","type":"membrane-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if def.Socket() != api.DefaultSocketPath {
		t.Errorf("default socket = %q", def.Socket())
	}
}

// TestConfigErrors checks the CNI code and the message (field path and
// bad value) for each way a config can be wrong.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		conf string
		code uint
		msg  string // substring of the CNI error message
	}{
		{"malformed JSON", `{"cniVersion":"1.0.0","name":`, types.ErrDecodingFailure, "decode network config"},
		{"not an object", `[1,2]`, types.ErrInvalidNetworkConfig, "(root)"},
		{"mtu wrong type", `{"name":"m","mtu":"big"}`, types.ErrInvalidNetworkConfig, "mtu: expected int, got JSON string"},
		{"missing name", `{"cniVersion":"1.0.0","type":"membrane-cni"}`, types.ErrInvalidNetworkConfig, "name: must not be empty"},
		{"relative socketPath", `{"name":"m","socketPath":"run/m.sock"}`, types.ErrInvalidNetworkConfig, `socketPath: "run/m.sock" is not an absolute path`},
		{"mtu too small", `{"name":"m","mtu":575}`, types.ErrInvalidNetworkConfig, "mtu: 575 is out of range 576-65535"},
		{"mtu too big", `{"name":"m","mtu":65536}`, types.ErrInvalidNetworkConfig, "mtu: 65536 is out of range"},
		{"mtu negative", `{"name":"m","mtu":-1}`, types.ErrInvalidNetworkConfig, "mtu: -1"},
		{"ipam section", `{"name":"m","ipam":{"type":"host-local"}}`, types.ErrUnsupportedField, `ipam: type "host-local" is not supported`},
		{"label key starts with dash", `{"name":"m","runtimeConfig":{"labels":{"-app":"x"}}}`, types.ErrInvalidNetworkConfig, `runtimeConfig.labels["-app"]: invalid label key`},
		{"label key with space", `{"name":"m","runtimeConfig":{"labels":{"my app":"x"}}}`, types.ErrInvalidNetworkConfig, `character ' ' is not allowed`},
		{"label key prefix uppercase", `{"name":"m","runtimeConfig":{"labels":{"Example.com/app":"x"}}}`, types.ErrInvalidNetworkConfig, `prefix "Example.com"`},
		{"label key two slashes", `{"name":"m","runtimeConfig":{"labels":{"a/b/c":"x"}}}`, types.ErrInvalidNetworkConfig, `more than one '/'`},
		{"label key empty name", `{"name":"m","runtimeConfig":{"labels":{"example.com/":"x"}}}`, types.ErrInvalidNetworkConfig, `name "" must not be empty`},
		{"label key too long", `{"name":"m","runtimeConfig":{"labels":{"` + strings.Repeat("a", 64) + `":"x"}}}`, types.ErrInvalidNetworkConfig, "64 characters long, the limit is 63"},
		{"label value too long", `{"name":"m","runtimeConfig":{"labels":{"app":"` + strings.Repeat("v", 64) + `"}}}`, types.ErrInvalidNetworkConfig, "invalid label value"},
		{"label value bad char", `{"name":"m","args":{"cni":{"labels":{"app":"a=b"}}}}`, types.ErrInvalidNetworkConfig, `args.cni.labels["app"]: invalid label value "a=b"`},
		{"label value ends with dot", `{"name":"m","runtimeConfig":{"labels":{"app":"web."}}}`, types.ErrInvalidNetworkConfig, "must begin and end with an alphanumeric"},
		{"port out of range", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"a","containerPort":80},{"name":"b","containerPort":70000}]}}`,
			types.ErrInvalidNetworkConfig, "runtimeConfig.containerPorts[1].containerPort: 70000 is out of range 1-65535"},
		{"port zero", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"a"}]}}`, types.ErrInvalidNetworkConfig, "containerPorts[0].containerPort: 0 is out of range"},
		{"duplicate port names", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"http","containerPort":80},{"name":"http","containerPort":8080}]}}`,
			types.ErrInvalidNetworkConfig, `runtimeConfig.containerPorts[1].name: "http" is already used by runtimeConfig.containerPorts[0]`},
		{"bad protocol", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"p","containerPort":1,"protocol":"ICMP"}]}}`,
			types.ErrInvalidNetworkConfig, `containerPorts[0].protocol: "ICMP" is not one of TCP, UDP, SCTP`},
		{"port name uppercase", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"HTTP","containerPort":80}]}}`, types.ErrInvalidNetworkConfig, `containerPorts[0].name: "HTTP" has character 'H'`},
		{"port name too long", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"abcdefghijklmnop","containerPort":80}]}}`, types.ErrInvalidNetworkConfig, "16 characters long, the limit is 15"},
		{"port name digits only", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"8080","containerPort":80}]}}`, types.ErrInvalidNetworkConfig, "at least one letter"},
		{"port name double dash", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"a--b","containerPort":80}]}}`, types.ErrInvalidNetworkConfig, `"--"`},
		{"port wrong type", `{"name":"m","runtimeConfig":{"containerPorts":[{"name":"a","containerPort":"80"}]}}`, types.ErrInvalidNetworkConfig, "runtimeConfig.containerPorts.containerPort: expected int"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := ParseConfig([]byte(tt.conf))
			if err == nil {
				err = conf.Validate()
			}
			if err == nil {
				t.Fatal("no error")
			}
			e := configErrorToCNI(err)
			if e.Code != tt.code {
				t.Errorf("code = %d, want %d (%s)", e.Code, tt.code, e.Msg)
			}
			if !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("msg = %q, want it to contain %q", e.Msg, tt.msg)
			}
		})
	}
}

// TestValidateForCleanup: DEL and GC must not fail on metadata ADD would
// refuse, but still need a name and a usable socket path.
func TestValidateForCleanup(t *testing.T) {
	tests := []struct {
		name    string
		conf    string
		wantErr bool
	}{
		{"bad labels and ports ignored", `{"name":"m","mtu":1,"runtimeConfig":{"labels":{"-x":"y"},"containerPorts":[{"containerPort":0}]}}`, false},
		{"ipam ignored", `{"name":"m","ipam":{"type":"host-local"}}`, false},
		{"relative socket refused", `{"name":"m","socketPath":"x.sock"}`, true},
		{"no name refused", `{"socketPath":"/x.sock"}`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := ParseConfig([]byte(tt.conf))
			if err != nil {
				t.Fatal(err)
			}
			err = conf.ValidateForCleanup()
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			var ce *ConfigError
			if err != nil && !errors.As(err, &ce) {
				t.Errorf("err %T is not a *ConfigError", err)
			}
		})
	}
}

func TestLabelSyntax(t *testing.T) {
	keys := []struct {
		key string
		ok  bool
	}{
		{"app", true},
		{"a", true},
		{"app.kubernetes.io/name", true},
		{"example.com/A_b-c.d", true},
		{"k8s.io/" + strings.Repeat("n", 63), true},
		{strings.Repeat("n", 64), false},
		{"", false},
		{"_app", false},
		{"app_", false},
		{"ex_ample.com/app", false},
		{".example.com/app", false},
		{"/app", false},
		{"app/", false},
		{"é", false},
		{strings.Repeat("a", 250) + ".com/app", false}, // prefix over 253
	}
	for _, tt := range keys {
		t.Run("key "+tt.key, func(t *testing.T) {
			msg := checkLabelKey(tt.key)
			if (msg == "") != tt.ok {
				t.Errorf("checkLabelKey(%q) = %q, want ok=%v", tt.key, msg, tt.ok)
			}
		})
	}
	values := []struct {
		val string
		ok  bool
	}{
		{"", true},
		{"web", true},
		{"Web-1.0_rc", true},
		{strings.Repeat("v", 63), true},
		{strings.Repeat("v", 64), false},
		{"-web", false},
		{"a b", false},
		{"a/b", false},
	}
	for _, tt := range values {
		t.Run("value "+tt.val, func(t *testing.T) {
			msg := checkLabelValue(tt.val)
			if (msg == "") != tt.ok {
				t.Errorf("checkLabelValue(%q) = %q, want ok=%v", tt.val, msg, tt.ok)
			}
		})
	}
}

func TestGCAttachments(t *testing.T) {
	tests := []struct {
		name string
		conf string
		want []types.GCAttachment
	}{
		{"valid-attachments", `{"name":"m","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}`, []types.GCAttachment{{ContainerID: "c1", IfName: "eth0"}}},
		{"legacy key only", `{"name":"m","cni.dev/attachments":[{"containerID":"c2","ifname":"net1"}]}`, []types.GCAttachment{{ContainerID: "c2", IfName: "net1"}}},
		{"both keys, valid-attachments wins", `{"name":"m","cni.dev/valid-attachments":[],"cni.dev/attachments":[{"containerID":"c2","ifname":"net1"}]}`, []types.GCAttachment{}},
		{"absent", `{"name":"m"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := ParseConfig([]byte(tt.conf))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, conf.GCAttachments()); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}
