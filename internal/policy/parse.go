package policy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// FieldError is one problem with one field.
type FieldError struct {
	Path   string // e.g. spec.ingress[0].from[1].ipBlock.cidr
	Reason string
}

func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Reason
	}
	return e.Path + ": " + e.Reason
}

// ObjectError lists every problem found in one object.
type ObjectError struct {
	Object string // "networkpolicy default/x"
	Errors []FieldError
}

// Error prints one line per problem: "networkpolicy default/x: path: reason".
func (e *ObjectError) Error() string {
	lines := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		lines[i] = e.Object + ": " + fe.Error()
	}
	return strings.Join(lines, "\n")
}

type fieldErrors []FieldError

func (l *fieldErrors) add(path, format string, args ...any) {
	*l = append(*l, FieldError{Path: path, Reason: fmt.Sprintf(format, args...)})
}

// Parse reads Kubernetes-style manifests: YAML or JSON, several documents
// separated by "---", or a "kind: List" with items. Decoding is strict (an
// unknown field is an error naming its path), namespaced objects default to
// the "default" namespace, NetworkPolicy ports default to TCP, and every
// object is validated. On any error Parse returns no objects and an error
// that lists every problem found.
func Parse(data []byte) ([]Object, error) {
	docs := splitDocuments(data)
	var objs []Object
	var errs []error
	for i, doc := range docs {
		where := ""
		if len(docs) > 1 {
			where = fmt.Sprintf("document %d: ", i+1)
		}
		got, err := parseDocument(doc)
		if err != nil {
			errs = append(errs, prefixErr(where, err))
			continue
		}
		objs = append(objs, got...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return objs, nil
}

type prefixedError struct {
	prefix string
	err    error
}

func (e *prefixedError) Error() string {
	if e.prefix == "" {
		return e.err.Error()
	}
	lines := strings.Split(e.err.Error(), "\n")
	for i := range lines {
		lines[i] = e.prefix + lines[i]
	}
	return strings.Join(lines, "\n")
}

func (e *prefixedError) Unwrap() error { return e.err }

func prefixErr(prefix string, err error) error {
	if prefix == "" {
		return err
	}
	return &prefixedError{prefix: prefix, err: err}
}

// splitDocuments splits a YAML stream on "---" separator lines and drops
// documents that hold only whitespace and comments.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	flush := func() {
		if !blankYAML(cur.Bytes()) {
			docs = append(docs, append([]byte(nil), cur.Bytes()...))
		}
		cur.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, min(64*1024, len(data)+1)), len(data)+1)
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimRight(line, " \t\r")
		if t == "---" || strings.HasPrefix(t, "--- #") {
			flush()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

func blankYAML(b []byte) bool {
	for _, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if t != "" && !strings.HasPrefix(t, "#") {
			return false
		}
	}
	return true
}

func parseDocument(doc []byte) ([]Object, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("parse yaml: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("parse json: %w", err)
	}
	if v == nil {
		return nil, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("document is %s, want an object with apiVersion and kind", jsonKind(v))
	}
	if k, _ := m["kind"].(string); k == kindList {
		return parseList(m)
	}
	obj, err := decodeObject(m)
	if err != nil {
		return nil, err
	}
	return []Object{obj}, nil
}

