package cni

import (
	"fmt"
	"strings"
)

// CNI_ARGS keys Membrane reads or knowingly ignores.
const (
	argIgnoreUnknown    = "IgnoreUnknown"
	argPodNamespace     = "K8S_POD_NAMESPACE"
	argPodName          = "K8S_POD_NAME"
	argPodInfraID       = "K8S_POD_INFRA_CONTAINER_ID" // ignored
	argPodUID           = "K8S_POD_UID"                // ignored
	argMembraneLabels   = "MEMBRANE_LABELS"
	defaultPodNamespace = "default"
	podNameFromIDLen    = 12
)

// ArgsError is a CNI_ARGS string that cannot be used. It maps to CNI error
// code 4 (invalid environment variables).
type ArgsError struct{ Msg string }

func (e *ArgsError) Error() string { return "CNI_ARGS: " + e.Msg }

// WorkloadArgs is what CNI_ARGS says about the workload.
type WorkloadArgs struct {
	Namespace string            // K8S_POD_NAMESPACE, empty if absent
	PodName   string            // K8S_POD_NAME, empty if absent
	Labels    map[string]string // MEMBRANE_LABELS, nil if absent
}

// ParseArgs parses CNI_ARGS ("K1=V1;K2=V2"). Each pair is split at its
// first '=', so values may contain '='. Keys other than the ones Membrane
// knows are an error unless IgnoreUnknown=1 (or true) is present, following
// the CNI convention; K8S_POD_INFRA_CONTAINER_ID and K8S_POD_UID are known
// and ignored.
func ParseArgs(s string) (WorkloadArgs, error) {
	var wa WorkloadArgs
	if s == "" {
		return wa, nil
	}
	var unknown []string
	ignoreUnknown := false
	for pair := range strings.SplitSeq(s, ";") {
		if pair == "" {
			continue
		}
		kv := strings.SplitN(pair, "=", 2)
		if len(kv) != 2 || kv[0] == "" {
			return WorkloadArgs{}, &ArgsError{Msg: fmt.Sprintf("%q is not KEY=VALUE", pair)}
		}
		key, val := kv[0], kv[1]
		switch key {
		case argIgnoreUnknown:
			switch strings.ToLower(val) {
			case "1", "true":
				ignoreUnknown = true
			case "0", "false", "":
			default:
				return WorkloadArgs{}, &ArgsError{Msg: fmt.Sprintf("%s=%q is not a boolean (1, 0, true, false)", key, val)}
			}
		case argPodNamespace:
			if msg := checkDNSLabel(val); msg != "" {
				return WorkloadArgs{}, &ArgsError{Msg: fmt.Sprintf("%s=%q: %s", key, val, msg)}
			}
			wa.Namespace = val
		case argPodName:
			if msg := checkDNSSubdomain(val); msg != "" {
				return WorkloadArgs{}, &ArgsError{Msg: fmt.Sprintf("%s=%q: %s", key, val, msg)}
			}
			wa.PodName = val
		case argMembraneLabels:
			labels, err := parseLabelList(val)
			if err != nil {
				return WorkloadArgs{}, &ArgsError{Msg: fmt.Sprintf("%s: %s", key, err.Error())}
			}
			wa.Labels = labels
		case argPodInfraID, argPodUID:
		default:
			unknown = append(unknown, key)
		}
	}
	if len(unknown) > 0 && !ignoreUnknown {
		return WorkloadArgs{}, &ArgsError{Msg: fmt.Sprintf("unknown keys %s (set IgnoreUnknown=1 to ignore them)", strings.Join(unknown, ", "))}
	}
	return wa, nil
}

// parseLabelList parses "k=v,k2=v2" and checks label syntax. An empty
// value ("k=") is a valid label with an empty value.
func parseLabelList(s string) (map[string]string, error) {
	labels := make(map[string]string)
	for item := range strings.SplitSeq(s, ",") {
		if item == "" {
			continue
		}
		kv := strings.SplitN(item, "=", 2)
		if len(kv) != 2 {
			return nil, fmt.Errorf("%q is not key=value", item)
		}
		k, v := kv[0], kv[1]
		if msg := checkLabelKey(k); msg != "" {
			return nil, fmt.Errorf("invalid label key: %s", msg)
		}
		if msg := checkLabelValue(v); msg != "" {
			return nil, fmt.Errorf("label %q: invalid value %q: %s", k, v, msg)
		}
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("label %q is given twice", k)
		}
		labels[k] = v
	}
	return labels, nil
}

// mergeLabels merges label sources; later sources win. It returns nil when
// every source is empty.
func mergeLabels(sources ...map[string]string) map[string]string {
	var out map[string]string
	for _, src := range sources {
		for k, v := range src {
			if out == nil {
				out = make(map[string]string)
			}
			out[k] = v
		}
	}
	return out
}

// podName returns the pod name from CNI_ARGS, or the first 12 characters
// of the container ID when the runtime gave none.
func podName(wa WorkloadArgs, containerID string) string {
	if wa.PodName != "" {
		return wa.PodName
	}
	if len(containerID) > podNameFromIDLen {
		return containerID[:podNameFromIDLen]
	}
	return containerID
}

// podNamespace returns the namespace from CNI_ARGS or "default".
func podNamespace(wa WorkloadArgs) string {
	if wa.Namespace != "" {
		return wa.Namespace
	}
	return defaultPodNamespace
}
