package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/membrane-net/membrane/internal/api"
)

// MTU bounds accepted in the network config. 576 is the minimum IPv4
// datagram every host must accept; 65535 the largest a veth can carry.
const (
	minMTU = 576
	maxMTU = 65535
)

// NetConf is the network configuration the runtime passes on stdin. Keys
// that libcni and the runtimes own (cniVersion, name, type, capabilities,
// prevResult, cni.dev/valid-attachments) sit next to Membrane's own keys
// (socketPath, mtu). Unknown keys are ignored, as the spec asks.
type NetConf struct {
	CNIVersion   string          `json:"cniVersion"`
	Name         string          `json:"name"`
	Type         string          `json:"type"`
	Capabilities map[string]bool `json:"capabilities,omitempty"`

	// SocketPath is the agent's API socket; empty means api.DefaultSocketPath.
	SocketPath string `json:"socketPath,omitempty"`
	// MTU of the pod interface; 0 lets the agent choose.
	MTU int `json:"mtu,omitempty"`

	// IPAM is rejected when set: the agent allocates addresses itself.
	IPAM *types.IPAM `json:"ipam,omitempty"`

	// RuntimeConfig carries capability arguments injected by the runtime
	// (libcni copies them only for capabilities declared true).
	RuntimeConfig RuntimeConfig `json:"runtimeConfig"`
	// Args follows the CNI "args" convention: args.cni.labels.
	Args ConfArgs `json:"args"`

	// RawPrevResult is the previous plugin's result (CHECK, chained ADD).
	RawPrevResult map[string]any `json:"prevResult,omitempty"`
	// ValidAttachments is set by the runtime on GC only. libcni also sends
	// the list as "cni.dev/attachments", the key's name in an early 1.1
	// draft; LegacyAttachments reads it for runtimes that send only that.
	ValidAttachments  []types.GCAttachment `json:"cni.dev/valid-attachments,omitempty"`
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// GCAttachments returns the attachments the runtime still uses. Absent
// and empty lists both mean none, as libcni treats them.
func (c *NetConf) GCAttachments() []types.GCAttachment {
	if c.ValidAttachments != nil {
		return c.ValidAttachments
	}
	return c.LegacyAttachments
}

// RuntimeConfig holds the capability arguments Membrane understands.
type RuntimeConfig struct {
	Labels         map[string]string `json:"labels,omitempty"`
	ContainerPorts []ContainerPort   `json:"containerPorts,omitempty"`
}

// ContainerPort is one entry of runtimeConfig.containerPorts, as in a
// Kubernetes pod spec. The port is an int so that out-of-range input is
// reported as such instead of failing to decode.
type ContainerPort struct {
	Name          string `json:"name"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
}

// ConfArgs is the "args" object of the network config.
type ConfArgs struct {
	CNI struct {
		Labels map[string]string `json:"labels,omitempty"`
	} `json:"cni"`
}

// ConfigError is a network config that decodes but makes no sense. Field is
// the JSON path of the offending value (e.g.
// "runtimeConfig.containerPorts[1].containerPort").
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Msg }

// DecodeError is stdin that is not a JSON network config at all.
type DecodeError struct{ Err error }

func (e *DecodeError) Error() string { return "decode network config: " + e.Err.Error() }
func (e *DecodeError) Unwrap() error { return e.Err }

// ParseConfig decodes the network config without validating it beyond
// what decoding needs. A JSON syntax error is a *DecodeError; a value of
// the wrong JSON type is a *ConfigError naming the field.
func ParseConfig(stdin []byte) (*NetConf, error) {
	var conf NetConf
	dec := json.NewDecoder(bytes.NewReader(stdin))
	if err := dec.Decode(&conf); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := te.Field
			if field == "" {
				field = "(root)"
			}
			return nil, &ConfigError{Field: field, Msg: fmt.Sprintf("expected %s, got JSON %s", te.Type, te.Value)}
		}
		return nil, &DecodeError{Err: err}
	}
	return &conf, nil
}

// Socket returns the agent socket path with the default applied.
func (c *NetConf) Socket() string {
	if c.SocketPath == "" {
		return api.DefaultSocketPath
	}
	return c.SocketPath
}

// ValidateForCleanup checks only what DEL and GC need to reach the agent.
// Cleanup must not fail because of metadata (labels, ports, mtu) that was
// never applied: a runtime retries a failing DEL forever.
func (c *NetConf) ValidateForCleanup() error {
	if c.Name == "" {
		return &ConfigError{Field: "name", Msg: "must not be empty"}
	}
	if c.SocketPath != "" && !filepath.IsAbs(c.SocketPath) {
		return &ConfigError{Field: "socketPath", Msg: fmt.Sprintf("%q is not an absolute path", c.SocketPath)}
	}
	return nil
}

// Validate checks the whole config as ADD, CHECK and STATUS need it. It
// returns the first problem found, in a stable order.
func (c *NetConf) Validate() error {
	if err := c.ValidateForCleanup(); err != nil {
		return err
	}
	if c.MTU != 0 && (c.MTU < minMTU || c.MTU > maxMTU) {
		return &ConfigError{Field: "mtu", Msg: fmt.Sprintf("%d is out of range %d-%d (or 0 for the agent's default)", c.MTU, minMTU, maxMTU)}
	}
	if c.IPAM != nil && c.IPAM.Type != "" {
		return &UnsupportedFieldError{Field: "ipam", Msg: fmt.Sprintf("type %q is not supported: membrane-agent allocates pod addresses itself; remove the ipam section", c.IPAM.Type)}
	}
	if err := validateLabels("args.cni.labels", c.Args.CNI.Labels); err != nil {
		return err
	}
	if err := validateLabels("runtimeConfig.labels", c.RuntimeConfig.Labels); err != nil {
		return err
	}
	if _, err := convertPorts("runtimeConfig.containerPorts", c.RuntimeConfig.ContainerPorts); err != nil {
		return err
	}
	return nil
}

// UnsupportedFieldError is a config key Membrane recognises but refuses.
type UnsupportedFieldError struct {
	Field string
	Msg   string
}

func (e *UnsupportedFieldError) Error() string { return e.Field + ": " + e.Msg }

// validateLabels checks a label map in sorted key order so the reported
// error is deterministic.
func validateLabels(field string, labels map[string]string) error {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if msg := checkLabelKey(k); msg != "" {
			return &ConfigError{Field: fmt.Sprintf("%s[%q]", field, k), Msg: "invalid label key: " + msg}
		}
		if msg := checkLabelValue(labels[k]); msg != "" {
			return &ConfigError{Field: fmt.Sprintf("%s[%q]", field, k), Msg: fmt.Sprintf("invalid label value %q: %s", labels[k], msg)}
		}
	}
	return nil
}

// convertPorts validates container ports and converts them to the agent's
// type. Protocol defaults to TCP and is upper-cased.
func convertPorts(field string, in []ContainerPort) ([]api.NamedPort, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]api.NamedPort, 0, len(in))
	seen := make(map[string]int, len(in))
	for i, p := range in {
		at := fmt.Sprintf("%s[%d]", field, i)
		if p.Name != "" {
			if msg := checkPortName(p.Name); msg != "" {
				return nil, &ConfigError{Field: at + ".name", Msg: fmt.Sprintf("%q %s", p.Name, msg)}
			}
			if j, dup := seen[p.Name]; dup {
				return nil, &ConfigError{Field: at + ".name", Msg: fmt.Sprintf("%q is already used by %s[%d]", p.Name, field, j)}
			}
			seen[p.Name] = i
		}
		if p.ContainerPort < 1 || p.ContainerPort > 65535 {
			return nil, &ConfigError{Field: at + ".containerPort", Msg: fmt.Sprintf("%d is out of range 1-65535", p.ContainerPort)}
		}
		proto := strings.ToUpper(p.Protocol)
		switch proto {
		case "":
			proto = "TCP"
		case "TCP", "UDP", "SCTP":
		default:
			return nil, &ConfigError{Field: at + ".protocol", Msg: fmt.Sprintf("%q is not one of TCP, UDP, SCTP", p.Protocol)}
		}
		out = append(out, api.NamedPort{Name: p.Name, Port: uint16(p.ContainerPort), Protocol: proto})
	}
	return out, nil
}