func parseList(m map[string]any) ([]Object, error) {
	var fe fieldErrors
	for _, k := range sortedKeys(m) {
		switch k {
		case "apiVersion", "kind", "metadata":
		case "items":
		default:
			fe.add(k, "unknown field")
		}
	}
	if av, _ := m["apiVersion"].(string); av != APIVersionV1 {
		fe.add("apiVersion", "List needs apiVersion v1, got %q", av)
	}
	if len(fe) > 0 {
		return nil, &ObjectError{Object: "list", Errors: fe}
	}
	items, ok := m["items"].([]any)
	if !ok && m["items"] != nil {
		return nil, &ObjectError{Object: "list", Errors: []FieldError{{"items", "must be a list"}}}
	}
	var objs []Object
	var errs []error
	for i, it := range items {
		where := fmt.Sprintf("items[%d]: ", i)
		im, ok := it.(map[string]any)
		if !ok {
			errs = append(errs, fmt.Errorf("%sis %s, want an object", where, jsonKind(it)))
			continue
		}
		if k, _ := im["kind"].(string); k == kindList {
			errs = append(errs, fmt.Errorf("%snested List is not supported", where))
			continue
		}
		obj, err := decodeObject(im)
		if err != nil {
			errs = append(errs, prefixErr(where, err))
			continue
		}
		objs = append(objs, obj)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return objs, nil
}

// decodeObject strictly decodes one manifest, applies defaults and validates.
func decodeObject(m map[string]any) (Object, error) {
	var fe fieldErrors
	var obj Object
	obj.APIVersion, _ = m["apiVersion"].(string)
	obj.Kind, _ = m["kind"].(string)
	var meta ObjectMeta
	if mv, ok := m["metadata"]; ok {
		decodeValue(mv, reflect.ValueOf(&meta).Elem(), "metadata", &fe)
	}
	obj.Name, obj.Namespace = meta.Name, meta.Namespace
	obj.Labels, obj.Annotations = meta.Labels, meta.Annotations

	isSlice := obj.Kind == KindEndpointSlice
	for _, k := range sortedKeys(m) {
		switch {
		case k == "apiVersion" || k == "kind":
			if _, ok := m[k].(string); !ok {
				fe.add(k, "must be a string")
			}
		case k == "metadata":
		case k == "spec" && isSlice:
			fe.add(k, "unknown field (an EndpointSlice has addressType, endpoints and ports at the top level, not under spec)")
		case k == "spec":
		case isSlice && endpointSliceFields[k]:
		default:
			fe.add(k, "unknown field")
		}
	}
	spec, hasSpec := m["spec"]
	decodeSpec := func(target any) {
		if hasSpec {
			decodeValue(spec, reflect.ValueOf(target).Elem(), "spec", &fe)
		}
	}
	switch obj.Kind {
	case KindNamespace:
		if hasSpec {
			fe.add("spec", "unknown field (Namespace has no spec here)")
		}
	case KindNetworkPolicy:
		obj.NetworkPolicy = &NetworkPolicySpec{}
		decodeSpec(obj.NetworkPolicy)
		defaultNetworkPolicy(obj.NetworkPolicy)
	case KindMembranePolicy:
		obj.MembranePolicy = &MembranePolicySpec{}
		decodeSpec(obj.MembranePolicy)
	case KindService:
		obj.Service = &ServiceSpec{}
		decodeSpec(obj.Service)
		defaultService(obj.Service)
	case KindEndpointSlice:
		obj.EndpointSlice = &EndpointSliceSpec{}
		top := map[string]any{}
		for k := range endpointSliceFields {
			if v, ok := m[k]; ok {
				top[k] = v
			}
		}
		// The fields sit at the top level, so their paths have no prefix.
		decodeValue(top, reflect.ValueOf(obj.EndpointSlice).Elem(), "", &fe)
		defaultEndpointSlice(obj.EndpointSlice)
	}
	switch obj.Kind {
	case KindNetworkPolicy, KindMembranePolicy, KindService, KindEndpointSlice:
		if obj.Namespace == "" {
			obj.Namespace = DefaultNamespace
		}
	}
	if len(fe) > 0 {
		return Object{}, &ObjectError{Object: obj.Ref(), Errors: fe}
	}
	if err := Validate(&obj); err != nil {
		return Object{}, err
	}
	return obj, nil
}

// defaultNetworkPolicy fills in what the Kubernetes API server defaults:
// the protocol of a port is TCP.
func defaultNetworkPolicy(s *NetworkPolicySpec) {
	def := func(ports []NetworkPolicyPort) {
		for i := range ports {
			if ports[i].Protocol == nil {
				tcp := "TCP"
				ports[i].Protocol = &tcp
			}
		}
	}
	for i := range s.Ingress {
		def(s.Ingress[i].Ports)
	}
	for i := range s.Egress {
		def(s.Egress[i].Ports)
	}
}

var (
	intOrStringType = reflect.TypeOf(IntOrString{})
)

// decodeValue decodes a generic JSON value (from a json.Decoder with
// UseNumber) into rv, reporting unknown fields and type mismatches with
// their paths. JSON null leaves the target at its zero value (absent).
func decodeValue(v any, rv reflect.Value, path string, fe *fieldErrors) {
	if v == nil {
		return
	}
	t := rv.Type()
	if t == intOrStringType {
		switch x := v.(type) {
		case string:
			rv.Set(reflect.ValueOf(IntOrString{IsString: true, StrVal: x}))
		case json.Number:
			n, err := strconv.ParseInt(string(x), 10, 32)
			if err != nil {
				fe.add(path, "%s is not a valid port number", x)
				return
			}
			rv.Set(reflect.ValueOf(IntOrString{IntVal: int32(n)}))
		default:
			fe.add(path, "must be a port number or name, got %s", jsonKind(v))
		}
		return
	}
	switch t.Kind() {
	case reflect.Pointer:
		p := reflect.New(t.Elem())
		decodeValue(v, p.Elem(), path, fe)
		rv.Set(p)
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			fe.add(path, "must be an object, got %s", jsonKind(v))
			return
		}
		fields := jsonFields(t)
		for _, k := range sortedKeys(m) {
			idx, ok := fields[k]
			if !ok {
				fe.add(joinPath(path, k), "unknown field")
				continue
			}
			decodeValue(m[k], rv.Field(idx), joinPath(path, k), fe)
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			fe.add(path, "must be a list, got %s", jsonKind(v))
			return
		}
		s := reflect.MakeSlice(t, len(l), len(l))
		for i, e := range l {
			decodeValue(e, s.Index(i), fmt.Sprintf("%s[%d]", path, i), fe)
		}
		rv.Set(s)
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			fe.add(path, "must be an object, got %s", jsonKind(v))
			return
		}
		out := reflect.MakeMapWithSize(t, len(m))
		for _, k := range sortedKeys(m) {
			ev := reflect.New(t.Elem()).Elem()
			decodeValue(m[k], ev, joinPath(path, k), fe)
			out.SetMapIndex(reflect.ValueOf(k), ev)
		}
		rv.Set(out)
	case reflect.String:
		s, ok := v.(string)
		if !ok {
			fe.add(path, "must be a string, got %s", jsonKind(v))
			return
		}
		rv.SetString(s)
	case reflect.Bool:
		b, ok := v.(bool)
		if !ok {
			fe.add(path, "must be true or false, got %s", jsonKind(v))
			return
		}
		rv.SetBool(b)
	case reflect.Int32, reflect.Int, reflect.Int64:
		n, ok := v.(json.Number)
		if !ok {
			fe.add(path, "must be a number, got %s", jsonKind(v))
			return
		}
		i, err := strconv.ParseInt(string(n), 10, t.Bits())
		if err != nil {
			fe.add(path, "%s is not a valid integer", n)
			return
		}
		rv.SetInt(i)
	default:
		fe.add(path, "cannot decode into %s", t)
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func jsonFields(t reflect.Type) map[string]int {
	m := make(map[string]int, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = i
	}
	return m
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number, float64:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// manifest is the JSON form of an Object.
type manifest struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	Spec       any        `json:"spec,omitempty"`
}

// sliceManifest is the JSON form of an EndpointSlice: no spec, its fields
// at the top level as in Kubernetes.
type sliceManifest struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	*EndpointSliceSpec
}

