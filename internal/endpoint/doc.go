// Package endpoint owns the lifecycle of endpoints — one workload attachment
// each: an address from IPAM, a veth pair, the datapath program on the
// node-side interface and the endpoint map entry — and their restore after
// an agent restart.
//
// Every endpoint is written to the state directory (endpoints/<id>.json,
// atomically) once it is fully set up, and removed from it last on delete.
// Restore reads those files, checks each endpoint's interface still exists,
// re-attaches the (new) program atomically and re-asserts the map entry;
// endpoints whose interface vanished while the agent was down are cleaned
// up and their address released.
//
// The kernel and IPAM are reached through the Links, Datapath and
// ipam.Allocator interfaces, so the manager is tested without root.
package endpoint
