package policy

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// Label keys that Membrane adds to an endpoint's identity labels.
const (
	// LabelNamespace holds the endpoint's namespace.
	LabelNamespace = "io.kubernetes.pod.namespace"
	// LabelNamespaceLabelsPrefix prefixes each label of the endpoint's
	// namespace: io.membrane.namespace.labels.<key>=<value>.
	LabelNamespaceLabelsPrefix = "io.membrane.namespace.labels."
	// LabelMetadataName is the label every namespace carries with its own name.
	LabelMetadataName = "kubernetes.io/metadata.name"
)

// Label is one key=value pair.
type Label struct {
	Key   string
	Value string
}

// Labels is a set of labels sorted by key, with unique keys. The zero value is
// the empty set. Build it with NewLabels; treat it as immutable.
type Labels []Label

// NewLabels builds a sorted label set from a map.
func NewLabels(m map[string]string) Labels {
	if len(m) == 0 {
		return nil
	}
	l := make(Labels, 0, len(m))
	for k, v := range m {
		l = append(l, Label{Key: k, Value: v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].Key < l[j].Key })
	return l
}

// ParseLabels parses the canonical form "k1=v1,k2=v2" (as printed by String).
func ParseLabels(s string) (Labels, error) {
	if s == "" {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("parse labels: %q is not key=value", kv)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("parse labels: duplicate key %q", k)
		}
		m[k] = v
	}
	return NewLabels(m), nil
}

// Get returns the value of key and whether it is present.
func (l Labels) Get(key string) (string, bool) {
	i := sort.Search(len(l), func(i int) bool { return l[i].Key >= key })
	if i < len(l) && l[i].Key == key {
		return l[i].Value, true
	}
	return "", false
}

// Map returns the labels as a fresh map.
func (l Labels) Map() map[string]string {
	m := make(map[string]string, len(l))
	for _, kv := range l {
		m[kv.Key] = kv.Value
	}
	return m
}

// String is the canonical form "k1=v1,k2=v2". Label keys and values cannot
// contain ',' or '=', so the form is unambiguous.
func (l Labels) String() string {
	var b strings.Builder
	for i, kv := range l {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(kv.Key)
		b.WriteByte('=')
		b.WriteString(kv.Value)
	}
	return b.String()
}

// Key returns a comparable key for the set: equal sets give equal keys.
func (l Labels) Key() string { return l.String() }

// Equal reports whether both sets hold the same labels.
func (l Labels) Equal(o Labels) bool {
	if len(l) != len(o) {
		return false
	}
	for i := range l {
		if l[i] != o[i] {
			return false
		}
	}
	return true
}

// MarshalJSON renders the set as a JSON object.
func (l Labels) MarshalJSON() ([]byte, error) { return json.Marshal(l.Map()) }

// UnmarshalJSON reads a JSON object.
func (l *Labels) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*l = NewLabels(m)
	return nil
}

// EndpointIdentityLabels returns the labels an endpoint's security identity is
// derived from: the pod labels, io.kubernetes.pod.namespace=<ns>, and each
// namespace label as io.membrane.namespace.labels.<key>=<value>. The
// namespace's kubernetes.io/metadata.name=<ns> label is always included, as
// Kubernetes sets it on every namespace. Pod labels that would collide with
// these reserved keys are dropped: a pod cannot claim another namespace.
func EndpointIdentityLabels(ns string, podLabels, nsLabels map[string]string) Labels {
	m := make(map[string]string, len(podLabels)+len(nsLabels)+2)
	for k, v := range podLabels {
		if k == LabelNamespace || strings.HasPrefix(k, LabelNamespaceLabelsPrefix) {
			continue
		}
		m[k] = v
	}
	for k, v := range nsLabels {
		m[LabelNamespaceLabelsPrefix+k] = v
	}
	m[LabelNamespaceLabelsPrefix+LabelMetadataName] = ns
	m[LabelNamespace] = ns
	return NewLabels(m)
}
