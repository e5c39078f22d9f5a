package lab

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"demo", true},
		{"a", true},
		{"lab-1", true},
		{"abcdefghijkl", true},   // 12
		{"abcdefghijklm", false}, // 13
		{"", false},
		{"-a", false},
		{"a-", false},
		{"Demo", false},
		{"a_b", false},
		{"a.b", false},
		{"a/b", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateName(tc.name)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Name != "demo" || c.Dir != "/var/lib/membrane-lab/demo" || c.PodCIDR != netip.MustParsePrefix("10.200.1.0/24") || c.BPFRoot != "/sys/fs/bpf/membrane" {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	if diff := cmp.Diff(DefaultServePorts, c.ServePorts); diff != "" {
		t.Fatal(diff)
	}
	bad := []Config{
		{Name: "x", PodCIDR: netip.MustParsePrefix("10.0.0.1/24")},
		{Name: "x", PodCIDR: netip.MustParsePrefix("fd00::/64")},
		{Name: "x", Dir: "relative"},
		{Name: "x", Dir: "/" + strings.Repeat("d", 80)},
		{Name: "x", BPFRoot: "/"},
		{Name: "x", ServePorts: []Port{{0, "tcp"}}},
		{Name: "x", ServePorts: []Port{{80, "sctp"}}},
	}
	for _, b := range bad {
		if err := b.withDefaults().Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", b)
		}
	}
}

func TestParsePorts(t *testing.T) {
	got, err := ParsePorts("8080/tcp, 9090/UDP,53,8080/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := []Port{{8080, "tcp"}, {9090, "udp"}, {53, "tcp"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
	for _, bad := range []string{"x", "0/tcp", "70000/tcp", "80/sctp", "80/"} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) = nil error", bad)
		}
	}
}

func TestParseNamedPorts(t *testing.T) {
	got, err := ParseNamedPorts("http:80/tcp,dns:53/udp,8080,sig:9/SCTP")
	if err != nil {
		t.Fatal(err)
	}
	want := []api.NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}, {Name: "dns", Port: 53, Protocol: "UDP"}, {Name: "", Port: 8080, Protocol: "TCP"}, {Name: "sig", Port: 9, Protocol: "SCTP"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatal(diff)
	}
	for _, bad := range []string{"http:", "http:0", "http:80/icmp", "a:b:c"} {
		if _, err := ParseNamedPorts(bad); err == nil {
			t.Errorf("ParseNamedPorts(%q) = nil error", bad)
		}
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels("app=web, tier=front,empty=")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"app": "web", "tier": "front", "empty": ""}, got); diff != "" {
		t.Fatal(diff)
	}
	if _, err := ParseLabels("novalue"); err == nil {
		t.Error("want error for a label without =")
	}
}

func TestPodNames(t *testing.T) {
	if err := ValidatePodName("default", "web-1.x"); err != nil {
		t.Error(err)
	}
	for _, bad := range [][2]string{{"", "a"}, {"a.b", "a"}, {"ns", "A"}, {"ns", "a/b"}, {"ns", ""}, {"ns", "-a"}} {
		if err := ValidatePodName(bad[0], bad[1]); err == nil {
			t.Errorf("ValidatePodName(%q, %q) = nil", bad[0], bad[1])
		}
	}
	if got := podNetnsName("demo", "default", "web", false); got != "mbr-demo-default-web" {
		t.Errorf("readable name = %q", got)
	}
	// a-b/c and a/b-c share the readable name; the hashed ones differ.
	if podNetnsName("l", "a-b", "c", false) != podNetnsName("l", "a", "b-c", false) {
		t.Fatal("test premise: readable names should collide")
	}
	if podNetnsName("l", "a-b", "c", true) == podNetnsName("l", "a", "b-c", true) {
		t.Error("hashed names collide")
	}
	long := podNetnsName("abcdefghijkl", strings.Repeat("n", 63), strings.Repeat("p", 200), false)
	if len(long) > maxNetnsName || !strings.HasPrefix(long, "mbr-abcdefghijkl-") {
		t.Errorf("long name %q (%d chars)", long, len(long))
	}
	if nodeNetnsName("demo", "node1") != "mbr-demo-node1" || agentNodeName("demo", "node1") != "demo-node1" {
		t.Error("node names changed")
	}
}

func TestServeArgs(t *testing.T) {
	c := ServeConfig{Name: "default/web", Listen: []netip.Addr{netip.MustParseAddr("10.200.1.5"), netip.MustParseAddr("127.0.0.1")}, TCP: []uint16{8080, 80}, UDP: []uint16{9090}}
	want := []string{"--name", "default/web", "--listen", "10.200.1.5,127.0.0.1", "--tcp", "8080,80", "--udp", "9090"}
	if diff := cmp.Diff(want, c.Args()); diff != "" {
		t.Fatal(diff)
	}
	got := servePorts(DefaultServePorts, []api.NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}, {Name: "x", Port: 8080, Protocol: "TCP"}, {Name: "s", Port: 7, Protocol: "SCTP"}})
	wantPorts := append(append([]Port{}, DefaultServePorts...), Port{80, "tcp"})
	if diff := cmp.Diff(wantPorts, got); diff != "" {
		t.Fatal(diff)
	}
}
