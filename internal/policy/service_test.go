package policy

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const svcHeader = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
const sliceHeader = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}\n"

func ptr[T any](v T) *T { return &v }

func TestParseServiceGood(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  Object
	}{
		{"defaults", svcHeader + "spec:\n  selector: {app: web}\n  ports: [{port: 80}]\n",
			Object{APIVersion: "v1", Kind: KindService, Namespace: "default", Name: "web",
				Service: &ServiceSpec{
					Type: ServiceTypeClusterIP, Selector: map[string]string{"app": "web"},
					SessionAffinity: SessionAffinityNone,
					Ports:           []ServicePort{{Protocol: "TCP", Port: 80, TargetPort: &IntOrString{IntVal: 80}}},
				}}},
		{"full NodePort with affinity", `apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: prod
  annotations: {membrane.io/lb-algorithm: maglev}
spec:
  type: NodePort
  clusterIP: 10.96.0.20
  selector: {app: api}
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
`,
			Object{APIVersion: "v1", Kind: KindService, Namespace: "prod", Name: "api",
				Annotations: map[string]string{AnnotationLBAlgorithm: "maglev"},
				Service: &ServiceSpec{
					Type: ServiceTypeNodePort, ClusterIP: "10.96.0.20", Selector: map[string]string{"app": "api"},
					SessionAffinity:       SessionAffinityClientIP,
					SessionAffinityConfig: &SessionAffinityConfig{ClientIP: &ClientIPConfig{TimeoutSeconds: ptr(int32(10800))}},
					Ports: []ServicePort{
						{Name: "http", Protocol: "TCP", Port: 80, TargetPort: &IntOrString{IsString: true, StrVal: "http"}, NodePort: 30080},
						{Name: "dns", Protocol: "UDP", Port: 53, TargetPort: &IntOrString{IntVal: 5353}, NodePort: 30053},
					},
				}}},
		{"same port number on TCP and UDP", svcHeader + "spec:\n  ports: [{name: a, port: 53}, {name: b, port: 53, protocol: UDP}]\n",
			Object{APIVersion: "v1", Kind: KindService, Namespace: "default", Name: "web",
				Service: &ServiceSpec{
					Type: ServiceTypeClusterIP, SessionAffinity: SessionAffinityNone,
					Ports: []ServicePort{
						{Name: "a", Protocol: "TCP", Port: 53, TargetPort: &IntOrString{IntVal: 53}},
						{Name: "b", Protocol: "UDP", Port: 53, TargetPort: &IntOrString{IntVal: 53}},
					},
				}}},
		{"headless without ports", svcHeader + "spec: {clusterIP: None, selector: {app: db}}\n",
			Object{APIVersion: "v1", Kind: KindService, Namespace: "default", Name: "web",
				Service: &ServiceSpec{Type: ServiceTypeClusterIP, ClusterIP: "None", Selector: map[string]string{"app": "db"}, SessionAffinity: SessionAffinityNone}}},
		{"affinity timeout given", svcHeader + "spec:\n  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
			Object{APIVersion: "v1", Kind: KindService, Namespace: "default", Name: "web",
				Service: &ServiceSpec{Type: ServiceTypeClusterIP, SessionAffinity: SessionAffinityClientIP,
					SessionAffinityConfig: &SessionAffinityConfig{ClientIP: &ClientIPConfig{TimeoutSeconds: ptr(int32(60))}},
					Ports:                 []ServicePort{{Protocol: "TCP", Port: 80, TargetPort: &IntOrString{IntVal: 80}}}}}},
		{"endpoint slice", sliceHeader + `addressType: IPv4
endpoints:
- addresses: [192.0.2.10]
- addresses: [192.0.2.11]
  conditions: {ready: false, terminating: true}
  nodeName: node-2
ports:
- {name: http, port: 8080}
- {name: dns, port: 53, protocol: UDP}
`,
			Object{APIVersion: APIVersionDiscovery, Kind: KindEndpointSlice, Namespace: "default", Name: "ext-1",
				Labels: map[string]string{LabelServiceName: "ext"},
				EndpointSlice: &EndpointSliceSpec{
					AddressType: AddressTypeIPv4,
					Endpoints: []SliceEndpoint{
						{Addresses: []string{"192.0.2.10"}},
						{Addresses: []string{"192.0.2.11"}, Conditions: EndpointConditions{Ready: ptr(false), Terminating: ptr(true)}, NodeName: "node-2"},
					},
					Ports: []SlicePort{{Name: "http", Port: ptr(int32(8080)), Protocol: "TCP"}, {Name: "dns", Port: ptr(int32(53)), Protocol: "UDP"}},
				}}},
		{"empty selector and ports are absent", svcHeader + "spec: {clusterIP: None, selector: {}, ports: []}\n",
			Object{APIVersion: "v1", Kind: KindService, Namespace: "default", Name: "web",
				Service: &ServiceSpec{Type: ServiceTypeClusterIP, ClusterIP: "None", SessionAffinity: SessionAffinityNone}}},
		{"endpoint slice with empty lists", sliceHeader + "addressType: IPv4\nendpoints: []\nports: []\n",
			Object{APIVersion: APIVersionDiscovery, Kind: KindEndpointSlice, Namespace: "default", Name: "ext-1",
				Labels:        map[string]string{LabelServiceName: "ext"},
				EndpointSlice: &EndpointSliceSpec{AddressType: AddressTypeIPv4, Endpoints: []SliceEndpoint{}}}},
		{"endpoint slice without ports or endpoints", sliceHeader + "addressType: IPv4\n",
			Object{APIVersion: APIVersionDiscovery, Kind: KindEndpointSlice, Namespace: "default", Name: "ext-1",
				Labels:        map[string]string{LabelServiceName: "ext"},
				EndpointSlice: &EndpointSliceSpec{AddressType: AddressTypeIPv4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Parse([]byte(tt.input))
			if err != nil {
				t.Fatal(err)
			}
			if len(objs) != 1 {
				t.Fatalf("got %d objects, want 1", len(objs))
			}
			if diff := cmp.Diff(tt.want, objs[0]); diff != "" {
				t.Errorf("parsed object (-want +got):\n%s", diff)
			}
			// The JSON form is the manifest and reads back unchanged.
			b, err := json.Marshal(objs[0])
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(%s): %v", b, err)
			}
			if diff := cmp.Diff(objs, back); diff != "" {
				t.Errorf("round trip of %s (-want +got):\n%s", b, diff)
			}
		})
	}
}

