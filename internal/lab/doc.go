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
//     state, sockets, logs and the libcni cache;
//   - the cgroup v2 subtree membrane-lab-<lab>/ (a directory per node, the
//     agent's --cgroup-root, with agent/ and pods/<ns>_<pod>/ below it, and
//     ext/), in /sys/fs/cgroup if that is cgroup v2, else in its own
//     cgroup2 mount at /run/membrane-lab/<lab>/cgroup2 (see cgroup.go).
//     Agents, pod servers and Exec commands are created in their cgroup.
//
// A multi-node lab (Config.Mode "vxlan" or "native") adds, all in the same
// name space:
//   - mbr-<lab>-fabric: a namespace holding the bridge br0 that every node
//     (eth0 at .10+i of NodeCIDR), the router and the etcd members plug into
//     through veths created from inside the fabric (never in the machine's
//     namespace); the embedded etcd server (`membrane lab etcd-serve`,
//     unix sockets only) also runs in it;
//   - mbr-<lab>-router (native mode): .1 on the fabric, forwarding on in
//     that namespace only, bird2 peering over eBGP with every node and
//     installing the learned pod CIDRs; nodes route by default to it, and it
//     has no route beyond the fabric and the pod CIDRs;
//   - mbr-<lab>-etcd1..3 (external etcd): Debian's etcd at .2, .3, .4;
//   - mbr-<lab>-ext: the external host at .250 (the last address of a
//     smaller fabric), with no route beyond the fabric, so it reaches node
//     IPs and no pod: NodePort tests run there through Exec.
//
// Agents then get their node IP, the cluster CIDR (they allocate their pod
// CIDRs through etcd; the lab reads them back from the status API), the
// routing mode, the etcd endpoints and, in native mode, their BGP AS and
// the router as peer. AddNode and RemoveNode change the node set at run
// time (the router's bird.conf is rewritten and reloaded). Down, and
// Reclaim without a state file, also find these namespaces and the nodes'
// pin directories by their exact names.
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
