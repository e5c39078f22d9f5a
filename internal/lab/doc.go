// Package lab builds a throw-away Membrane cluster inside network namespaces
// on one machine: the demo, the test bed and the benchmark bed.
//
// A lab owns, and only ever touches:
//   - network namespaces named mbr-<lab>-… (a node namespace per node, a
//     namespace per pod), created with `ip netns add`;
//   - one membrane-agent process per node, started inside the node namespace
//     with nsenter (so it keeps the host's mount namespace and bpffs), and one
//     traffic server process per pod (`membrane lab serve`);
//   - the agent's BPF pin directory <bpf-root>/<lab>-<node>;
//   - its directory (default /var/lib/membrane-lab/<lab>): state.json, agent
//     state, sockets, logs and the libcni cache.
//
// Nothing is attached to the machine's own interfaces, no lab namespace has
// a route out of the machine, and servers bind to lab addresses and
// loopback only.
//
// Lifecycle: Up creates the node namespace and starts the agent; AddPod and
// DelPod create and remove pods through the real CNI plugin, invoked with
// libcni exactly as a container runtime would; Probe measures reachability
// between every pair of pods; Down removes everything, best effort and
// idempotently. Every mutating step is recorded in state.json before it
// touches the kernel, so Down (or Reclaim) also cleans up after a crashed
// run. Mutations take an exclusive lock on the lab directory, so several
// `membrane lab` commands may run at once against the same lab.
package lab
