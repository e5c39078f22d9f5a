// Package bgp embeds a GoBGP speaker in the agent for native routing: it
// peers with the configured routers and advertises this node's pod CIDR
// with the node IP as next hop, so pod traffic crosses nodes without
// encapsulation over the routes the routers learn. It never installs
// routes into the node's kernel; nodes reach remote pod CIDRs through their
// router. Start/Stop own the speaker's goroutines.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	gapi "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Peer is a BGP neighbor.
type Peer struct {
	Address netip.Addr
	ASN     uint32
}

// ParsePeers parses "IP:ASN[,IP:ASN]".
func ParsePeers(s string) ([]Peer, error) {
	var out []Peer
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ip, asn, ok := strings.Cut(item, ":")
		if !ok {
			return nil, fmt.Errorf("BGP peer %q: want IP:ASN", item)
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("BGP peer %q: %w", item, err)
		}
		n, err := strconv.ParseUint(asn, 10, 32)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("BGP peer %q: ASN %q is not a number 1-4294967295", item, asn)
		}
		out = append(out, Peer{Address: a, ASN: uint32(n)})
	}
	return out, nil
}

// Config of the speaker.
type Config struct {
	ASN      uint32
	RouterID netip.Addr
	Peers    []Peer
	// Advertise are the prefixes announced, with NextHop as next hop.
	Advertise []netip.Prefix
	NextHop   netip.Addr
	// ListenPort, if non-zero, makes the speaker accept sessions (tests);
	// the agent only connects actively.
	ListenPort int32
	// ListenAddress restricts the listener (default: all addresses).
	ListenAddress string
	// PeerPort overrides the TCP port used to reach peers (tests); 0 = 179.
	PeerPort uint32
	// RestartTime, if non-zero, announces graceful restart (RFC 4724) for
	// IPv4 unicast with this restart time: when the agent goes away
	// without closing its sessions (Abandon), routers keep its routes
	// (stale) until it is back or the time has passed.
	RestartTime time.Duration
	Logger      *slog.Logger
}

// Speaker is a running BGP speaker.
type Speaker struct {
	cfg Config
	s   *server.BgpServer
}

// Start configures and starts the speaker. It returns once the peers are
// configured; sessions come up in the background.
func Start(ctx context.Context, cfg Config) (_ *Speaker, retErr error) {
	if cfg.ASN == 0 {
		return nil, errors.New("start BGP: ASN is 0")
	}
	if !cfg.RouterID.Is4() {
		return nil, fmt.Errorf("start BGP: router id %v must be an IPv4 address", cfg.RouterID)
	}
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn)
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := server.NewBgpServer(server.LoggerOption(log.With("component", "gobgp"), lvl))
	go s.Serve()
	sp := &Speaker{cfg: cfg, s: s}
	defer func() {
		if retErr != nil {
			sp.Stop()
		}
	}()
	g := &gapi.Global{Asn: cfg.ASN, RouterId: cfg.RouterID.String(), ListenPort: -1} // connect actively only
	if cfg.ListenPort != 0 {
		g.ListenPort = cfg.ListenPort
		if cfg.ListenAddress != "" {
			g.ListenAddresses = []string{cfg.ListenAddress}
		}
	}
	if err := s.StartBgp(ctx, &gapi.StartBgpRequest{Global: g}); err != nil {
		return nil, fmt.Errorf("start BGP (AS %d, router id %s): %w", cfg.ASN, cfg.RouterID, err)
	}
	for _, p := range cfg.Peers {
		peer := &gapi.Peer{
			Conf: &gapi.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN},
			Timers: &gapi.Timers{Config: &gapi.TimersConfig{
				ConnectRetry: 2, HoldTime: 9, KeepaliveInterval: 3,
			}},
			Transport: transport(cfg),
		}
		if cfg.RestartTime > 0 {
			peer.GracefulRestart = &gapi.GracefulRestart{Enabled: true, RestartTime: uint32(cfg.RestartTime / time.Second)}
			peer.AfiSafis = []*gapi.AfiSafi{{
				Config:            &gapi.AfiSafiConfig{Family: &gapi.Family{Afi: gapi.Family_AFI_IP, Safi: gapi.Family_SAFI_UNICAST}, Enabled: true},
				MpGracefulRestart: &gapi.MpGracefulRestart{Config: &gapi.MpGracefulRestartConfig{Enabled: true}},
			}}
		}
		err := s.AddPeer(ctx, &gapi.AddPeerRequest{Peer: peer})
		if err != nil {
			return nil, fmt.Errorf("add BGP peer %s AS %d: %w", p.Address, p.ASN, err)
		}
	}
	for _, pfx := range cfg.Advertise {
		nlri, err := bgp.NewIPAddrPrefix(pfx)
		if err != nil {
			return nil, fmt.Errorf("advertise %s: %w", pfx, err)
		}
		nh, err := bgp.NewPathAttributeNextHop(cfg.NextHop)
		if err != nil {
			return nil, fmt.Errorf("advertise %s: next hop %s: %w", pfx, cfg.NextHop, err)
		}
		resp, err := s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{{
			Family: bgp.RF_IPv4_UC, Nlri: nlri,
			Attrs: []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(0), nh},
		}}})
		if err == nil && len(resp) > 0 && resp[0].Error != nil {
			err = resp[0].Error
		}
		if err != nil {
			return nil, fmt.Errorf("advertise %s: %w", pfx, err)
		}
	}
	return sp, nil
}