func TestEndpointSliceJSONIsTopLevel(t *testing.T) {
	objs, err := Parse([]byte(sliceHeader + "addressType: IPv4\nendpoints: [{addresses: [192.0.2.1]}]\nports: [{port: 80}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(objs[0])
	if err != nil {
		t.Fatal(err)
	}
	want := `{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"ext-1","namespace":"default","labels":{"kubernetes.io/service-name":"ext"}},` +
		`"addressType":"IPv4","endpoints":[{"addresses":["192.0.2.1"],"conditions":{}}],"ports":[{"port":80,"protocol":"TCP"}]}`
	if string(b) != want {
		t.Errorf("JSON form:\n%s", cmp.Diff(want, string(b)))
	}
	var back Object
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(objs[0], back); diff != "" {
		t.Errorf("json.Unmarshal round trip (-want +got):\n%s", diff)
	}
}

func TestParseServiceErrors(t *testing.T) {
	svc := "service default/web: "
	slice := "endpointslice default/ext-1: "
	tests := []struct {
		name  string
		input string
		want  string // the whole error text
	}{
		// Service
		{"wrong apiVersion", "apiVersion: apps/v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n",
			svc + `apiVersion: Service needs apiVersion v1, got "apps/v1"`},
		{"name not DNS-1035", "apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n",
			`service default/1web: metadata.name: "1web" must start with a lowercase letter (a DNS-1035 label)`},
		{"unknown spec field", svcHeader + "spec: {ports: [{port: 80}], externalIPs: [1.2.3.4]}\n",
			svc + "spec.externalIPs: unknown field"},
		{"no ports", svcHeader + "spec: {selector: {app: web}}\n",
			svc + "spec.ports: required: a service needs at least one port (only a headless service, clusterIP None, may have none)"},
		{"port zero", svcHeader + "spec: {ports: [{port: 0}]}\n",
			svc + "spec.ports[0].port: 0 is not a port number (1-65535)"},
		{"port too big", svcHeader + "spec: {ports: [{port: 65536}]}\n",
			svc + "spec.ports[0].port: 65536 is not a port number (1-65535)"},
		{"port as string", svcHeader + "spec: {ports: [{port: http}]}\n",
			svc + "spec.ports[0].port: must be a number, got a string"},
		{"names required with two ports", svcHeader + "spec: {ports: [{name: a, port: 80}, {port: 443}]}\n",
			svc + "spec.ports[1].name: required when a service has more than one port"},
		{"duplicate names", svcHeader + "spec: {ports: [{name: a, port: 80}, {name: a, port: 443}]}\n",
			svc + `spec.ports[1].name: duplicate name "a" (also spec.ports[0])`},
		{"bad port name", svcHeader + "spec: {ports: [{name: HTTP, port: 80}]}\n",
			svc + `spec.ports[0].name: "HTTP" is not a DNS-1123 label (lowercase alphanumerics and '-', starting and ending with an alphanumeric)`},
		{"duplicate port and protocol", svcHeader + "spec: {ports: [{name: a, port: 80}, {name: b, port: 80, protocol: TCP}]}\n",
			svc + "spec.ports[1].port: duplicate port 80/TCP (also spec.ports[0])"},
		{"SCTP", svcHeader + "spec: {ports: [{port: 80, protocol: SCTP}]}\n",
			svc + "spec.ports[0].protocol: SCTP is not supported for services (want TCP or UDP)"},
		{"unknown protocol", svcHeader + "spec: {ports: [{port: 80, protocol: tcp}]}\n",
			svc + `spec.ports[0].protocol: unsupported protocol "tcp" (want TCP or UDP)`},
		{"targetPort out of range", svcHeader + "spec: {ports: [{port: 80, targetPort: 70000}]}\n",
			svc + "spec.ports[0].targetPort: 70000 is not a port number (1-65535)"},
		{"targetPort zero", svcHeader + "spec: {ports: [{port: 80, targetPort: 0}]}\n",
			svc + "spec.ports[0].targetPort: 0 is not a port number (1-65535)"},
		{"targetPort bad name", svcHeader + "spec: {ports: [{port: 80, targetPort: web_http}]}\n",
			svc + `spec.ports[0].targetPort: "web_http" is not a valid port name (lowercase alphanumerics and '-')`},
		{"clusterIP not an address", svcHeader + "spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}\n",
			svc + `spec.clusterIP: "10.96.0.300" is not an IP address`},
		{"clusterIP IPv6", svcHeader + "spec: {clusterIP: \"fd00::10\", ports: [{port: 80}]}\n",
			svc + `spec.clusterIP: "fd00::10" is IPv6, which is not supported yet (IPv4 only)`},
		{"clusterIP loopback", svcHeader + "spec: {clusterIP: 127.0.0.1, ports: [{port: 80}]}\n",
			svc + `spec.clusterIP: "127.0.0.1" is not a unicast address (unspecified, loopback, link-local, multicast and broadcast are refused)`},
		{"clusterIP mapped", svcHeader + "spec: {clusterIP: \"::ffff:10.96.0.1\", ports: [{port: 80}]}\n",
			svc + `spec.clusterIP: "::ffff:10.96.0.1" is an IPv4-mapped IPv6 address; write it as 10.96.0.1`},
		{"unsupported type", svcHeader + "spec: {type: LoadBalancer, ports: [{port: 80}]}\n",
			svc + "spec.type: service type LoadBalancer is not supported (want ClusterIP or NodePort)"},
		{"unknown type", svcHeader + "spec: {type: Cluster, ports: [{port: 80}]}\n",
			svc + `spec.type: unknown service type "Cluster" (want ClusterIP or NodePort)`},
		{"nodePort on ClusterIP", svcHeader + "spec: {ports: [{port: 80, nodePort: 30080}]}\n",
			svc + "spec.ports[0].nodePort: only a NodePort service takes a nodePort (type is ClusterIP)"},
		{"NodePort without nodePort", svcHeader + "spec: {type: NodePort, ports: [{port: 80}]}\n",
			svc + "spec.ports[0].nodePort: required for a NodePort service (30000-32767): Membrane does not allocate node ports"},
		{"nodePort out of range", svcHeader + "spec: {type: NodePort, ports: [{port: 80, nodePort: 8080}]}\n",
			svc + "spec.ports[0].nodePort: 8080 is outside the node port range 30000-32767"},
		{"duplicate nodePort", svcHeader + "spec: {type: NodePort, ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 30080}]}\n",
			svc + "spec.ports[1].nodePort: duplicate node port 30080/TCP (also spec.ports[0])"},
		{"headless NodePort", svcHeader + "spec: {type: NodePort, clusterIP: None, ports: [{port: 80, nodePort: 30080}]}\n",
			svc + "spec.clusterIP: a NodePort service cannot be headless (clusterIP None)"},
		{"affinity config without ClientIP", svcHeader + "spec: {ports: [{port: 80}], sessionAffinityConfig: {clientIP: {timeoutSeconds: 10}}}\n",
			svc + "spec.sessionAffinityConfig: only allowed with sessionAffinity ClientIP"},
		{"affinity timeout zero", svcHeader + "spec: {ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}}\n",
			svc + "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range (1-86400)"},
		{"affinity timeout too long", svcHeader + "spec: {ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 86401}}}\n",
			svc + "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is out of range (1-86400)"},
		{"unknown affinity", svcHeader + "spec: {ports: [{port: 80}], sessionAffinity: Cookie}\n",
			svc + `spec.sessionAffinity: unknown session affinity "Cookie" (want None or ClientIP)`},
		{"bad selector value", svcHeader + "spec: {ports: [{port: 80}], selector: {app: -web}}\n",
			svc + `spec.selector.app: value "-web" must consist of alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric`},
		{"bad algorithm", "apiVersion: v1\nkind: Service\nmetadata: {name: web, annotations: {membrane.io/lb-algorithm: roundrobin}}\nspec: {ports: [{port: 80}]}\n",
			svc + `metadata.annotations.membrane.io/lb-algorithm: unknown load-balancing algorithm "roundrobin" (want random or maglev)`},
		{"several problems, one line each", svcHeader + "spec: {ports: [{port: 0, protocol: SCTP}]}\n",
			svc + "spec.ports[0].protocol: SCTP is not supported for services (want TCP or UDP)\n" +
				svc + "spec.ports[0].port: 0 is not a port number (1-65535)"},

		// EndpointSlice
		{"slice wrong apiVersion", "apiVersion: v1\nkind: EndpointSlice\nmetadata: {name: ext-1, labels: {kubernetes.io/service-name: ext}}\naddressType: IPv4\n",
			slice + `apiVersion: EndpointSlice needs apiVersion discovery.k8s.io/v1, got "v1"`},
		{"slice without service label", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ext-1}\naddressType: IPv4\n",
			slice + "metadata.labels: label kubernetes.io/service-name is required: it names the service these endpoints belong to"},
		{"slice service label not a name", "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ext-1, labels: {kubernetes.io/service-name: Ext}}\naddressType: IPv4\n",
			slice + `metadata.labels.kubernetes.io/service-name: "Ext" is not a service name: is not a DNS-1123 label (lowercase alphanumerics and '-', starting and ending with an alphanumeric)`},
		{"slice with spec", sliceHeader + "spec: {addressType: IPv4}\n",
			slice + "spec: unknown field (an EndpointSlice has addressType, endpoints and ports at the top level, not under spec)"},
		{"slice unknown top-level field", sliceHeader + "addressType: IPv4\nendpoint: []\n",
			slice + "endpoint: unknown field"},
		{"slice unknown nested field", sliceHeader + "addressType: IPv4\nendpoints: [{addresses: [192.0.2.1], targetRef: {}}]\n",
			slice + "endpoints[0].targetRef: unknown field"},
		{"slice without addressType", sliceHeader + "endpoints: []\n",
			slice + "addressType: required (IPv4)"},
		{"slice IPv6", sliceHeader + "addressType: IPv6\n",
			slice + "addressType: IPv6 is not supported yet (want IPv4)"},
		{"slice FQDN", sliceHeader + "addressType: FQDN\n",
			slice + `addressType: unsupported address type "FQDN" (want IPv4)`},
		{"slice empty addresses", sliceHeader + "addressType: IPv4\nendpoints: [{addresses: []}]\n",
			slice + "endpoints[0].addresses: must list at least one address"},
		{"slice bad address", sliceHeader + "addressType: IPv4\nendpoints: [{addresses: [192.0.2.1, example.com]}]\n",
			slice + `endpoints[0].addresses[1]: "example.com" is not an IP address`},
		{"slice multicast address", sliceHeader + "addressType: IPv4\nendpoints: [{addresses: [224.0.0.1]}]\n",
			slice + `endpoints[0].addresses[0]: "224.0.0.1" is not a unicast address (unspecified, loopback, link-local, multicast and broadcast are refused)`},
		{"slice IPv6 address", sliceHeader + "addressType: IPv4\nendpoints: [{addresses: [\"2001:db8::1\"]}]\n",
			slice + `endpoints[0].addresses[0]: "2001:db8::1" is IPv6, which is not supported yet (IPv4 only)`},
		{"slice bad nodeName", sliceHeader + "addressType: IPv4\nendpoints: [{addresses: [192.0.2.1], nodeName: Node_1}]\n",
			slice + `endpoints[0].nodeName: "Node_1" is not a DNS-1123 subdomain (lowercase alphanumerics, '-' and '.', starting and ending with an alphanumeric)`},
		{"slice ready not a bool", sliceHeader + "addressType: IPv4\nendpoints: [{addresses: [192.0.2.1], conditions: {ready: \"yes\"}}]\n",
			slice + "endpoints[0].conditions.ready: must be true or false, got a string"},
		{"slice port out of range", sliceHeader + "addressType: IPv4\nports: [{port: 0}]\n",
			slice + "ports[0].port: 0 is not a port number (1-65535)"},
		{"slice SCTP port", sliceHeader + "addressType: IPv4\nports: [{port: 80, protocol: SCTP}]\n",
			slice + "ports[0].protocol: SCTP is not supported for services (want TCP or UDP)"},
		{"slice duplicate port names", sliceHeader + "addressType: IPv4\nports: [{port: 80}, {port: 81}]\n",
			slice + `ports[1].name: duplicate name "" (also ports[0])`},
		{"slice bad port name", sliceHeader + "addressType: IPv4\nports: [{name: Web, port: 80}]\n",
			slice + `ports[0].name: "Web" is not a DNS-1123 label (lowercase alphanumerics and '-', starting and ending with an alphanumeric)`},
		{"slice in a list", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {name: s, namespace: prod}\n  addressType: IPv4\n",
			"items[0]: endpointslice prod/s: metadata.labels: label kubernetes.io/service-name is required: it names the service these endpoints belong to"},
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

// TestParseMixedList parses a List holding every kind, round-trips each
// object through its JSON form, and checks that the policy resolver
// ignores Services and EndpointSlices.
func TestParseMixedList(t *testing.T) {
	in := `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: prod}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: prod}
  spec:
    clusterIP: 10.96.0.10
    selector: {app: web}
    ports: [{name: http, port: 80, targetPort: http}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: web, namespace: prod}
  spec: {podSelector: {matchLabels: {app: web}}, ingress: [{}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: ext-abc, namespace: prod, labels: {kubernetes.io/service-name: ext}}
  addressType: IPv4
  endpoints: [{addresses: [192.0.2.7]}]
  ports: [{name: http, port: 8080}]
- apiVersion: v1
  kind: Service
  metadata: {name: ext, namespace: prod}
  spec: {ports: [{name: http, port: 80}]}
`
	objs, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.Kind)
	}
	want := []string{KindNamespace, KindService, KindNetworkPolicy, KindEndpointSlice, KindService}
	if diff := cmp.Diff(want, kinds); diff != "" {
		t.Fatalf("kinds (-want +got):\n%s", diff)
	}
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
		if o.Kind == KindService && strings.Contains(string(b), "addressType") {
			t.Errorf("service JSON carries slice fields: %s", b)
		}
	}

	// The resolver sees the same policy with or without the service kinds.
	w := newWorld()
	w.ns["prod"]["kubernetes.io/metadata.name"] = "prod"
	withSvc := w.input(t, in)
	var policyOnly []Object
	for _, o := range withSvc.Objects {
		if o.Kind != KindService && o.Kind != KindEndpointSlice {
			policyOnly = append(policyOnly, o)
		}
	}
	without := withSvc
	without.Objects = policyOnly
	if diff := cmp.Diff(Resolve(without), Resolve(withSvc)); diff != "" {
		t.Errorf("services changed the policy result (-without +with):\n%s", diff)
	}
	if got := CIDRPrefixes(withSvc.Objects); len(got) != 0 {
		t.Errorf("CIDRPrefixes with services = %v, want none", got)
	}
}

func TestServiceAffinityTimeout(t *testing.T) {
	tests := []struct {
		spec ServiceSpec
		want int32
	}{
		{ServiceSpec{SessionAffinity: SessionAffinityNone}, 0},
		{ServiceSpec{}, 0},
		{ServiceSpec{SessionAffinity: SessionAffinityClientIP}, 10800},
		{ServiceSpec{SessionAffinity: SessionAffinityClientIP, SessionAffinityConfig: &SessionAffinityConfig{ClientIP: &ClientIPConfig{TimeoutSeconds: ptr(int32(5))}}}, 5},
	}
	for i, tt := range tests {
		if got := tt.spec.AffinityTimeoutSeconds(); got != tt.want {
			t.Errorf("%d: AffinityTimeoutSeconds = %d, want %d", i, got, tt.want)
		}
	}
}
