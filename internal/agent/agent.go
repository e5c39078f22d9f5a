package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/bgp"
	"github.com/membrane-net/membrane/internal/datapath/link"
	"github.com/membrane-net/membrane/internal/datapath/loader"
	"github.com/membrane-net/membrane/internal/endpoint"
	"github.com/membrane-net/membrane/internal/identity"
	"github.com/membrane-net/membrane/internal/ipam"
	"github.com/membrane-net/membrane/internal/kvstore"
	"github.com/membrane-net/membrane/internal/metrics"
)

// bgpRestartTime is how long BGP peers keep this node's routes after its
// agent went away without closing its sessions (graceful restart).
const bgpRestartTime = 120 * time.Second

// Version is set at build time.
var Version = "dev"

// Agent is one node's agent.
type Agent struct {
	cfg          Config
	log          *slog.Logger
	pool         netip.Prefix
	cluster      netip.Prefix
	nodeIP       netip.Addr
	monitorLevel loader.MonitorLevel

	session     *kvstore.Session
	clusterSync *clusterSync
	bgp         *bgp.Speaker
	router      netip.Addr
	startedAt   time.Time

	kv     *kvstore.Store
	dp     *loader.Datapath
	alloc  *ipam.HostScope
	eps    *endpoint.Manager
	server *api.Server

	resources *kvstore.ResourceStore
	idAlloc   *kvstore.IdentityAllocator
	idCache   *identity.Cache
	policy    *policyEngine
	services  *serviceEngine

	obs        *observer
	metrics    *metrics.Metrics
	metricsSrv *metrics.Server

	cancel context.CancelFunc // stops background goroutines
	wg     sync.WaitGroup
}

// New validates cfg and returns an agent ready to Start.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	level, _ := loader.ParseMonitorLevel(cfg.MonitorLevel)
	a := &Agent{cfg: cfg, log: log, monitorLevel: level}
	a.cluster, _ = cfg.Cluster()
	if cfg.PodCIDR != "" {
		a.pool, _ = cfg.Prefix()
		a.router = ipam.RouterAddr(a.pool)
	}
	a.metrics = metrics.New(metricsSource{a})
	return a, nil
}