// transport binds sessions to the next-hop address, so peers see the node
// IP as the session's source.
func transport(cfg Config) *gapi.Transport {
	t := &gapi.Transport{RemotePort: cfg.PeerPort}
	if cfg.NextHop.IsValid() {
		t.LocalAddress = cfg.NextHop.String()
	}
	return t
}

// Abandon leaves the sessions to die with the process, without the
// NOTIFICATION that Stop sends: with graceful restart the routers keep this
// node's routes while the agent restarts. The process must exit soon after.
func (sp *Speaker) Abandon() {}

// Stop shuts the speaker down (sessions close; routers withdraw the routes).
func (sp *Speaker) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = sp.s.StopBgp(ctx, &gapi.StopBgpRequest{})
	sp.s.Stop()
}

// PeerStatus describes one session.
type PeerStatus struct {
	Address  string `json:"address"`
	ASN      uint32 `json:"asn"`
	State    string `json:"state"` // established, active, connect, idle, ...
	Uptime   string `json:"uptime,omitempty"`
	Received uint64 `json:"received"`
	Accepted uint64 `json:"accepted"`
	Sent     uint64 `json:"advertised"`
}

// Peers lists the sessions.
func (sp *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	err := sp.s.ListPeer(ctx, &gapi.ListPeerRequest{EnableAdvertised: true}, func(p *gapi.Peer) {
		ps := PeerStatus{Address: p.GetConf().GetNeighborAddress(), ASN: p.GetConf().GetPeerAsn()}
		st := p.GetState().GetSessionState().String()
		ps.State = strings.ToLower(strings.TrimPrefix(st, "SESSION_STATE_"))
		if up := p.GetTimers().GetState().GetUptime(); up != nil && ps.State == "established" {
			ps.Uptime = time.Since(up.AsTime()).Truncate(time.Second).String()
		}
		for _, af := range p.GetAfiSafis() {
			ps.Received += af.GetState().GetReceived()
			ps.Accepted += af.GetState().GetAccepted()
			ps.Sent += af.GetState().GetAdvertised()
		}
		out = append(out, ps)
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, err
}

// Route is one path of the speaker's table.
type Route struct {
	Prefix  string `json:"prefix"`
	NextHop string `json:"nextHop"`
	Local   bool   `json:"local"` // originated by this node
	Peer    string `json:"peer,omitempty"`
	Best    bool   `json:"best"`
}

// Routes lists the global RIB.
func (sp *Speaker) Routes() ([]Route, error) {
	var out []Route
	err := sp.s.ListPath(apiutil.ListPathRequest{TableType: gapi.TableType_TABLE_TYPE_GLOBAL, Family: bgp.RF_IPv4_UC},
		func(prefix bgp.NLRI, paths []*apiutil.Path) {
			for _, p := range paths {
				r := Route{Prefix: prefix.String(), Best: p.Best, Local: !p.PeerAddress.IsValid() || p.PeerAddress.IsUnspecified()}
				if !r.Local {
					r.Peer = p.PeerAddress.String()
				}
				for _, a := range p.Attrs {
					if nh, ok := a.(*bgp.PathAttributeNextHop); ok {
						r.NextHop = nh.Value.String()
					}
				}
				out = append(out, r)
			}
		})
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix < out[j].Prefix })
	return out, err
}