// MarshalJSON writes the object as a Kubernetes manifest.
func (o Object) MarshalJSON() ([]byte, error) {
	meta := ObjectMeta{
		Name: o.Name, Namespace: o.Namespace,
		Labels: o.Labels, Annotations: o.Annotations,
	}
	if o.EndpointSlice != nil {
		return json.Marshal(sliceManifest{
			APIVersion: o.APIVersion, Kind: o.Kind, Metadata: meta,
			EndpointSliceSpec: o.EndpointSlice,
		})
	}
	m := manifest{APIVersion: o.APIVersion, Kind: o.Kind, Metadata: meta}
	switch {
	case o.NetworkPolicy != nil:
		m.Spec = o.NetworkPolicy
	case o.MembranePolicy != nil:
		m.Spec = o.MembranePolicy
	case o.Service != nil:
		m.Spec = o.Service
	}
	return json.Marshal(m)
}

// UnmarshalJSON reads one manifest with the same strict decoding,
// defaulting and validation as Parse.
func (o *Object) UnmarshalJSON(b []byte) error {
	// JSON straight to the strict decoder: the agent reads every stored
	// object this way on each change, and the YAML path costs ~20x more.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return fmt.Errorf("decode object: %w", err)
	}
	if m == nil {
		return errors.New("decode object: null, want an object with apiVersion and kind")
	}
	if k, _ := m["kind"].(string); k == kindList {
		return errors.New("decode object: a List, want one object")
	}
	obj, err := decodeObject(m)
	if err != nil {
		return err
	}
	*o = obj
	return nil
}