// Start brings the agent up. On error everything started so far is stopped
// (BPF pins and devices stay: they belong to the node, not to this run).
func (a *Agent) Start(ctx context.Context) (retErr error) {
	a.startedAt = time.Now().UTC()
	defer func() {
		if retErr != nil {
			a.Stop(context.WithoutCancel(ctx))
		}
	}()
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", a.cfg.StateDir, err)
	}
	kv, err := kvstore.Open(ctx, kvstore.Config{
		Endpoints: a.cfg.KvstoreEndpoints,
		DataDir:   filepath.Join(a.cfg.StateDir, "etcd"),
		Logger:    a.log,
		OnOp: func(method string, err error) {
			outcome := "ok"
			if err != nil {
				outcome = "error"
			}
			a.metrics.KvstoreOps.WithLabelValues(method, outcome).Inc()
		},
	})
	if err != nil {
		return fmt.Errorf("open kvstore: %w", err)
	}
	a.kv = kv
	a.log.Info("kvstore connected", "mode", kv.Mode(), "endpoints", kv.Endpoints())

	// The pod CIDR: claimed (given) or allocated from the cluster CIDR.
	if a.pool.IsValid() {
		if err := kvstore.ClaimPodCIDR(ctx, kv.Client, a.cfg.NodeName, a.pool); err != nil {
			return err
		}
	} else {
		p, err := kvstore.AllocatePodCIDR(ctx, kv.Client, a.cfg.NodeName, a.cluster, 24)
		if err != nil {
			return err
		}
		a.pool, a.router = p, ipam.RouterAddr(p)
		a.log.Info("pod CIDR allocated from the cluster pool", "podCIDR", p, "cluster", a.cluster)
	}
	a.nodeIP = a.router
	if a.cfg.NodeIP != "" {
		a.nodeIP = netip.MustParseAddr(a.cfg.NodeIP)
	} else if ip, ok := link.DetectNodeIP(); ok {
		a.nodeIP = ip
	}

	if err := link.EnsureBPFFS(filepath.Dir(a.cfg.BPFRoot)); err != nil {
		return err
	}
	npMin, npMax, _ := a.cfg.NodePorts()
	svcCIDR, _ := a.cfg.ServicePrefix()
	dp, err := loader.Load(loader.Config{
		PinDir:          a.cfg.PinDir(),
		RouterIPv4:      a.router,
		EndpointMapSize: a.cfg.EndpointMapSize,
		IPCacheSize:     a.cfg.IPCacheSize,
		PolicyMapSize:   a.cfg.PolicyMapSize,
		CTTCPSize:       a.cfg.CTTCPSize,
		CTAnySize:       a.cfg.CTAnySize,
		EventsRingSize:  a.cfg.EventsRingSize,
		MonitorLevel:    a.monitorLevel,
		TunnelMapSize:   a.cfg.TunnelMapSize,
		RoutingMode:     a.cfg.RoutingMode,
		LBMapSize:       a.cfg.LBMapSize,
		LBMaglevSize:    a.cfg.LBMaglevSize,
		NodePortMin:     npMin,
		NodePortMax:     npMax,
		ServiceCIDR:     svcCIDR,
		Logger:          a.log,
	})
	if err != nil {
		return fmt.Errorf("load datapath: %w", err)
	}
	a.dp = dp

	hd, err := link.EnsureHostDevices(link.HostConfig{RouterIP: a.router, PodCIDR: a.pool, MTU: a.cfg.MTU})
	if err != nil {
		return err
	}
	if err := dp.AttachHost(link.NetDevice, hd.NetIfIndex); err != nil {
		return fmt.Errorf("attach from-host program to %s: %w", link.NetDevice, err)
	}
	if err := a.attachNodePort(); err != nil {
		return err
	}
	podMTU := a.cfg.MTU
	if a.cfg.RoutingMode == "vxlan" {
		// The overlay: mbr_vxlan with the from-overlay program, and the
		// cluster CIDR routed into mbr_host so the node's own traffic to
		// remote pods is tunnelled by from_host. VXLAN costs 50 bytes.
		podMTU = a.cfg.MTU - 50
		ifindex, err := link.EnsureVXLAN(a.nodeIP, podMTU)
		if err != nil {
			return err
		}
		if err := dp.AttachOverlay(link.OverlayDevice, ifindex); err != nil {
			return fmt.Errorf("attach from-overlay program to %s: %w", link.OverlayDevice, err)
		}
		if err := dp.SetOverlayDevice(ifindex); err != nil {
			return err
		}
		if err := link.EnsureClusterRoute(a.cluster, a.router, podMTU); err != nil {
			return err
		}
	}
	// Native routing forwards between the network and mbr_host; NodePort
	// needs forwarding in both modes (the datapath's FIB lookups refuse
	// devices that do not forward).
	if err := link.EnableForwarding(); err != nil {
		return err
	}

	alloc, err := ipam.NewHostScope(ctx, a.pool, kvstore.NewIPAMStore(kv.Client, a.cfg.NodeName))
	if err != nil {
		return err
	}
	a.alloc = alloc
	eps, err := endpoint.NewManager(endpoint.Config{StateDir: a.cfg.StateDir, Router: a.router, MTU: podMTU, Logger: a.log},
		alloc, osLinks{}, dp)
	if err != nil {
		return err
	}
	if err := eps.Restore(ctx); err != nil {
		// Endpoints that restored keep working; the rest are reported.
		a.log.Error("some endpoints could not be restored", "err", err)
	}
	a.eps = eps

	// Socket-level service translation for every process of the node
	// (and its pods, whose cgroups lie below).
	cgRoot, err := a.cfg.cgroupRoot()
	if err != nil {
		return err
	}
	if err := dp.AttachCgroup(cgRoot); err != nil {
		return err
	}
	a.log.Info("socket hooks attached", "cgroup", cgRoot)

	// The policy and service engines exist before anything can ask them
	// (flow enrichment, API); they compute for the first time further
	// down.
	a.services = newServiceEngine(a)
	a.policy = newPolicyEngine(a)

	// Flow events: read from the ring buffer into the flow store.
	a.obs = newObserver(a, a.cfg.FlowBufferSize)
	rd, err := dp.OpenEvents()
	if err != nil {
		return fmt.Errorf("open datapath events: %w", err)
	}
	a.obs.reader = rd
	a.wg.Add(1)
	go func() { defer a.wg.Done(); a.obs.run() }()

	// Identities, resources and the policy engine. The first computation
	// happens before the API opens, so restored endpoints are governed by
	// current policy before anything new arrives.
	a.resources = kvstore.NewResourceStore(kv.Client)
	a.idAlloc = kvstore.NewIdentityAllocator(kv.Client, a.cfg.NodeName, 60*time.Second)
	a.idCache = identity.NewCache(a.idAlloc)
	if err := a.policy.reload(ctx); err != nil {
		a.log.Error("initial policy computation failed; endpoints keep their previous datapath state", "err", err)
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel

	// The cluster: this node's leased registration and endpoint records,
	// and a watcher that turns other nodes into tunnel and ipcache
	// entries.
	a.session = kvstore.NewSession(kv.Client, a.cfg.NodeLeaseTTL, a.log)
	a.clusterSync = newClusterSync(a)
	if err := a.clusterSync.register(ctx); err != nil {
		return err
	}
	a.wg.Add(4)
	go func() { defer a.wg.Done(); a.session.Run(bg) }()
	go func() { defer a.wg.Done(); a.clusterSync.watch(bg) }()
	go func() { defer a.wg.Done(); a.policy.watch(bg) }()
	go func() { defer a.wg.Done(); a.ctGC(bg) }()

	if a.cfg.BGPASN != 0 {
		peers, _ := bgp.ParsePeers(a.cfg.BGPPeers)
		rid := a.nodeIP
		if a.cfg.BGPRouterID != "" {
			rid = netip.MustParseAddr(a.cfg.BGPRouterID)
		}
		sp, err := bgp.Start(ctx, bgp.Config{ASN: a.cfg.BGPASN, RouterID: rid, Peers: peers,
			Advertise: []netip.Prefix{a.pool}, NextHop: a.nodeIP, RestartTime: bgpRestartTime, Logger: a.log})
		if err != nil {
			return err
		}
		a.bgp = sp
		a.log.Info("BGP speaker started", "asn", a.cfg.BGPASN, "peers", a.cfg.BGPPeers, "advertises", a.pool)
	}

	srv, err := api.Listen(a.cfg.SocketPath, a.metrics.InstrumentHandler(api.NewHandler(a, a.log)))
	if err != nil {
		return err
	}
	a.server = srv
	if a.cfg.PrometheusAddr != "" {
		ms, err := metrics.Serve(a.cfg.PrometheusAddr, a.metrics, a.log)
		if err != nil {
			return err
		}
		a.metricsSrv = ms
		a.log.Info("serving Prometheus metrics", "addr", ms.Addr())
	}
	a.log.Info("agent ready", "node", a.cfg.NodeName, "socket", a.cfg.SocketPath, "podCIDR", a.pool, "router", a.router, "endpoints", eps.Count())
	return nil
}

