package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/api"
)

// TestBadPoliciesChangeNothing sends invalid manifests to a real agent: each
// is refused with the field path and reason, and the stored resources stay
// exactly as they were (a valid document next to an invalid one is not
// stored either).
func TestBadPoliciesChangeNothing(t *testing.T) {
	l := newLab(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := api.NewClient(node(t, l).Socket)
	good := `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: keep, namespace: default}
spec:
  podSelector: {}
  ingress: [{}]
`
	if _, err := c.Apply(ctx, api.ApplyRequest{Manifest: good, Wait: true}); err != nil {
		t.Fatal(err)
	}
	before, err := c.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	statusBefore, _ := c.Status(ctx)

	for _, tc := range []struct {
		name, manifest, want string
	}{
		{"unknown field", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x}
spec:
  podSelector: {}
  ingress: [{fromm: []}]
`, "spec.ingress[0].fromm"},
		{"except outside cidr", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.2.0.0/24]}}]}]
`, "except[0]"},
		{"endPort below port", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 90, endPort: 80}]}]
`, "endPort"},
		{"bad protocol", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, protocol: ICMP}]}]
`, "protocol"},
		{"unknown entity", `apiVersion: membrane.io/v1
kind: MembranePolicy
metadata: {name: x}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [everyone]}]
`, "fromEntities[0]"},
		{"bad selector operator", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: x}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Like, values: [a]}]}
`, "operator"},
		{"unknown kind", `apiVersion: v1
kind: Pod
metadata: {name: x}
`, "Pod"},
		{"malformed yaml", "kind: [", ""},
		{"valid next to invalid", good + "---\n" + `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: Bad_Name}
spec: {podSelector: {}}
`, "metadata.name"},
		{"duplicate object", good + "---\n" + good, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Apply(ctx, api.ApplyRequest{Manifest: tc.manifest, Wait: true})
			var e *api.Error
			if !errors.As(err, &e) || e.Code != api.CodeInvalid {
				t.Fatalf("apply: %v, want an invalid-input error", err)
			}
			if !strings.Contains(e.Message, tc.want) {
				t.Errorf("error %q does not name %q", e.Message, tc.want)
			}
			after, err := c.Resources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before) || string(after[0].Manifest) != string(before[0].Manifest) {
				t.Errorf("stored resources changed: before %d, after %d", len(before), len(after))
			}
		})
	}
	st, _ := c.Status(ctx)
	if st.Policy.RealizedRevision != statusBefore.Policy.RealizedRevision {
		t.Errorf("policy revision moved from %d to %d although nothing was stored", statusBefore.Policy.RealizedRevision, st.Policy.RealizedRevision)
	}
}
