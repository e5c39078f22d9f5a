package bgp

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

func TestParsePeers(t *testing.T) {
	got, err := ParsePeers("172.30.0.1:64512, 172.30.0.2:65000")
	if err != nil || len(got) != 2 || got[1].ASN != 65000 || got[0].Address.String() != "172.30.0.1" {
		t.Fatalf("ParsePeers = %+v, %v", got, err)
	}
	for _, bad := range []string{"1.2.3.4", "x:1", "1.2.3.4:0", "1.2.3.4:abc"} {
		if _, err := ParsePeers(bad); err == nil {
			t.Errorf("ParsePeers(%q) accepted", bad)
		}
	}
}

// Two speakers on loopback (no root): the node advertises its pod CIDR and
// the "router" learns it with the node as next hop.
func TestAdvertiseToPeer(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	router, err := Start(ctx, Config{ASN: 64512, RouterID: netip.MustParseAddr("127.0.0.1"), ListenPort: 17179, ListenAddress: "127.0.0.1",
		Peers: []Peer{{Address: netip.MustParseAddr("127.0.0.2"), ASN: 64601}}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer router.Stop()
	node, err := Start(ctx, Config{ASN: 64601, RouterID: netip.MustParseAddr("127.0.0.2"), PeerPort: 17179,
		Peers:     []Peer{{Address: netip.MustParseAddr("127.0.0.1"), ASN: 64512}},
		Advertise: []netip.Prefix{netip.MustParsePrefix("10.200.7.0/24")}, NextHop: netip.MustParseAddr("127.0.0.2"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Stop()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		routes, err := router.Routes()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Prefix == "10.200.7.0/24" && r.NextHop == "127.0.0.2" && !r.Local {
				peers, _ := node.Peers(ctx)
				if len(peers) != 1 || peers[0].State != "established" {
					t.Errorf("node peers = %+v", peers)
				}
				local, _ := node.Routes()
				if len(local) != 1 || !local[0].Local {
					t.Errorf("node routes = %+v", local)
				}
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	peers, _ := node.Peers(ctx)
	t.Fatalf("router never learned 10.200.7.0/24; node peers: %+v", peers)
}
