// Package monitor turns datapath events into flows: it enriches raw events
// with endpoint names, labels, identities and the deciding policy, keeps the
// newest flows in a bounded in-memory store (a ring), answers filtered
// queries and feeds followers. It is pure: events come in through Add, the
// kernel-facing reader lives in the agent.
package monitor
