// Package link owns the node's network devices: the mbr_host/mbr_net veth
// pair that carries the router address and the pod CIDR route, and one veth
// pair per endpoint (lxc… on the node, the pod's interface in its network
// namespace). It is kernel-facing (netlink) and used only by the agent; the
// endpoint manager reaches it through a small interface with a fake.
package link
