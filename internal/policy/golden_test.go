package policy

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

// goldenPolicies exercises every kind of entry: identities, CIDR
// identities, world, host, port ranges, named ports, denies, wildcard.
const goldenPolicies = `
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: client}}
    - namespaceSelector: {matchLabels: {team: a}}
    ports: [{port: http}, {port: 8000, endPort: 8010}]
  - from:
    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.7.0/24]}
    ports: [{port: 443}]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: pg}]
---
apiVersion: membrane.io/v1
kind: MembranePolicy
metadata: {name: client}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: ANY}]}]
  - toCIDRSet: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toEndpoints: [{}]
  egressDeny:
  - toCIDR: [10.0.2.0/24]
  - toPorts: [{ports: [{port: "25", protocol: TCP}]}]
`

func TestGoldenMapState(t *testing.T) {
	w := newWorld()
	in := w.input(t, goldenPolicies)
	got := Resolve(in).Format()
	path := filepath.Join("testdata", "mapstate.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("map state differs from %s (-want +got); rerun with -update if intended:\n%s", path, diff)
	}
}
