package policy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const npHeader = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n"
const mpHeader = "apiVersion: membrane.io/v1\nkind: MembranePolicy\nmetadata: {name: m, namespace: prod}\n"

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  string // the whole error text
	}{
		{"unknown top-level field", npHeader + "spec: {podSelector: {}}\nstatus: {}\n",
			"networkpolicy default/x: status: unknown field"},
		{"unknown nested field", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - fromm: []\n",
			"networkpolicy default/x: spec.ingress[0].fromm: unknown field"},
		{"wrong type", npHeader + "spec:\n  podSelector: {}\n  ingress: {from: []}\n",
			"networkpolicy default/x: spec.ingress: must be a list, got an object"},
		{"except outside cidr", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 10.1.0.0/16, except: [10.2.0.0/16]}\n",
			"networkpolicy default/x: spec.ingress[0].from[1].ipBlock.except[0]: 10.2.0.0/16 is not inside cidr 10.1.0.0/16"},
		{"bad cidr", npHeader + "spec:\n  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.1.0.0/33}\n",
			`networkpolicy default/x: spec.egress[0].to[0].ipBlock.cidr: "10.1.0.0/33" is not a valid CIDR`},
		{"host bits", npHeader + "spec:\n  podSelector: {}\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.1.2.3/16}\n",
			"networkpolicy default/x: spec.egress[0].to[0].ipBlock.cidr: 10.1.2.3/16 has host bits set (did you mean 10.1.0.0/16?)"},
		{"port out of range", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 70000}]\n",
			"networkpolicy default/x: spec.ingress[0].ports[0].port: 70000 is not a port number (1-65535)"},
		{"endPort below port", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 8080, endPort: 80}]\n",
			"networkpolicy default/x: spec.ingress[0].ports[0].endPort: 80 is less than port 8080"},
		{"endPort with named port", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: http, endPort: 80}]\n",
			`networkpolicy default/x: spec.ingress[0].ports[0].endPort: requires a numeric port, not the named port "http"`},
		{"bad protocol", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{protocol: ICMP}]\n",
			`networkpolicy default/x: spec.ingress[0].ports[0].protocol: unsupported protocol "ICMP" (want TCP, UDP or SCTP)`},
		{"empty peer", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - from: [{}]\n",
			"networkpolicy default/x: spec.ingress[0].from[0]: must specify a peer (podSelector, namespaceSelector or ipBlock)"},
		{"ipBlock with selector", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}, ipBlock: {cidr: 10.0.0.0/8}}]\n",
			"networkpolicy default/x: spec.ingress[0].from[0]: ipBlock may not be combined with podSelector or namespaceSelector"},
		{"bad operator", npHeader + "spec:\n  podSelector:\n    matchExpressions: [{key: app, operator: Equals, values: [a]}]\n",
			`networkpolicy default/x: spec.podSelector.matchExpressions[0].operator: unknown operator "Equals" (want In, NotIn, Exists or DoesNotExist)`},
		{"In without values", npHeader + "spec:\n  podSelector:\n    matchExpressions: [{key: app, operator: In}]\n",
			"networkpolicy default/x: spec.podSelector.matchExpressions[0].values: must be non-empty for operator In"},
		{"bad label value", npHeader + "spec:\n  podSelector:\n    matchLabels: {app: -web}\n",
			`networkpolicy default/x: spec.podSelector.matchLabels.app: value "-web" must consist of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric`},
		{"missing podSelector", npHeader + "spec: {policyTypes: [Ingress]}\n",
			"networkpolicy default/x: spec.podSelector: required (use {} to select every pod of the namespace)"},
		{"bad policy type", npHeader + "spec: {podSelector: {}, policyTypes: [Inbound]}\n",
			`networkpolicy default/x: spec.policyTypes[0]: unknown policy type "Inbound" (want Ingress or Egress)`},
		{"bad name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Web_Policy}\nspec: {podSelector: {}}\n",
			`networkpolicy default/Web_Policy: metadata.name: "Web_Policy" is not a DNS-1123 subdomain (lowercase alphanumerics, '-' and '.', starting and ending with an alphanumeric)`},
		{"wrong apiVersion", "apiVersion: v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {}}\n",
			`networkpolicy default/x: apiVersion: NetworkPolicy needs apiVersion networking.k8s.io/v1, got "v1"`},
		{"unknown kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n",
			`pod x: kind: unknown kind "Pod" (want Namespace, NetworkPolicy, MembranePolicy, Service or EndpointSlice)`},
		{"namespace with namespace", "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, namespace: default}\n",
			"namespace default/prod: metadata.namespace: Namespace is cluster-scoped and takes no namespace"},
		{"unknown entity", mpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [internet]\n",
			`membranepolicy prod/m: spec.ingress[0].fromEntities[0]: unknown entity "internet" (want one of world, host, cluster, remote-node, health, init, unmanaged, all)`},
		{"mp endPort with name", mpHeader + "spec:\n  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: http, endPort: 90}]}]\n",
			"membranepolicy prod/m: spec.egress[0].toPorts[0].ports[0].endPort: requires a numeric port (1-65535)"},
		{"mp bad protocol", mpHeader + "spec:\n  endpointSelector: {}\n  egressDeny:\n  - toPorts: [{ports: [{port: \"53\", protocol: icmp}]}]\n",
			`membranepolicy prod/m: spec.egressDeny[0].toPorts[0].ports[0].protocol: unsupported protocol "icmp" (want TCP, UDP, SCTP or ANY)`},
		{"mp except outside", mpHeader + "spec:\n  endpointSelector: {}\n  ingressDeny:\n  - fromCIDRSet: [{cidr: 192.168.0.0/16, except: [192.168.0.0/16]}]\n",
			"membranepolicy prod/m: spec.ingressDeny[0].fromCIDRSet[0].except[0]: 192.168.0.0/16 is not inside cidr 192.168.0.0/16"},
		{"mp port number type", mpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: 80}]}]\n",
			"membranepolicy prod/m: spec.ingress[0].toPorts[0].ports[0].port: must be a string, got a number"},
		{"mp missing endpointSelector", mpHeader + "spec:\n  ingress: [{}]\n",
			"membranepolicy prod/m: spec.endpointSelector: required (use {} to select every endpoint of the namespace)"},
		{"mp empty ports list", mpHeader + "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: []}]\n",
			"membranepolicy prod/m: spec.ingress[0].toPorts[0].ports: must list at least one port"},
		{"duplicate key", npHeader + "spec:\n  podSelector: {}\n  podSelector: {}\n",
			"parse yaml: yaml: unmarshal errors:\n  line 6: key \"podSelector\" already set in map"},
		{"several problems, one line each", npHeader + "spec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 0}, {port: bad_name}]\n",
			"networkpolicy default/x: spec.ingress[0].ports[0].port: 0 is not a port number (1-65535)\n" +
				`networkpolicy default/x: spec.ingress[0].ports[1].port: "bad_name" is not a valid port name (lowercase alphanumerics and '-')`},
		{"second document", "apiVersion: v1\nkind: Namespace\nmetadata: {name: ok}\n---\n" + npHeader + "spec: {podSelector: {}, egress: [{ports: [{port: 0}]}]}\n",
			"document 2: networkpolicy default/x: spec.egress[0].ports[0].port: 0 is not a port number (1-65535)"},
		{"list item", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: ok, labelz: {}}\n",
			"items[0]: namespace ok: metadata.labelz: unknown field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Parse([]byte(tt.input))
			if err == nil {
				t.Fatalf("Parse succeeded with %d objects, want error %q", len(objs), tt.want)
			}
			if objs != nil {
				t.Errorf("Parse returned %d objects with its error", len(objs))
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("error:\n%s", cmp.Diff(tt.want, got))
			}
		})
	}
}