// Stop shuts down in reverse order. BPF pins and devices are left in place.
func (a *Agent) Stop(ctx context.Context) error {
	var errs []error
	if a.metricsSrv != nil {
		mctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		errs = append(errs, a.metricsSrv.Shutdown(mctx))
		cancel()
		a.metricsSrv = nil
	}
	if a.server != nil {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		errs = append(errs, a.server.Shutdown(sctx))
		cancel()
		a.server = nil
	}
	if a.bgp != nil {
		// A stopping agent is usually restarting: its sessions die with
		// the process, and the routers keep its pod CIDR (graceful
		// restart) so that no node loses traffic meanwhile.
		a.bgp.Abandon()
		a.bgp = nil
	}
	if a.obs != nil && a.obs.reader != nil {
		errs = append(errs, a.obs.reader.Close())
	}
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	a.cancel = nil
	if a.idAlloc != nil {
		a.idAlloc.Close()
	}
	if a.dp != nil {
		errs = append(errs, a.dp.Close())
		a.dp = nil
	}
	if a.kv != nil {
		errs = append(errs, a.kv.Close())
		a.kv = nil
	}
	return errors.Join(errs...)
}

// ctGC deletes expired conntrack entries every 30 seconds.
func (a *Agent) ctGC(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := a.dp.GCCT()
			if err != nil {
				a.log.Warn("conntrack garbage collection", "err", err)
				continue
			}
			if n > 0 {
				a.log.Debug("conntrack garbage collection", "deleted", n)
			}
		}
	}
}

// osLinks adapts package link to endpoint.Links.
type osLinks struct{}

func (osLinks) CreateVeth(r link.VethRequest) (link.VethResult, error) { return link.CreateVeth(r) }
func (osLinks) DeleteVeth(n string) error                              { return link.DeleteVeth(n) }
func (osLinks) CheckVeth(r link.VethRequest) error                     { return link.CheckVeth(r) }
func (osLinks) HostLink(n string) (int, net.HardwareAddr, bool, error) { return link.HostLink(n) }
