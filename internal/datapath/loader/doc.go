// Package loader owns the node's BPF datapath objects: it loads the programs
// and maps compiled from bpf/ (embedded through bpf2go, no compiler on the
// node), pins them under Config.PinDir, attaches the programs with tcx and
// offers typed access to the maps: endpoints, ipcache, per-endpoint policy,
// conntrack, tunnel (remote pod CIDR -> node), verdict metrics and flow
// events.
//
// Lifecycle: Load creates or reuses the pinned maps (a restarted agent finds
// its endpoints, ipcache, policies and connections again; an incompatible
// pinned map, e.g. after a size flag change, is an error naming it, never
// silently replaced; the one exception is the event ring, which holds
// nothing worth keeping and is recreated at its new size). AttachHost, AttachEndpoint and AttachOverlay attach at tcx ingress and
// pin the link under PinDir/links/; calling them again atomically swaps the
// program in the existing link, so an agent restart does not interrupt
// traffic. Close releases the agent's file descriptors but leaves the pins,
// so traffic keeps flowing without the agent. Unpin removes everything and
// detaches the programs; it is for cleanup and `membrane lab down`.
//
// Policy: every endpoint carries its security identity and two enforcement
// flags (FlagIngressEnforced, FlagEgressEnforced) in the endpoint map. An
// enforced direction allows only what the endpoint's policy map allows
// (SetEndpointPolicy; deny entries win), for the first packet of a
// connection; later packets and replies pass through conntrack. Peer
// identities come from the ipcache (UpsertIPCache); an address without an
// entry is world (2). The agent runs GCCT periodically and reads Metrics and
// MapPressure for status and monitoring.
//
// Flow events: the programs write drops (with reason and, for policy drops,
// the deciding rule's cookie), policy verdicts of new connections and
// packet traces to a ring buffer; OpenEvents reads them as Events. How many
// is the monitor level (MonitorOff, MonitorDrops, MonitorDefault,
// MonitorAll), set at Load from Config.MonitorLevel and changed at run time
// with SetMonitorLevel. Events that do not fit the ring are counted
// (EventsLost) and never affect a packet's verdict.
//
// Overlay: in RoutingVXLAN mode (Config.RoutingMode, SetRoutingMode) traffic
// of local pods (from_container) and of the host (from_host, as identity
// remote-node) for a pod CIDR in the tunnel map (UpsertTunnel) is
// encapsulated by the collect_md VXLAN device set with SetOverlayDevice,
// every packet of a connection, with the source identity as the VNI;
// without a device set it is dropped (DropNoTunnel). AttachOverlay puts
// from_overlay on that device: it takes the peer identity from the VNI
// (refusing 0 and host: DropInvalidIdentity), applies the destination's
// ingress policy to new connections and delivers into the pod; packets for
// the router address go to the host stack. In RoutingNative mode such
// traffic goes to the host stack unencapsulated and the receiving node's
// from_host takes the source identity from the ipcache.
//
// A Datapath is safe for concurrent use.
package loader
