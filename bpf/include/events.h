/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Flow events: drops with their reason, policy verdicts of new connections
 * and traces of packets at observation points, written to the mbr_events
 * ring buffer for the agent (loader.EventReader).
 *
 * How many events is decided per packet by the monitor level in mbr_config,
 * read once at program entry (MBR_MONITOR_* in common.h):
 *   off      nothing (the verdict metrics still count every packet);
 *   drops    DROP and POLICY_VERDICT events;
 *   default  + TRACE events of packets that conntrack marks as worth
 *            reporting: a new connection, its first reply, and a packet
 *            with a SYN, FIN or RST not seen before in its direction
 *            (ct.h): about four events per short TCP connection;
 *   all      + TRACE events of every IPv4 packet.
 * Non-IPv4 packets that pass (ARP, IPv6 to the stack) are never traced;
 * their drops are reported, without addresses (family 0).
 *
 * An event that does not fit the ring is counted in mbr_events_lost and
 * otherwise ignored: events never change a verdict.
 *
 * The event layout is shared with Go (bpf2go -type flow_event) and decoded
 * there by offset (loader.DecodeEvent): append fields only at the end, keep
 * it free of implicit padding, and update the decoder with it.
 */
#ifndef __MBR_EVENTS_H
#define __MBR_EVENTS_H

/* Queued bytes from which an event wakes the reader (about 400 events). */
#ifndef MBR_EVENTS_WAKEUP_BYTES
#define MBR_EVENTS_WAKEUP_BYTES (32 * 1024)
#endif

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "common.h"
#include "drop.h"
#include "l4.h"
#include "maps.h"
#include "metrics.h"
#include "policy.h"

/* flow_event.type */
#define MBR_EVENT_DROP           1
#define MBR_EVENT_TRACE          2
#define MBR_EVENT_POLICY_VERDICT 3

/* flow_event.obs_point: where the datapath saw the packet. */
#define MBR_OBS_FROM_ENDPOINT 1 /* from_container: leaving a pod */
#define MBR_OBS_TO_ENDPOINT   2 /* redirected into a local pod */
#define MBR_OBS_TO_STACK      3 /* handed to the host stack */
#define MBR_OBS_FROM_HOST     4 /* from_host: from the host stack to a pod */
#define MBR_OBS_TO_OVERLAY    5 /* encapsulated and redirected to the overlay device */
#define MBR_OBS_FROM_OVERLAY  6 /* from_overlay: decapsulated, from a remote node */
#define MBR_OBS_SOCK_LB       7 /* a cgroup socket hook (service translation) */
#define MBR_OBS_FROM_NETDEV   8 /* from_netdev: arriving on an external device (NodePort) */

/* flow_event.ct_state: enum ct_status + 1; 0 before conntrack. */
#define MBR_CT_STATE_NEW         1
#define MBR_CT_STATE_ESTABLISHED 2
#define MBR_CT_STATE_REPLY       3

/* One flow event in mbr_events. Multi-byte fields in host byte order except
 * the ports; addresses as in endpoint_key. 80 bytes, no implicit padding. */
struct flow_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns() */
	__u8  type;           /* MBR_EVENT_* */
	__u8  reason;         /* drop reason (drop.h) for DROP / denied verdicts; 0 otherwise */
	__u8  obs_point;      /* MBR_OBS_* */
	__u8  verdict;        /* 0 forwarded, 1 dropped */
	__u8  direction;      /* MBR_DIR_*: of the drop or verdict; of a trace, as seen by the
			       * endpoint (FROM_ENDPOINT, TO_STACK, TO_OVERLAY egress;
			       * FROM_HOST, FROM_OVERLAY, TO_ENDPOINT ingress; TO_OVERLAY
			       * from from_host: ingress) */
	__u8  protocol;       /* IP protocol */
	__u8  tcp_flags;      /* TCP flags byte of the packet (MBR_TCP_*) */
	__u8  family;         /* MBR_FAMILY_IPV4, or 0 if dropped before its IP header was valid */
	__u16 src_ep;         /* local endpoint id of the source, 0 if none */
	__u16 dst_ep;         /* local endpoint id of the destination, 0 if none */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 cookie;         /* deciding policy rule (policy value cookie), 0 if none */
	__u32 ifindex;        /* skb->ifindex */
	__u32 pkt_len;        /* skb->len */
	__u8  saddr[16];
	__u8  daddr[16];
	__be16 sport;         /* conntrack ports (ICMP echo: the id, see struct ct_key) */
	__be16 dport;
	__u8  ct_state;       /* MBR_CT_STATE_* */
	__u8  pad[3];
};

