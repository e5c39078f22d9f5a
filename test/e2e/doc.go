// Package e2e holds end-to-end tests of a single node: the real agent, the
// real membrane-cni binary (through the lab and through the CNI project's
// cnitool), real TCP/UDP in network namespaces. All tests are privileged.
package e2e
