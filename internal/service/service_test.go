package service

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/policy"
)

const (
	tcp = policy.ProtoTCP
	udp = policy.ProtoUDP
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// testPods is a small cluster: web pods in default (ready, not ready,
// terminating, without an address), a web pod in prod, a db pod.
func testPods() []Pod {
	return []Pod{
		{IP: addr("10.200.1.2"), Namespace: "default", Name: "web-2", Node: "n2", Ready: true,
			Labels:     map[string]string{"app": "web", "tier": "fe"},
			NamedPorts: []api.NamedPort{{Name: "http", Port: 9090, Protocol: "TCP"}}},
		{IP: addr("10.200.1.1"), Namespace: "default", Name: "web-1", Node: "n1", Ready: true,
			Labels: map[string]string{"app": "web"},
			NamedPorts: []api.NamedPort{
				{Name: "http", Port: 8080, Protocol: "TCP"},
				{Name: "dns", Port: 5353, Protocol: "UDP"},
			}},
		{IP: addr("10.200.1.3"), Namespace: "default", Name: "web-3", Node: "n1", Ready: false,
			Labels: map[string]string{"app": "web"}},
		{IP: addr("10.200.1.4"), Namespace: "default", Name: "web-4", Node: "n2", Ready: false, Terminating: true,
			Labels:     map[string]string{"app": "web"},
			NamedPorts: []api.NamedPort{{Name: "http", Port: 8080, Protocol: "TCP"}}},
		{Namespace: "default", Name: "web-pending", Node: "n1", Labels: map[string]string{"app": "web"}},
		{IP: addr("10.200.2.1"), Namespace: "prod", Name: "web-1", Node: "n1", Ready: true,
			Labels: map[string]string{"app": "web"}},
		{IP: addr("10.200.1.9"), Namespace: "default", Name: "db-1", Node: "n1", Ready: true,
			Labels: map[string]string{"app": "db"}},
	}
}

// pb is a pod backend.
func pb(ip string, port uint16, proto uint8, ready, term bool, node, pod string) Backend {
	return Backend{Addr: addr(ip), Port: port, Proto: proto, Ready: ready, Terminating: term, Node: node, Pod: pod}
}

// sb is an EndpointSlice backend.
func sb(ip string, port uint16, proto uint8, ready, term bool, node string) Backend {
	return Backend{Addr: addr(ip), Port: port, Proto: proto, Ready: ready, Terminating: term, Node: node}
}

func fe(svc, portName string, kind FrontendKind, ip string, port uint16, proto uint8, bs ...Backend) Frontend {
	return Frontend{Service: svc, PortName: portName, Kind: kind, Addr: addr(ip), Port: port, Proto: proto,
		Algorithm: AlgRandom, Backends: bs}
}

func svc(ns, name, spec string) string {
	return "---\napiVersion: v1\nkind: Service\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec:\n" + spec
}

// Backends of the selector app=web in default, targetPort 8080.
var web8080 = []Backend{
	pb("10.200.1.1", 8080, tcp, true, false, "n1", "default/web-1"),
	pb("10.200.1.2", 8080, tcp, true, false, "n2", "default/web-2"),
	pb("10.200.1.3", 8080, tcp, false, false, "n1", "default/web-3"),
	pb("10.200.1.4", 8080, tcp, false, true, "n2", "default/web-4"),
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name      string
		manifests string
		nodeIPs   []string
		defAlg    Algorithm
		want      []Frontend
		warnings  []string
	}{
		{
			name:      "selector picks its namespace only, numeric targetPort",
			manifests: svc("default", "web", "  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n"),
			want:      []Frontend{fe("default/web", "", ClusterIP, "10.96.0.10", 80, tcp, web8080...)},
		},
		{
			name:      "every selector pair must match",
			manifests: svc("default", "fe", "  clusterIP: 10.96.0.11\n  selector: {app: web, tier: fe}\n  ports: [{port: 80, targetPort: 8080}]\n"),
			want: []Frontend{fe("default/fe", "", ClusterIP, "10.96.0.11", 80, tcp,
				pb("10.200.1.2", 8080, tcp, true, false, "n2", "default/web-2"))},
		},
		{
			name:      "other namespace",
			manifests: svc("prod", "web", "  clusterIP: 10.96.0.12\n  selector: {app: web}\n  ports: [{port: 80}]\n"),
			want: []Frontend{fe("prod/web", "", ClusterIP, "10.96.0.12", 80, tcp,
				pb("10.200.2.1", 80, tcp, true, false, "n1", "prod/web-1"))},
		},
		{
			name:      "selector matching nothing",
			manifests: svc("default", "none", "  clusterIP: 10.96.0.13\n  selector: {app: nope}\n  ports: [{port: 80}]\n"),
			want:      []Frontend{fe("default/none", "", ClusterIP, "10.96.0.13", 80, tcp)},
		},
		{
			name: "named targetPort by name and protocol; pods without it skipped",
			manifests: svc("default", "web", "  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports:\n"+
				"  - {name: http, port: 80, targetPort: http}\n"+
				"  - {name: dns, port: 53, protocol: UDP, targetPort: dns}\n"+
				"  - {name: dns-tcp, port: 53, targetPort: dns}\n"),
			want: []Frontend{
				fe("default/web", "dns-tcp", ClusterIP, "10.96.0.10", 53, tcp),
				fe("default/web", "dns", ClusterIP, "10.96.0.10", 53, udp,
					pb("10.200.1.1", 5353, udp, true, false, "n1", "default/web-1")),
				fe("default/web", "http", ClusterIP, "10.96.0.10", 80, tcp,
					pb("10.200.1.1", 8080, tcp, true, false, "n1", "default/web-1"),
					pb("10.200.1.2", 9090, tcp, true, false, "n2", "default/web-2"),
					pb("10.200.1.4", 8080, tcp, false, true, "n2", "default/web-4")),
			},
		},
		{
			name:      "no cluster IP yet: warning, no frontend",
			manifests: svc("default", "web", "  selector: {app: db}\n  ports: [{port: 5432}]\n"),
			warnings:  []string{"service default/web: no cluster IP allocated yet; no ClusterIP frontends"},
		},
		{
			name:      "headless: nothing, silently",
			manifests: svc("default", "web", "  clusterIP: None\n  selector: {app: web}\n  ports: [{port: 80}]\n"),
		},
		{
			name: "NodePort: cluster frontend plus one per IPv4 node address",
			manifests: svc("default", "db", "  type: NodePort\n  clusterIP: 10.96.0.20\n  selector: {app: db}\n  ports:\n"+
				"  - {name: pg, port: 5432, nodePort: 30432}\n  - {name: stats, port: 9000, protocol: UDP, nodePort: 30900}\n"),
			nodeIPs: []string{"192.168.1.11", "fd00::1", "192.168.1.10", "192.168.1.11"},
			want: []Frontend{
				fe("default/db", "pg", ClusterIP, "10.96.0.20", 5432, tcp, pb("10.200.1.9", 5432, tcp, true, false, "n1", "default/db-1")),
				fe("default/db", "stats", ClusterIP, "10.96.0.20", 9000, udp, pb("10.200.1.9", 9000, udp, true, false, "n1", "default/db-1")),
				fe("default/db", "pg", NodePort, "192.168.1.10", 30432, tcp, pb("10.200.1.9", 5432, tcp, true, false, "n1", "default/db-1")),
				fe("default/db", "stats", NodePort, "192.168.1.10", 30900, udp, pb("10.200.1.9", 9000, udp, true, false, "n1", "default/db-1")),
				fe("default/db", "pg", NodePort, "192.168.1.11", 30432, tcp, pb("10.200.1.9", 5432, tcp, true, false, "n1", "default/db-1")),
				fe("default/db", "stats", NodePort, "192.168.1.11", 30900, udp, pb("10.200.1.9", 9000, udp, true, false, "n1", "default/db-1")),
			},
		},
		{
			name:      "NodePort without cluster IP still answers on nodes",
			manifests: svc("default", "db", "  type: NodePort\n  selector: {app: db}\n  ports: [{port: 5432, nodePort: 30432}]\n"),
			nodeIPs:   []string{"192.168.1.10"},
			want: []Frontend{
				fe("default/db", "", NodePort, "192.168.1.10", 30432, tcp, pb("10.200.1.9", 5432, tcp, true, false, "n1", "default/db-1")),
			},
			warnings: []string{"service default/db: no cluster IP allocated yet; no ClusterIP frontends"},
		},
		{
			name: "EndpointSlices: matched by service label, port name and protocol",
			manifests: svc("default", "ext", "  clusterIP: 10.96.0.30\n  ports:\n"+
				"  - {name: http, port: 80}\n  - {name: dns, port: 53, protocol: UDP}\n") + `
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-b, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints:
- addresses: [192.0.2.1]
  conditions: {ready: false}
- addresses: [192.0.2.4, 192.0.2.5]
ports: [{name: http, port: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-a, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints:
- addresses: [192.0.2.3]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: n2
- addresses: [192.0.2.1]
  nodeName: n1
- addresses: [192.0.2.2]
  conditions: {ready: false}
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-c, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.9]}]
ports: [{name: http, port: 8080, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ext-x, namespace: prod, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.99]}]
ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, labels: {kubernetes.io/service-name: other}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.98]}]
ports: [{name: http, port: 8080}]
`,
			want: []Frontend{
				fe("default/ext", "dns", ClusterIP, "10.96.0.30", 53, udp,
					sb("192.0.2.1", 5353, udp, true, false, "n1"),
					sb("192.0.2.2", 5353, udp, false, false, ""),
					sb("192.0.2.3", 5353, udp, false, true, "n2")),
				fe("default/ext", "http", ClusterIP, "10.96.0.30", 80, tcp,
					sb("192.0.2.1", 8080, tcp, true, false, "n1"),
					sb("192.0.2.1", 8443, tcp, false, false, ""),
					sb("192.0.2.2", 8080, tcp, false, false, ""),
					sb("192.0.2.3", 8080, tcp, false, true, "n2"),
					sb("192.0.2.4", 8443, tcp, true, false, "")),
			},
			warnings: []string{"endpointslice default/ext-c: no port matches a port of service default/ext by name and protocol; unused"},
		},
		{
			name: "the same address and port in two slices merges, ready wins",
			manifests: svc("default", "ext", "  clusterIP: 10.96.0.30\n  ports: [{port: 80}]\n") + `
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.1], conditions: {ready: false, terminating: true}, nodeName: old}]
ports: [{port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b, labels: {kubernetes.io/service-name: ext}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.1], nodeName: new}]
ports: [{port: 8080}]
`,
			want: []Frontend{fe("default/ext", "", ClusterIP, "10.96.0.30", 80, tcp, sb("192.0.2.1", 8080, tcp, true, false, "new"))},
		},
		{
			name: "selector services ignore slices",
			manifests: svc("default", "db", "  clusterIP: 10.96.0.20\n  selector: {app: db}\n  ports: [{port: 5432}]\n") + `
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-x, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
endpoints: [{addresses: [192.0.2.1]}]
ports: [{port: 5432}]
`,
			want: []Frontend{fe("default/db", "", ClusterIP, "10.96.0.20", 5432, tcp, pb("10.200.1.9", 5432, tcp, true, false, "n1", "default/db-1"))},
		},
		{
			name: "duplicate frontends: first by namespace and name wins",
			manifests: svc("prod", "a", "  clusterIP: 10.96.0.40\n  selector: {app: web}\n  ports: [{port: 80}]\n") +
				svc("default", "b", "  clusterIP: 10.96.0.40\n  selector: {app: db}\n  ports: [{name: t, port: 80}, {name: u, port: 80, protocol: UDP}]\n") +
				svc("default", "a", "  type: NodePort\n  clusterIP: 10.96.0.41\n  selector: {app: db}\n  ports: [{port: 81, nodePort: 30001}]\n") +
				svc("default", "c", "  type: NodePort\n  clusterIP: 10.96.0.42\n  selector: {app: db}\n  ports: [{port: 81, nodePort: 30001}]\n"),
			nodeIPs: []string{"192.168.1.10"},
			want: []Frontend{
				fe("default/b", "t", ClusterIP, "10.96.0.40", 80, tcp, pb("10.200.1.9", 80, tcp, true, false, "n1", "default/db-1")),
				fe("default/b", "u", ClusterIP, "10.96.0.40", 80, udp, pb("10.200.1.9", 80, udp, true, false, "n1", "default/db-1")),
				fe("default/a", "", ClusterIP, "10.96.0.41", 81, tcp, pb("10.200.1.9", 81, tcp, true, false, "n1", "default/db-1")),
				fe("default/c", "", ClusterIP, "10.96.0.42", 81, tcp, pb("10.200.1.9", 81, tcp, true, false, "n1", "default/db-1")),
				fe("default/a", "", NodePort, "192.168.1.10", 30001, tcp, pb("10.200.1.9", 81, tcp, true, false, "n1", "default/db-1")),
			},
			warnings: []string{
				"service default/c: NodePort frontend 192.168.1.10:30001/TCP is already service default/a's; ignored",
				"service prod/a: ClusterIP frontend 10.96.0.40:80/TCP is already service default/b's; ignored",
			},
		},
		{
			name:      "other kinds are ignored",
			manifests: "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := policy.Parse([]byte(tt.manifests))
			if err != nil {
				t.Fatal(err)
			}
			in := Input{Objects: objs, Pods: testPods(), DefaultAlgorithm: tt.defAlg}
			for _, s := range tt.nodeIPs {
				in.NodeIPs = append(in.NodeIPs, addr(s))
			}
			got := Resolve(in)
			if diff := cmp.Diff(tt.want, got.Frontends, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("frontends (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.warnings, got.Warnings); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResolveAlgorithmAndAffinity(t *testing.T) {
	objs, err := policy.Parse([]byte(
		"apiVersion: v1\nkind: Service\nmetadata: {name: a, annotations: {membrane.io/lb-algorithm: maglev}}\n" +
			"spec: {clusterIP: 10.96.0.1, ports: [{port: 80}], sessionAffinity: ClientIP}\n---\n" +
			"apiVersion: v1\nkind: Service\nmetadata: {name: b, annotations: {membrane.io/lb-algorithm: random}}\n" +
			"spec: {clusterIP: 10.96.0.2, ports: [{port: 80}], sessionAffinity: ClientIP, sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}}\n---\n" +
			"apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		alg Algorithm
		aff time.Duration
	}
	for _, tt := range []struct {
		def  Algorithm
		want []row
	}{
		{"", []row{{AlgMaglev, 3 * time.Hour}, {AlgRandom, time.Minute}, {AlgRandom, 0}}},
		{AlgMaglev, []row{{AlgMaglev, 3 * time.Hour}, {AlgRandom, time.Minute}, {AlgMaglev, 0}}},
	} {
		res := Resolve(Input{Objects: objs, DefaultAlgorithm: tt.def})
		var got []row
		for _, f := range res.Frontends {
			got = append(got, row{f.Algorithm, f.AffinityTimeout})
		}
		if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(row{})); diff != "" {
			t.Errorf("default %q (-want +got):\n%s", tt.def, diff)
		}
	}
}

// TestResolveUnparsedObjects feeds objects built in code, without Parse's
// defaults, and ones Parse would refuse: Resolve skips what it cannot use
// and says why.
func TestResolveUnparsedObjects(t *testing.T) {
	objs := []policy.Object{
		{Kind: policy.KindService, Namespace: "default", Name: "raw",
			Annotations: map[string]string{policy.AnnotationLBAlgorithm: "roundrobin"},
			Service: &policy.ServiceSpec{ClusterIP: "10.96.0.5", Selector: map[string]string{"app": "db"},
				Ports: []policy.ServicePort{{Port: 5432}, {Name: "s", Port: 1, Protocol: "SCTP"}, {Name: "big", Port: 70000}}}},
		{Kind: policy.KindService, Namespace: "default", Name: "v6",
			Service: &policy.ServiceSpec{ClusterIP: "fd00::5", Ports: []policy.ServicePort{{Port: 80}}}},
	}
	got := Resolve(Input{Objects: objs, Pods: testPods()})
	want := []Frontend{{Service: "default/raw", Kind: ClusterIP, Addr: addr("10.96.0.5"), Port: 5432, Proto: tcp, Algorithm: AlgRandom,
		Backends: []Backend{pb("10.200.1.9", 5432, tcp, true, false, "n1", "default/db-1")}}}
	if diff := cmp.Diff(want, got.Frontends, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("frontends (-want +got):\n%s", diff)
	}
	wantWarn := []string{
		`service default/raw: unknown load-balancing algorithm "roundrobin", using random`,
		`service default/raw: port s: unsupported protocol "SCTP"; skipped`,
		`service default/raw: port big: 70000 is not a port number; skipped`,
		`service default/v6: cluster IP "fd00::5" is not an IPv4 address; no ClusterIP frontends`,
	}
	if diff := cmp.Diff(wantWarn, got.Warnings); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

// TestResolveDeterministic checks that input order does not matter.
func TestResolveDeterministic(t *testing.T) {
	objs, err := policy.Parse([]byte(
		svc("default", "web", "  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n") +
			svc("default", "dup", "  clusterIP: 10.96.0.10\n  selector: {app: db}\n  ports: [{port: 80}]\n")))
	if err != nil {
		t.Fatal(err)
	}
	pods := testPods()
	first := Resolve(Input{Objects: objs, Pods: pods})
	for i, j := 0, len(pods)-1; i < j; i, j = i+1, j-1 {
		pods[i], pods[j] = pods[j], pods[i]
	}
	objs[0], objs[1] = objs[1], objs[0]
	second := Resolve(Input{Objects: objs, Pods: pods})
	if diff := cmp.Diff(first, second, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("input order changed the result (-first +second):\n%s", diff)
	}
	if len(first.Warnings) != 1 || !strings.Contains(first.Warnings[0], "default/dup") {
		t.Errorf("warnings = %q", first.Warnings)
	}
}

func TestBackendKey(t *testing.T) {
	for _, tt := range []struct {
		b    Backend
		want string
	}{
		{Backend{Addr: addr("10.200.1.5"), Port: 8080, Proto: tcp}, "10.200.1.5:8080/tcp"},
		{Backend{Addr: addr("10.200.1.5"), Port: 53, Proto: udp}, "10.200.1.5:53/udp"},
	} {
		if got := tt.b.Key(); got != tt.want {
			t.Errorf("Key() = %q, want %q", got, tt.want)
		}
	}
}