/* The ring buffer carries no type: anchor flow_event in BTF for bpf2go (see
 * the policy anchors in maps.h). */
struct flow_event __mbr_btf_flow_event SEC(".mbr_btf_anchors");

/* What the events of one packet say about it, filled in as the program
 * learns it. Lives on the entry program's stack. */
struct pkt_obs {
	struct flow4 flow;   /* addresses once the IPv4 header is valid, the rest once parsed */
	__u32 level;         /* MBR_MONITOR_*, read at entry */
	__u32 src_identity;  /* 0: not known yet, looked up in the ipcache when reported */
	__u32 dst_identity;
	__u32 cookie;        /* cookie of the last policy lookup (policy_check) */
	__u16 src_ep;
	__u16 dst_ep;
	__u8 family;         /* 0 until the IPv4 header is valid, then MBR_FAMILY_IPV4 */
	__u8 ct_state;       /* MBR_CT_STATE_*, 0 before conntrack */
	__u8 report;         /* set by ct_lookup4: trace this packet at the default level */
	__u8 from;           /* MBR_OBS_* of the entry program: where drops and verdicts happen */
	__u8 reason;         /* of the event being written */
	__u8 dir;            /* of the event being written */
	__u8 pad[2];
};

/* Start the observation of a packet entering at obs point from. */
static __always_inline void obs_init(struct pkt_obs *o, __u8 from)
{
	__u32 zero = 0;
	struct dp_config *c = bpf_map_lookup_elem(&mbr_config, &zero);

	o->level = c ? c->monitor_level : MBR_MONITOR_DEFAULT;
	o->from = from;
}

/* Record the addresses of a valid IPv4 header, for drops before parse_flow4. */
static __always_inline void obs_ip4(struct pkt_obs *o, __be32 saddr, __be32 daddr, __u8 protocol)
{
	o->flow.saddr = saddr;
	o->flow.daddr = daddr;
	o->flow.protocol = protocol;
	o->family = MBR_FAMILY_IPV4;
}

/* Write one event (type at obs_point, with o->reason, o->dir and cookie) to
 * mbr_events, or count it as lost. A global function, neither inlined nor
 * static: the verifier checks it once on its own instead of at each of the
 * many exits that emit (from_container: some 22k instead of 8k instructions
 * processed). Unknown identities of an IPv4 packet are looked up here, only
 * when an event is written, and kept in o. Returns 0. */
__noinline int event_emit(struct __sk_buff *skb, struct pkt_obs *o, __u32 type,
			  __u32 obs_point, __u32 cookie)
{
	struct flow_event *ev;
	__u32 zero = 0, cidr_id;
	__u64 *lost;

	/* The verifier knows o only as nullable memory of its size. */
	if (!o)
		return 0;

	if (o->family == MBR_FAMILY_IPV4) {
		if (!o->src_identity)
			ipcache_lookup4(o->flow.saddr, &o->src_identity, &cidr_id);
		if (!o->dst_identity)
			ipcache_lookup4(o->flow.daddr, &o->dst_identity, &cidr_id);
	}

	ev = bpf_ringbuf_reserve(&mbr_events, sizeof(*ev), 0);
	if (!ev) {
		/* Per-CPU slot: a plain increment. */
		lost = bpf_map_lookup_elem(&mbr_events_lost, &zero);
		if (lost)
			*lost += 1;
		return 0;
	}
	/* Reserved ring memory is not zeroed: write every byte. */
	ev->ts_ns = bpf_ktime_get_ns();
	ev->type = type;
	ev->reason = o->reason;
	ev->obs_point = obs_point;
	ev->verdict = o->reason != MBR_FORWARDED;
	ev->direction = o->dir;
	ev->protocol = o->flow.protocol;
	ev->tcp_flags = o->flow.tcp_flags;
	ev->family = o->family;
	ev->src_ep = o->src_ep;
	ev->dst_ep = o->dst_ep;
	ev->src_identity = o->src_identity;
	ev->dst_identity = o->dst_identity;
	ev->cookie = cookie;
	ev->ifindex = skb->ifindex;
	ev->pkt_len = skb->len;
	__builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
	__builtin_memcpy(ev->saddr, &o->flow.saddr, sizeof(o->flow.saddr));
	__builtin_memcpy(ev->daddr, &o->flow.daddr, sizeof(o->flow.daddr));
	ev->sport = o->flow.sport;
	ev->dport = o->flow.dport;
	ev->ct_state = o->ct_state;
	__builtin_memset(ev->pad, 0, sizeof(ev->pad));
	/* Waking the reader for every event costs more than the event on
	 * short connections: wake it only once a batch has queued; the agent
	 * also polls every few milliseconds. */
	if (bpf_ringbuf_query(&mbr_events, BPF_RB_AVAIL_DATA) >= MBR_EVENTS_WAKEUP_BYTES)
		bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
	else
		bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	return 0;
}

