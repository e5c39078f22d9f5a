package cni

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

func sampleAddResponse() api.CNIAddResponse {
	return api.CNIAddResponse{
		Endpoint: api.Endpoint{
			ID: 7, ContainerID: "c0ffee", IfName: "eth0",
			MAC: "0a:58:0a:01:00:05", HostIfName: "lxc1a2b3c", HostMAC: "0a:58:0a:ff:00:01",
		},
		Address: netip.MustParsePrefix("10.1.0.5/32"),
		Gateway: netip.MustParseAddr("10.1.0.1"),
		Routes: []api.Route{
			{Dst: netip.MustParsePrefix("10.1.0.1/32")},
			{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.1.0.1")},
		},
	}
}

// TestResultVersions prints the same result for each supported version and
// compares it with a golden file; it also asserts the one shape difference
// that matters: 0.4.0 ips carry "version", 1.x ips do not.
func TestResultVersions(t *testing.T) {
	for _, ver := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			res, err := BuildResult("eth0", "/var/run/netns/cni-1234", sampleAddResponse())
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			p := &Plugin{Stdout: &buf}
			if err := p.printResult(res, ver); err != nil {
				t.Fatal(err)
			}

			golden := filepath.Join("testdata", "result-"+ver+".json")
			if *update {
				if err := os.WriteFile(golden, append(buf.Bytes(), '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if d := cmp.Diff(string(bytes.TrimSpace(want)), string(bytes.TrimSpace(buf.Bytes()))); d != "" {
				t.Errorf("result differs from %s (-want +got):\n%s", golden, d)
			}

			var shape struct {
				CNIVersion string `json:"cniVersion"`
				Interfaces []struct {
					Name    string `json:"name"`
					Mac     string `json:"mac"`
					Sandbox string `json:"sandbox"`
				} `json:"interfaces"`
				IPs []map[string]any `json:"ips"`
			}
			if err := json.Unmarshal(buf.Bytes(), &shape); err != nil {
				t.Fatal(err)
			}
			if shape.CNIVersion != ver {
				t.Errorf("cniVersion = %q, want %q", shape.CNIVersion, ver)
			}
			if len(shape.Interfaces) != 2 || shape.Interfaces[0].Sandbox != "" || shape.Interfaces[1].Name != "eth0" || shape.Interfaces[1].Sandbox == "" {
				t.Errorf("interfaces = %+v, want host veth then sandboxed eth0", shape.Interfaces)
			}
			if len(shape.IPs) != 1 {
				t.Fatalf("ips = %v", shape.IPs)
			}
			ip := shape.IPs[0]
			if ip["address"] != "10.1.0.5/32" || ip["gateway"] != "10.1.0.1" || ip["interface"] != float64(1) {
				t.Errorf("ip = %v", ip)
			}
			_, hasVersion := ip["version"]
			if wantVersion := ver == "0.4.0"; hasVersion != wantVersion {
				t.Errorf("ips[0] has version field = %v, want %v", hasVersion, wantVersion)
			}
		})
	}
}

func TestBuildResultWithoutHostInterface(t *testing.T) {
	resp := sampleAddResponse()
	resp.Endpoint.HostIfName = ""
	resp.Gateway = netip.Addr{}
	resp.Routes = nil
	res, err := BuildResult("net1", "/proc/42/ns/net", resp)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Interfaces) != 1 || res.Interfaces[0].Name != "net1" || *res.IPs[0].Interface != 0 {
		t.Errorf("interfaces %+v ip interface %d", res.Interfaces, *res.IPs[0].Interface)
	}
	if res.IPs[0].Gateway != nil {
		t.Errorf("gateway = %v, want none", res.IPs[0].Gateway)
	}
}

func TestBuildResultRefusesEmptyAnswer(t *testing.T) {
	if _, err := BuildResult("eth0", "/x", api.CNIAddResponse{}); err == nil {
		t.Fatal("no error for a response without address")
	}
	resp := sampleAddResponse()
	resp.Routes = append(resp.Routes, api.Route{})
	if _, err := BuildResult("eth0", "/x", resp); err == nil {
		t.Fatal("no error for a route without destination")
	}
}
