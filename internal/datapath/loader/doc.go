// Package loader owns the node's BPF datapath objects: it loads the programs
// and maps compiled from bpf/ (embedded through bpf2go, no compiler on the
// node), pins them under Config.PinDir, attaches the programs with tcx and
// offers typed access to the maps: endpoints, ipcache, per-endpoint policy,
// conntrack and verdict metrics.
//
// Lifecycle: Load creates or reuses the pinned maps (a restarted agent finds
// its endpoints, ipcache, policies and connections again; an incompatible
// pinned map, e.g. after a size flag change, is an error naming it, never
// silently replaced). AttachHost and AttachEndpoint attach at tcx ingress and
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
// A Datapath is safe for concurrent use.
package loader