/* Report and count a drop by a socket hook, which has no packet: the
 * event carries the destination the socket asked for and the caller's
 * address if it has one. */
static __always_inline void sock_drop(__u8 reason, __be32 saddr, __be32 daddr, __be16 dport,
				      __u8 protocol)
{
	__u32 zero = 0;
	struct dp_config *c = bpf_map_lookup_elem(&mbr_config, &zero);
	struct flow_event *ev;
	__u64 *lost;

	metrics_count(reason, MBR_DIR_EGRESS, 0);
	if (c && c->monitor_level < MBR_MONITOR_DROPS)
		return;
	ev = bpf_ringbuf_reserve(&mbr_events, sizeof(*ev), 0);
	if (!ev) {
		lost = bpf_map_lookup_elem(&mbr_events_lost, &zero);
		if (lost)
			*lost += 1;
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->type = MBR_EVENT_DROP;
	ev->reason = reason;
	ev->obs_point = MBR_OBS_SOCK_LB;
	ev->verdict = 1;
	ev->direction = MBR_DIR_EGRESS;
	ev->protocol = protocol;
	ev->family = MBR_FAMILY_IPV4;
	__builtin_memcpy(ev->saddr, &saddr, sizeof(saddr));
	__builtin_memcpy(ev->daddr, &daddr, sizeof(daddr));
	ev->dport = dport;
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP);
}

static __always_inline int reason_is_policy(__u8 reason)
{
	return reason == MBR_DROP_POLICY_DENIED || reason == MBR_DROP_POLICY_NO_RULE;
}

/* Trace the packet at obs_point if the monitor level asks for it. */
static __always_inline void trace_packet(struct __sk_buff *skb, struct pkt_obs *o,
					 __u8 obs_point, __u8 dir)
{
	if (o->level < MBR_MONITOR_ALL && !(o->level == MBR_MONITOR_DEFAULT && o->report))
		return;
	o->reason = MBR_FORWARDED;
	o->dir = dir;
	event_emit(skb, o, MBR_EVENT_TRACE, obs_point, 0);
}

/* Report the verdict (MBR_FORWARDED or a policy drop reason) of an enforced
 * policy lookup for a new connection, with the deciding rule in o->cookie. */
static __always_inline void policy_verdict(struct __sk_buff *skb, struct pkt_obs *o,
					   int reason, __u8 dir)
{
	if (o->level < MBR_MONITOR_DROPS)
		return;
	o->reason = reason;
	o->dir = dir;
	event_emit(skb, o, MBR_EVENT_POLICY_VERDICT, o->from, o->cookie);
}

/* Report a drop (a policy drop with its deciding rule), count it and return
 * TC_ACT_SHOT. */
static __always_inline int drop_packet(struct __sk_buff *skb, struct pkt_obs *o, __u8 reason,
				       __u8 dir)
{
	if (o->level >= MBR_MONITOR_DROPS) {
		o->reason = reason;
		o->dir = dir;
		event_emit(skb, o, MBR_EVENT_DROP, o->from, reason_is_policy(reason) ? o->cookie : 0);
	}
	return drop(skb, reason, dir);
}

#endif /* __MBR_EVENTS_H */
