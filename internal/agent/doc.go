// Package agent wires the node agent together: kvstore, BPF datapath, host
// devices, IPAM, endpoint manager and the HTTP API, started in that order by
// Start and stopped in reverse by Stop. It implements api.Backend and maps
// domain errors to API error codes. Stopping leaves BPF programs, maps and
// devices in place so that traffic keeps flowing while the agent restarts.
package agent
