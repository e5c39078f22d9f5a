// Package bench is Membrane's benchmark harness: it builds the datapath
// topologies under test side by side in one run (DIRECT, ROUTED, BRIDGE,
// MEMBRANE, MEMBRANE with flow events off, MEMBRANE-POLICY-N, the
// iptables/nftables policy baselines IPTABLES-N and NFT-SET-N, and the
// cross-node pairs MEMBRANE-VXLAN-2NODE vs KERNEL-VXLAN and
// MEMBRANE-NATIVE-2NODE vs ROUTED-2NODE, and the service scaling trio
// MEMBRANE-SVC-N, KUBE-PROXY-IPTABLES-N and NFT-VMAP-N), runs the
// same workloads through each of them in interleaved rounds, measures the
// control plane (CNI ADD latency, agent memory per endpoint, how long a
// policy change takes to reach the datapath), and writes the results as
// JSON and as docs/performance.md with PNG charts.
//
// A run owns, and only ever touches:
//   - network namespaces named mbb-<run>-… (the run id is six random hex
//     characters), created with `ip netns add`, with veth pairs created
//     directly inside them (the cross-node baselines also a bridge in a
//     fabric namespace and a vxlan device per node namespace, on lab
//     addresses 10.214.x.0/24 and 10.215.0.0/16); no namespace gets a route
//     out of the machine and nothing is attached to the machine's own
//     interfaces;
//   - Membrane labs (internal/lab) named bench-<run> (MEMBRANE), bt<i>-<run>
//     (the other Membrane topologies, i their index in the run; the
//     cross-node ones are two-node labs with a fabric and a lab etcd), bprop-<run>
//     (propagation) and bmem-<run> (memory), which own their namespaces
//     (mbr-<lab>-…), agents and BPF pins, and the policies applied to them;
//   - a UDP prober thread that enters the propagation lab's client pod
//     namespace (and never leaves it: the thread ends with the prober);
//   - the tool processes it starts (sockperf, iperf3, nginx, wrk, and
//     itself as the svc-crr client, RunHelper), each in one of those
//     namespaces (the svc-crr client of a Membrane lab also in its pod's
//     cgroup), bound to its lab addresses and pinned to one CPU with
//     taskset;
//   - the services it applies to its labs, and the nat rules (iptables,
//     nftables) of the service baselines, inside their node namespaces;
//   - a work directory (/tmp/membrane-bench-<run>) for configs, IPAM data,
//     the libcni cache and logs.
//
// Lifecycle: Run checks the tools (Deps), sets every topology up, runs the
// rounds, measures the control plane (CNI, memory, propagation), and tears
// everything down in reverse order, also when the context is cancelled
// (SIGINT) or a step fails. `membrane-bench clean` removes what a killed
// run left behind (namespaces with the mbb- prefix and bench labs).
//
// Extending: a topology implements Topology and is registered in
// topologyKinds; a workload implements Workload and is registered in
// workloadKinds. A topology returns a Pair (client and server endpoints, each
// a namespace and an address); workloads only ever see Pairs, so cross-node
// and service topologies plug in without touching the workloads. A
// TopologySpec may list the workloads it runs (the policy and events
// topologies run only the few their comparison needs).
package bench
