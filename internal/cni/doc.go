// Package cni is Membrane's CNI plugin: the code behind the membrane-cni
// binary that container runtimes execute for ADD, DEL, CHECK, GC, STATUS
// and VERSION (CNI spec 0.4.0, 1.0.0 and 1.1.0).
//
// The plugin is thin. It owns
//   - decoding and validating the network config (NetConf) and CNI_ARGS
//     (ParseArgs): label and named-port syntax, mtu, socketPath;
//   - merging workload metadata (CNI_ARGS, args.cni, runtimeConfig);
//   - one request to membrane-agent over its unix socket (api.Client);
//   - turning the answer into a CNI result (BuildResult) at the caller's
//     version, or an error into a CNI error object with a stable code
//     (see errors.go for the table).
//
// It owns no kernel state: interfaces, addresses, routes and BPF maps are
// the agent's. Lifecycle: one Plugin per process, one command per Plugin;
// New wires the real agent client, Run dispatches through skel and returns
// the exit status for main. Bad input is refused before the agent is asked
// anything, and an ADD whose result cannot be delivered is rolled back.
package cni
