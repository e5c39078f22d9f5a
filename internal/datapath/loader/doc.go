// Package loader owns the node's BPF datapath objects: it loads the programs
// and maps compiled from bpf/ (embedded through bpf2go, no compiler on the
// node), pins them under Config.PinDir, attaches the programs with tcx and
// offers typed access to the maps: endpoints, ipcache, per-endpoint policy,
// conntrack, verdict metrics and flow events.
//
// Lifecycle: Load creates or reuses the pinned maps (a restarted agent finds
// its endpoints, ipcache, policies and connections again; an incompatible
// pinned map, e.g. after a size flag change, is an error naming it, never
// silently replaced; the one exception is the event ring, which holds
// nothing worth keeping and is recreated at its new size). AttachHost and AttachEndpoint attach at tcx ingress and
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
// A Datapath is safe for concurrent use.
package loader
