package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/lab"
)

const servicesManifest = `
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
  - {name: dns, port: 53, targetPort: 9090, protocol: UDP, nodePort: 30053}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: mag
  annotations: {membrane.io/lb-algorithm: maglev}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 9090, targetPort: 9090, protocol: UDP, nodePort: 30090}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: external}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: external-1
  labels: {kubernetes.io/service-name: external}
addressType: IPv4
endpoints:
- addresses: [%s]
ports: [{name: http, port: 8080, protocol: TCP}]
`

// dial runs `membrane lab dial` inside target (its netns and cgroup) and
// parses the report; a failed attempt is not an error here.
func dial(t *testing.T, ctx context.Context, l *lab.Lab, target string, args ...string) lab.DialReport {
	t.Helper()
	argv := append([]string{binaries(t) + "/membrane", "lab", "dial"}, args...)
	out, _ := l.Exec(ctx, target, argv...)
	rep, err := lab.ParseDialReport(string(out))
	if err != nil {
		t.Fatalf("dial from %s %v: %v\n%s", target, args, err, out)
	}
	return rep
}

func clusterIP(t *testing.T, ctx context.Context, c *api.Client, name string, port uint16) netip.AddrPort {
	t.Helper()
	s, err := c.Service(ctx, "default/"+name)
	if err != nil {
		t.Fatalf("service %s: %v", name, err)
	}
	for _, f := range s.Frontends {
		if f.Kind == "ClusterIP" && f.Address.Port() == port {
			return f.Address
		}
	}
	t.Fatalf("service %s has no cluster IP frontend on port %d: %+v", name, port, s)
	return netip.AddrPort{}
}

// activeBackends counts the active backends of a frontend as node c sees it.
func activeBackends(ctx context.Context, c *api.Client, name string, fe netip.AddrPort) int {
	s, err := c.Service(ctx, "default/"+name)
	if err != nil {
		return -1
	}
	n := 0
	for _, f := range s.Frontends {
		if f.Address == fe {
			for _, b := range f.Backends {
				if b.State == "active" {
					n++
				}
			}
		}
	}
	return n
}

// TestServices: three nodes, on the overlay and natively routed; services
// with backends on every node, reached from pods and hosts of every node,
// from the external host through NodePorts, with readiness, removal,
// affinity, Maglev and a service without backends.
func TestServices(t *testing.T) {
	for _, mode := range []string{lab.ModeVXLAN, lab.ModeNative} {
		t.Run(mode, func(t *testing.T) { testServices(t, mode) })
	}
}