func TestParseDefaultsAndForms(t *testing.T) {
	yamlIn := `
# leading comment
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {team: a}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: 80}, {port: http, protocol: UDP}]
  egress: []
---
---
apiVersion: v1
kind: List
items:
- apiVersion: membrane.io/v1
  kind: MembranePolicy
  metadata: {name: m, namespace: prod}
  spec:
    endpointSelector: {}
    ingress: [{}]
`
	objs, err := Parse([]byte(yamlIn))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 3 {
		t.Fatalf("got %d objects, want 3", len(objs))
	}
	if objs[0].Kind != KindNamespace || objs[0].Namespace != "" || objs[0].Labels["team"] != "a" {
		t.Errorf("namespace object = %+v", objs[0])
	}
	np := objs[1]
	if np.Namespace != "default" {
		t.Errorf("namespace default: got %q", np.Namespace)
	}
	if p := np.NetworkPolicy.Ingress[0].Ports[0].Protocol; p == nil || *p != "TCP" {
		t.Errorf("protocol not defaulted to TCP")
	}
	if np.NetworkPolicy.Ingress[0].From != nil {
		t.Errorf("absent from should stay nil")
	}
	if np.NetworkPolicy.Egress == nil || len(np.NetworkPolicy.Egress) != 0 {
		t.Errorf("egress: [] should be empty, not nil: %#v", np.NetworkPolicy.Egress)
	}
	if mp := objs[2].MembranePolicy; mp == nil || len(mp.Ingress) != 1 || mp.Egress != nil {
		t.Errorf("membrane policy = %+v", mp)
	}

	// JSON in, and the JSON form round-trips, keeping empty vs absent.
	for _, o := range objs {
		b, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		var back Object
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("unmarshal %s: %v", b, err)
		}
		if diff := cmp.Diff(o, back); diff != "" {
			t.Errorf("round trip of %s (-want +got):\n%s", b, diff)
		}
	}
	b, _ := json.Marshal(np)
	if !strings.Contains(string(b), `"egress":[]`) || strings.Contains(string(b), `"from"`) {
		t.Errorf("JSON form lost empty vs absent: %s", b)
	}
}

func TestParseEmpty(t *testing.T) {
	objs, err := Parse([]byte("# nothing\n---\n\n"))
	if err != nil || len(objs) != 0 {
		t.Errorf("Parse(empty) = %v, %v", objs, err)
	}
}
