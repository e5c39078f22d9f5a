package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
)

func TestParseArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    string
		want    WorkloadArgs
		wantErr string // substring; "" means success
	}{
		{name: "empty", args: ""},
		{
			name: "kubelet style",
			args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d4b9c-x2x;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678",
			want: WorkloadArgs{Namespace: "shop", PodName: "web-7d4b9c-x2x"},
		},
		{
			name: "known ignored keys without IgnoreUnknown",
			args: "K8S_POD_NAMESPACE=ns;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u",
			want: WorkloadArgs{Namespace: "ns"},
		},
		{
			name: "labels with '=' in the pair value",
			args: "MEMBRANE_LABELS=app=web,tier=,example.com/team=a",
			want: WorkloadArgs{Labels: map[string]string{"app": "web", "tier": "", "example.com/team": "a"}},
		},
		{name: "empty segments skipped", args: ";K8S_POD_NAME=p;;", want: WorkloadArgs{PodName: "p"}},
		{name: "unknown key ignored", args: "IgnoreUnknown=true;FOO=bar", want: WorkloadArgs{}},
		{name: "unknown key refused", args: "FOO=bar;K8S_POD_NAME=p", wantErr: "unknown keys FOO (set IgnoreUnknown=1"},
		{name: "IgnoreUnknown=0 refuses", args: "IgnoreUnknown=0;FOO=bar", wantErr: "unknown keys FOO"},
		{name: "IgnoreUnknown bad", args: "IgnoreUnknown=maybe", wantErr: `IgnoreUnknown="maybe" is not a boolean`},
		{name: "no equals", args: "K8S_POD_NAME", wantErr: `"K8S_POD_NAME" is not KEY=VALUE`},
		{name: "empty key", args: "=v", wantErr: `"=v" is not KEY=VALUE`},
		{name: "bad namespace", args: "K8S_POD_NAMESPACE=Shop", wantErr: `K8S_POD_NAMESPACE="Shop"`},
		{name: "bad pod name", args: "K8S_POD_NAME=web_1", wantErr: `K8S_POD_NAME="web_1"`},
		{name: "bad label key", args: "MEMBRANE_LABELS=-app=web", wantErr: "MEMBRANE_LABELS: invalid label key"},
		{name: "bad label value", args: "MEMBRANE_LABELS=app=we b", wantErr: `label "app": invalid value "we b"`},
		{name: "label without value", args: "MEMBRANE_LABELS=app", wantErr: `"app" is not key=value`},
		{name: "label twice", args: "MEMBRANE_LABELS=app=a,app=b", wantErr: `label "app" is given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseArgs(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				var ae *ArgsError
				if !errors.As(err, &ae) {
					t.Fatalf("err %T is not *ArgsError", err)
				}
				if code := configErrorToCNI(err).Code; code != types.ErrInvalidEnvironmentVariables {
					t.Errorf("CNI code = %d, want 4", code)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseArgs: %v", err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestPodIdentityDefaults(t *testing.T) {
	tests := []struct {
		name   string
		wa     WorkloadArgs
		cid    string
		wantNS string
		wantPN string
	}{
		{"from args", WorkloadArgs{Namespace: "shop", PodName: "web"}, "0123456789abcdef", "shop", "web"},
		{"defaults", WorkloadArgs{}, "0123456789abcdef", "default", "0123456789ab"},
		{"short container id", WorkloadArgs{}, "abc", "default", "abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := podNamespace(tt.wa); got != tt.wantNS {
				t.Errorf("namespace = %q, want %q", got, tt.wantNS)
			}
			if got := podName(tt.wa, tt.cid); got != tt.wantPN {
				t.Errorf("pod name = %q, want %q", got, tt.wantPN)
			}
		})
	}
}

func TestMergeLabels(t *testing.T) {
	got := mergeLabels(
		map[string]string{"a": "args", "b": "args", "c": "args"},
		map[string]string{"b": "conf-args", "c": "conf-args"},
		map[string]string{"c": "runtime"},
	)
	want := map[string]string{"a": "args", "b": "conf-args", "c": "runtime"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if got := mergeLabels(nil, map[string]string{}, nil); got != nil {
		t.Errorf("empty merge = %v, want nil", got)
	}
}