func testServices(t *testing.T, mode string) {
	l := newClusterLab(t, mode, lab.EtcdEmbedded, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	nodes := []string{"node1", "node2", "node3"}
	web := map[string]lab.Pod{}
	for i, n := range nodes {
		name := "web-" + strconv.Itoa(i+1)
		p, err := l.AddPod(ctx, lab.PodSpec{Name: name, Labels: map[string]string{"app": "web"}, Node: n})
		if err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		web["default/"+name] = p
		if _, err := l.AddPod(ctx, lab.PodSpec{Name: "client-" + strconv.Itoa(i+1), Labels: map[string]string{"app": "client"}, Node: n}); err != nil {
			t.Fatalf("add client on %s: %v", n, err)
		}
	}
	// Every pod reaches every pod first (native mode learns routes by BGP).
	eventually(t, 60*time.Second, "pods reach each other across nodes", func() bool {
		m, err := l.Probe(ctx, lab.ProbeSpec{Proto: "tcp", Port: 8080, Timeout: time.Second})
		return err == nil && m.Full()
	})
	c1 := nodeClient(t, l, "node1")
	if _, err := c1.Apply(ctx, api.ApplyRequest{Manifest: fmt.Sprintf(servicesManifest, web["default/web-3"].IP), Wait: true}); err != nil {
		t.Fatalf("apply services: %v", err)
	}
	vip := clusterIP(t, ctx, c1, "web", 80)
	dnsVIP := clusterIP(t, ctx, c1, "web", 53)
	for _, n := range nodes {
		c := nodeClient(t, l, n)
		eventually(t, 30*time.Second, n+" sees three active backends of web", func() bool {
			return activeBackends(ctx, c, "web", vip) == 3
		})
	}

	t.Run("cluster IP from pods on every node", func(t *testing.T) {
		for i := range nodes {
			rep := dial(t, ctx, l, "client-"+strconv.Itoa(i+1), "--count", "15", "--peer", vip.String())
			if rep.Failed > 0 {
				t.Errorf("client-%d: %d of 15 failed: %s", i+1, rep.Failed, rep.FirstError())
			}
			if len(rep.Answers) < 2 {
				t.Errorf("client-%d: 15 connections reached only %v", i+1, rep.Answers)
			}
			for _, a := range rep.Attempts {
				if a.OK && a.Peer != vip {
					t.Errorf("client-%d: getpeername %s, want the service address %s", i+1, a.Peer, vip)
					break
				}
			}
		}
	})

	t.Run("cluster IP from every node's host", func(t *testing.T) {
		for _, n := range nodes {
			if rep := dial(t, ctx, l, n, "--count", "6", vip.String()); rep.Failed > 0 {
				t.Errorf("%s: %d of 6 failed: %s", n, rep.Failed, rep.FirstError())
			}
		}
	})

	t.Run("UDP replies come from the service address", func(t *testing.T) {
		rep := dial(t, ctx, l, "client-1", "--proto", "udp", "--reuse-udp", "--count", "4", dnsVIP.String())
		if rep.Failed > 0 {
			t.Fatalf("%d of 4 failed: %s", rep.Failed, rep.FirstError())
		}
		for _, a := range rep.Attempts {
			if a.From != dnsVIP {
				t.Errorf("reply from %s, want %s", a.From, dnsVIP)
			}
		}
		if len(rep.Answers) != 1 {
			t.Errorf("one unconnected socket was served by %v, want one backend", rep.Answers)
		}
		if rep := dial(t, ctx, l, "client-2", "--proto", "udp", "--count", "6", dnsVIP.String()); rep.Failed > 0 {
			t.Errorf("connected UDP: %d of 6 failed: %s", rep.Failed, rep.FirstError())
		}
	})

	t.Run("cluster IP by the packet path, from outside the node's cgroup", func(t *testing.T) {
		// ip netns exec keeps this test's cgroup, which no lab node's
		// socket hooks cover: only from_container can translate.
		client := pod(t, l, "default/client-1")
		for _, args := range [][]string{
			{"--count", "15", vip.String()},
			{"--proto", "udp", "--count", "6", dnsVIP.String()},
		} {
			argv := append([]string{"netns", "exec", client.Netns, binaries(t) + "/membrane", "lab", "dial"}, args...)
			out, _ := exec.CommandContext(ctx, "ip", argv...).CombinedOutput()
			rep, err := lab.ParseDialReport(string(out))
			if err != nil {
				t.Fatalf("dial %v: %v\n%s", args, err, out)
			}
			if rep.Failed > 0 {
				t.Errorf("dial %v: %d failed: %s", args, rep.Failed, rep.FirstError())
			}
			if len(rep.Answers) < 2 {
				t.Errorf("dial %v: reached only %v", args, rep.Answers)
			}
		}
	})

	t.Run("selectorless service with an EndpointSlice", func(t *testing.T) {
		ext := clusterIP(t, ctx, c1, "external", 80)
		rep := dial(t, ctx, l, "client-1", "--count", "4", ext.String())
		if rep.Failed > 0 || rep.Answers["default/web-3"] != 4 {
			t.Errorf("got %v (%s), want web-3 four times", rep.Answers, rep.FirstError())
		}
	})

	t.Run("a not-ready backend gets no new connections", func(t *testing.T) {
		c2 := nodeClient(t, l, "node2")
		notReady, ready := "not-ready", "ready"
		ep, err := c2.Endpoint(ctx, "default/web-2")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c2.PatchEndpoint(ctx, ep.ID, api.EndpointPatch{Readiness: &notReady}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node1 sees web-2 not ready", func() bool { return activeBackends(ctx, c1, "web", vip) == 2 })
		rep := dial(t, ctx, l, "client-1", "--count", "20", vip.String())
		if rep.Failed > 0 || rep.Answers["default/web-2"] > 0 {
			t.Errorf("with web-2 not ready: %v (%s)", rep.Answers, rep.FirstError())
		}
		if _, err := c2.PatchEndpoint(ctx, ep.ID, api.EndpointPatch{Readiness: &ready}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node1 sees web-2 ready again", func() bool { return activeBackends(ctx, c1, "web", vip) == 3 })
	})

	t.Run("affinity keeps a client on one backend", func(t *testing.T) {
		sticky := clusterIP(t, ctx, c1, "sticky", 80)
		for _, client := range []string{"client-1", "client-3"} {
			rep := dial(t, ctx, l, client, "--count", "12", sticky.String())
			if rep.Failed > 0 || len(rep.Answers) != 1 {
				t.Errorf("%s: %v (%s), want one backend throughout", client, rep.Answers, rep.FirstError())
			}
		}
	})

	t.Run("an agent restart keeps ids and service connections", func(t *testing.T) {
		before, err := c1.BPFLB(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.RestartAgent(ctx, "node1"); err != nil {
			t.Fatal(err)
		}
		after, err := c1.BPFLB(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ids := func(d api.BPFLB) map[string]uint32 {
			m := map[string]uint32{}
			for _, b := range d.Backends {
				m[b.Address.String()+"/"+b.Protocol] = b.ID
			}
			for _, s := range d.Services {
				m[s.Frontend.String()+"/"+s.Protocol] = uint32(s.RevNatID)
			}
			return m
		}
		if b, a := ids(before), ids(after); fmt.Sprint(b) != fmt.Sprint(a) {
			t.Errorf("ids changed across the restart:\nbefore %v\nafter  %v", b, a)
		}
		if rep := dial(t, ctx, l, "client-1", "--count", "6", vip.String()); rep.Failed > 0 {
			t.Errorf("after the restart: %d of 6 failed: %s", rep.Failed, rep.FirstError())
		}
	})

	t.Run("NodePort from the external host via every node", func(t *testing.T) {
		for _, n := range nodes {
			node, err := l.NodeByName(n)
			if err != nil {
				t.Fatal(err)
			}
			target := netip.AddrPortFrom(node.IP, 30080).String()
			rep := dial(t, ctx, l, "ext", "--count", "12", target)
			if rep.Failed > 0 {
				t.Errorf("via %s: %d of 12 failed: %s", n, rep.Failed, rep.FirstError())
			}
			if len(rep.Answers) < 2 {
				t.Errorf("via %s: 12 connections reached only %v", n, rep.Answers)
			}
		}
	})

	t.Run("Maglev keeps most flows on their backend when one goes", func(t *testing.T) {
		n1, _ := l.NodeByName("node1")
		n2, _ := l.NodeByName("node2")
		const flows = 60
		before := dial(t, ctx, l, "ext", "--proto", "udp", "--count", strconv.Itoa(flows), "--source-port", "40000",
			netip.AddrPortFrom(n1.IP, 30090).String())
		if before.Failed > 0 {
			t.Fatalf("before: %d of %d failed: %s", before.Failed, flows, before.FirstError())
		}
		if len(before.Answers) < 3 {
			t.Fatalf("%d flows reached only %v, want all three backends", flows, before.Answers)
		}
		if err := l.DelPod(ctx, "default", "web-1"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "node2 drops web-1", func() bool {
			return activeBackends(ctx, nodeClient(t, l, "node2"), "mag", netip.AddrPortFrom(n2.IP, 30090)) == 2
		})
		// The same flows through another node, which has never seen them:
		// only Maglev can give them the same backends.
		after := dial(t, ctx, l, "ext", "--proto", "udp", "--count", strconv.Itoa(flows), "--source-port", "40000",
			netip.AddrPortFrom(n2.IP, 30090).String())
		if after.Failed > 0 {
			t.Fatalf("after: %d of %d failed: %s", after.Failed, flows, after.FirstError())
		}
		if n := after.Answers["default/web-1"]; n > 0 {
			t.Errorf("the deleted backend web-1 still answered %d flows", n)
		}
		if rep := dial(t, ctx, l, "client-2", "--count", "15", vip.String()); rep.Failed > 0 || rep.Answers["default/web-1"] > 0 {
			t.Errorf("cluster IP after web-1 was deleted: %v (%s)", rep.Answers, rep.FirstError())
		}
		kept, moved := 0, 0
		for i, a := range before.Attempts {
			if a.Answer == "default/web-1" {
				continue
			}
			if after.Attempts[i].Answer == a.Answer {
				kept++
			} else {
				moved++
			}
		}
		t.Logf("flows not on the removed backend: %d kept their backend, %d moved", kept, moved)
		if kept+moved == 0 || float64(kept) < 0.85*float64(kept+moved) {
			t.Errorf("%d of %d flows kept their backend, want ≥ 85%%", kept, kept+moved)
		}
	})

	t.Run("a service without backends is refused and counted", func(t *testing.T) {
		empty := clusterIP(t, ctx, c1, "empty", 80)
		rep := dial(t, ctx, l, "client-1", "--count", "2", empty.String())
		if rep.OK > 0 || !strings.Contains(rep.FirstError(), "operation not permitted") {
			t.Fatalf("got %+v, want connect refused with operation not permitted", rep)
		}
		var drops int
		err := c1.Flows(ctx, api.FlowQuery{Verdict: "DROPPED"}, func(f api.Flow) error {
			if f.DropReason == "NO_SERVICE_BACKEND" {
				drops++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if drops < 2 {
			t.Errorf("%d NO_SERVICE_BACKEND drops among the flows, want ≥ 2", drops)
		}
	})
}
