package agent

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.NodeName = "node1"
	if err := ok.Validate(); err != nil {
		t.Fatalf("default config invalid: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"node name", func(c *Config) { c.NodeName = "Node_1" }, "--node-name"},
		{"relative state dir", func(c *Config) { c.StateDir = "state" }, "--state-dir"},
		{"relative socket", func(c *Config) { c.SocketPath = "a.sock" }, "--socket"},
		{"long socket", func(c *Config) { c.SocketPath = "/" + strings.Repeat("s", 120) }, "unix socket limit"},
		{"bad cidr", func(c *Config) { c.PodCIDR = "10.200.0.0/33" }, "--pod-cidr"},
		{"host bits", func(c *Config) { c.PodCIDR = "10.200.0.1/24" }, "did you mean 10.200.0.0/24"},
		{"ipv6", func(c *Config) { c.PodCIDR = "fd00::/120" }, "only IPv4"},
		{"too small", func(c *Config) { c.PodCIDR = "10.200.0.0/31" }, "/12 to /30"},
		{"outside cluster", func(c *Config) { c.PodCIDR = "10.9.0.0/24" }, "not inside --cluster-cidr"},
		{"cluster", func(c *Config) { c.ClusterCIDR = "10.200.0.0/28" }, "--cluster-cidr"},
		{"node ip", func(c *Config) { c.NodeIP = "node1" }, "--node-ip"},
		{"routing mode", func(c *Config) { c.RoutingMode = "gre" }, "--routing-mode"},
		{"peers without asn", func(c *Config) { c.BGPPeers = "172.30.0.1:64512" }, "needs --bgp-asn"},
		{"bad peers", func(c *Config) { c.BGPASN = 64601; c.BGPPeers = "172.30.0.1" }, "--bgp-peers"},
		{"lease ttl", func(c *Config) { c.NodeLeaseTTL = time.Second }, "--node-lease-ttl"},
		{"map size", func(c *Config) { c.EndpointMapSize = 1 }, "--endpoint-map-size"},
		{"mtu", func(c *Config) { c.MTU = 100 }, "--mtu"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want error mentioning %q", err, tc.want)
			}
		})
	}
}
