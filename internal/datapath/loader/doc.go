// Package loader owns the node's BPF datapath objects: it loads the programs
// and maps compiled from bpf/ (embedded through bpf2go, no compiler on the
// node), pins them under Config.PinDir, attaches the programs with tcx and
// offers typed access to the endpoint map.
//
// Lifecycle: Load creates or reuses the pinned maps (a restarted agent finds
// its endpoints again; an incompatible pinned map is an error, never silently
// replaced). AttachHost and AttachEndpoint attach at tcx ingress and pin the
// link under PinDir/links/; calling them again atomically swaps the program
// in the existing link, so an agent restart does not interrupt traffic.
// Close releases the agent's file descriptors but leaves the pins, so
// traffic keeps flowing without the agent. Unpin removes everything and
// detaches the programs; it is for cleanup and `membrane lab down`.
//
// A Datapath is safe for concurrent use.
package loader
