package policy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSelectorTruthTable(t *testing.T) {
	labels := map[string]string{"app": "web", "tier": "front", "env": ""}
	req := func(k, op string, v ...string) LabelSelectorRequirement {
		return LabelSelectorRequirement{Key: k, Operator: op, Values: v}
	}
	tests := []struct {
		name string
		sel  *LabelSelector
		want bool
	}{
		{"nil selects all", nil, true},
		{"empty selects all", &LabelSelector{}, true},
		{"matchLabels hit", &LabelSelector{MatchLabels: map[string]string{"app": "web"}}, true},
		{"matchLabels miss value", &LabelSelector{MatchLabels: map[string]string{"app": "db"}}, false},
		{"matchLabels missing key", &LabelSelector{MatchLabels: map[string]string{"x": "y"}}, false},
		{"matchLabels all must hold", &LabelSelector{MatchLabels: map[string]string{"app": "web", "tier": "back"}}, false},
		{"matchLabels empty value", &LabelSelector{MatchLabels: map[string]string{"env": ""}}, true},
		{"In hit", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("app", OpIn, "db", "web")}}, true},
		{"In miss", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("app", OpIn, "db", "cache")}}, false},
		{"In on missing key", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("x", OpIn, "a")}}, false},
		{"NotIn hit", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("app", OpNotIn, "web")}}, false},
		{"NotIn miss", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("app", OpNotIn, "db")}}, true},
		{"NotIn on missing key matches", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("x", OpNotIn, "a")}}, true},
		{"Exists", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("tier", OpExists)}}, true},
		{"Exists empty value", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("env", OpExists)}}, true},
		{"Exists missing", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("x", OpExists)}}, false},
		{"DoesNotExist", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("x", OpDoesNotExist)}}, true},
		{"DoesNotExist present", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{req("app", OpDoesNotExist)}}, false},
		{"labels AND expressions", &LabelSelector{
			MatchLabels:      map[string]string{"app": "web"},
			MatchExpressions: []LabelSelectorRequirement{req("tier", OpNotIn, "front")}}, false},
		{"many In values (binary search)", &LabelSelector{MatchExpressions: []LabelSelectorRequirement{
			req("app", OpIn, "a", "b", "c", "d", "e", "f", "g", "h", "web", "z")}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.sel.Matches(labels); got != tt.want {
				t.Errorf("Matches = %v, want %v", got, tt.want)
			}
			// The same selector on a sorted Labels set agrees.
			if got := compileSelector(tt.sel).matchesLabels(NewLabels(labels)); got != tt.want {
				t.Errorf("matchesLabels = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSelectorString(t *testing.T) {
	sel := &LabelSelector{
		MatchLabels: map[string]string{"app": "web"},
		MatchExpressions: []LabelSelectorRequirement{
			{Key: "env", Operator: OpIn, Values: []string{"prod", "dev", "prod"}},
			{Key: "x", Operator: OpDoesNotExist},
			{Key: "y", Operator: OpExists},
			{Key: "env", Operator: OpNotIn, Values: []string{"qa"}},
		},
	}
	want := "app=web,env in (dev,prod),env notin (qa),!x,y"
	if got := sel.String(); got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if got := (&LabelSelector{}).String(); got != "{}" {
		t.Errorf("empty String = %q", got)
	}
}

func TestLabels(t *testing.T) {
	l := NewLabels(map[string]string{"b": "2", "a": "1", "c": ""})
	if got, want := l.String(), "a=1,b=2,c="; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	back, err := ParseLabels(l.String())
	if err != nil || !back.Equal(l) || back.Key() != l.Key() {
		t.Errorf("ParseLabels round trip = %v, %v", back, err)
	}
	if v, ok := l.Get("b"); !ok || v != "2" {
		t.Errorf("Get(b) = %q, %v", v, ok)
	}
	if _, ok := l.Get("zz"); ok {
		t.Error("Get(zz) found")
	}

	got := EndpointIdentityLabels("prod",
		map[string]string{"app": "web", LabelNamespace: "kube-system", LabelNamespaceLabelsPrefix + "team": "evil"},
		map[string]string{"team": "a"})
	want := "app=web,io.kubernetes.pod.namespace=prod," +
		"io.membrane.namespace.labels.kubernetes.io/metadata.name=prod,io.membrane.namespace.labels.team=a"
	if got.String() != want {
		t.Errorf("EndpointIdentityLabels:\n%s", cmp.Diff(want, got.String()))
	}
}
