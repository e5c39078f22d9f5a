package policy

import (
	"sort"
	"strings"
)

// selector is a compiled LabelSelector: requirements ANDed, sorted by key,
// operator and values so that equal selectors render equally (String is the
// cache key used during resolution).
type selector struct {
	reqs []requirement
}

type requirement struct {
	key    string
	op     string
	values []string // sorted, deduplicated
}

// compileSelector compiles a validated selector. A nil selector compiles to
// the empty selector, which matches everything.
func compileSelector(ls *LabelSelector) selector {
	if ls == nil {
		return selector{}
	}
	s := selector{reqs: make([]requirement, 0, len(ls.MatchLabels)+len(ls.MatchExpressions))}
	for k, v := range ls.MatchLabels {
		s.reqs = append(s.reqs, requirement{key: k, op: OpIn, values: []string{v}})
	}
	for _, e := range ls.MatchExpressions {
		vals := append([]string(nil), e.Values...)
		sort.Strings(vals)
		vals = dedupStrings(vals)
		s.reqs = append(s.reqs, requirement{key: e.Key, op: e.Operator, values: vals})
	}
	s.sort()
	return s
}

func (s *selector) sort() {
	sort.Slice(s.reqs, func(i, j int) bool {
		a, b := s.reqs[i], s.reqs[j]
		if a.key != b.key {
			return a.key < b.key
		}
		if a.op != b.op {
			return a.op < b.op
		}
		return strings.Join(a.values, ",") < strings.Join(b.values, ",")
	})
}

// with returns a copy of s with extra requirements.
func (s selector) with(reqs ...requirement) selector {
	out := selector{reqs: make([]requirement, 0, len(s.reqs)+len(reqs))}
	out.reqs = append(out.reqs, s.reqs...)
	out.reqs = append(out.reqs, reqs...)
	out.sort()
	return out
}

// prefixed returns s with every key prefixed (namespace selectors are
// evaluated against io.membrane.namespace.labels.<key> identity labels).
func (s selector) prefixed(prefix string) selector {
	out := selector{reqs: make([]requirement, len(s.reqs))}
	for i, r := range s.reqs {
		r.key = prefix + r.key
		out.reqs[i] = r
	}
	return out
}

// constrains reports whether any requirement is on key.
func (s selector) constrains(key string) bool {
	for _, r := range s.reqs {
		if r.key == key {
			return true
		}
	}
	return false
}

func (s selector) matches(get func(string) (string, bool)) bool {
	for _, r := range s.reqs {
		v, ok := get(r.key)
		switch r.op {
		case OpIn:
			if !ok || !containsSorted(r.values, v) {
				return false
			}
		case OpNotIn:
			if ok && containsSorted(r.values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpDoesNotExist:
			if ok {
				return false
			}
		default:
			return false // unknown operators select nothing
		}
	}
	return true
}

func (s selector) matchesLabels(l Labels) bool { return s.matches(l.Get) }

func (s selector) matchesMap(m map[string]string) bool {
	return s.matches(func(k string) (string, bool) { v, ok := m[k]; return v, ok })
}

// String renders the selector in Kubernetes' string form:
// "app=web,env in (a,b),env notin (c),x,!y". The empty selector is "{}".
func (s selector) String() string {
	if len(s.reqs) == 0 {
		return "{}"
	}
	var b strings.Builder
	for i, r := range s.reqs {
		if i > 0 {
			b.WriteByte(',')
		}
		switch {
		case r.op == OpIn && len(r.values) == 1:
			b.WriteString(r.key + "=" + r.values[0])
		case r.op == OpIn:
			b.WriteString(r.key + " in (" + strings.Join(r.values, ",") + ")")
		case r.op == OpNotIn:
			b.WriteString(r.key + " notin (" + strings.Join(r.values, ",") + ")")
		case r.op == OpExists:
			b.WriteString(r.key)
		case r.op == OpDoesNotExist:
			b.WriteString("!" + r.key)
		default:
			b.WriteString(r.key + " " + r.op + " (" + strings.Join(r.values, ",") + ")")
		}
	}
	return b.String()
}

// Matches reports whether the selector selects a label set. It assumes the
// selector is valid (see Validate); a nil selector matches everything.
func (ls *LabelSelector) Matches(labels map[string]string) bool {
	return compileSelector(ls).matchesMap(labels)
}

// String renders the selector in Kubernetes' string form.
func (ls *LabelSelector) String() string { return compileSelector(ls).String() }

func containsSorted(sorted []string, v string) bool {
	if len(sorted) < 8 {
		for _, s := range sorted {
			if s == v {
				return true
			}
		}
		return false
	}
	i := sort.SearchStrings(sorted, v)
	return i < len(sorted) && sorted[i] == v
}

func dedupStrings(sorted []string) []string {
	out := sorted[:0]
	for i, s := range sorted {
		if i == 0 || s != sorted[i-1] {
			out = append(out, s)
		}
	}
	return out
}
