/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Connection tracking. One entry per connection, keyed by the tuple of its
 * first packet (the original direction) in mbr_ct_tcp or mbr_ct_any; a
 * packet whose own tuple is found belongs to the original direction, one
 * whose reversed tuple is found is a reply. An entry whose deadline has
 * passed is absent for the datapath (a new connection overwrites it) and is
 * deleted by the agent's GC or evicted by the LRU.
 *
 * Lifetimes (load-time constants, nanoseconds): TCP until a reply was seen
 * CT_LIFETIME_TCP_SYN; TCP with a reply CT_LIFETIME_TCP_ESTABLISHED; TCP
 * closed CT_LIFETIME_TCP_CLOSE, once both directions sent a FIN or either
 * sent an RST (a FIN in one direction only is a half-close, which may carry
 * data for a long time, so it keeps the established lifetime); other
 * protocols CT_LIFETIME_ANY. Every packet of the connection renews the
 * deadline. A SYN (without ACK) in the original direction of a closing TCP
 * entry starts a new connection: it is treated as new and goes through
 * policy again.
 */
#ifndef __MBR_CT_H
#define __MBR_CT_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "common.h"
#include "l4.h"
#include "maps.h"

volatile const __u64 CT_LIFETIME_TCP_SYN = 60ULL * 1000000000ULL;
volatile const __u64 CT_LIFETIME_TCP_ESTABLISHED = 21600ULL * 1000000000ULL;
volatile const __u64 CT_LIFETIME_TCP_CLOSE = 10ULL * 1000000000ULL;
volatile const __u64 CT_LIFETIME_ANY = 60ULL * 1000000000ULL;

enum ct_status {
	CT_NEW = 0,     /* no live entry: policy decides, then an entry is created */
	CT_ESTABLISHED, /* packet in the original direction of a live entry */
	CT_REPLY,       /* packet in the reply direction of a live entry */
};

static __always_inline void *ct_map(__u8 protocol)
{
	return protocol == IPPROTO_TCP ? (void *)&mbr_ct_tcp : (void *)&mbr_ct_any;
}

static __always_inline void ct_key4(struct ct_key *key, const struct flow4 *f, int reverse)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (reverse) {
		__builtin_memcpy(key->saddr, &f->daddr, sizeof(f->daddr));
		__builtin_memcpy(key->daddr, &f->saddr, sizeof(f->saddr));
		key->sport = f->dport;
		key->dport = f->sport;
	} else {
		__builtin_memcpy(key->saddr, &f->saddr, sizeof(f->saddr));
		__builtin_memcpy(key->daddr, &f->daddr, sizeof(f->daddr));
		key->sport = f->sport;
		key->dport = f->dport;
	}
	key->protocol = f->protocol;
	key->family = MBR_FAMILY_IPV4;
}

/* New flags and lifetime of an entry after packet f in direction reply. */
static __always_inline __u64 ct_advance(__u32 *flags, const struct flow4 *f, int reply)
{
	if (reply)
		*flags |= MBR_CT_F_SEEN_REPLY;
	if (f->protocol != IPPROTO_TCP)
		return CT_LIFETIME_ANY;

	if (f->tcp_flags & MBR_TCP_RST)
		*flags |= MBR_CT_F_CLOSING;
	else if (f->tcp_flags & MBR_TCP_FIN)
		*flags |= reply ? MBR_CT_F_RX_CLOSING : MBR_CT_F_TX_CLOSING;

	if ((*flags & MBR_CT_F_CLOSING) == MBR_CT_F_CLOSING)
		return CT_LIFETIME_TCP_CLOSE;
	if (*flags & MBR_CT_F_SEEN_REPLY)
		return CT_LIFETIME_TCP_ESTABLISHED;
	return CT_LIFETIME_TCP_SYN;
}

/* TCP flags whose first appearance in a direction is reported at the
 * default monitor level: the ones that open and close a connection. ACK,
 * PSH and the rest change on almost every connection without saying
 * anything about its state, and reporting them cost several ring-buffer
 * events (and agent wake-ups) per short connection. */
#ifndef CT_REPORT_TCP_FLAGS
#define CT_REPORT_TCP_FLAGS (MBR_TCP_SYN | MBR_TCP_FIN | MBR_TCP_RST)
#endif

/* Account packet f, in direction reply, to e. Returns 1 if the packet is
 * one to report at the default monitor level: the first reply, or one with
 * a CT_REPORT_TCP_FLAGS flag not seen before in its direction; else 0. */
static __always_inline int ct_refresh(struct ct_entry *e, const struct flow4 *f, int reply,
				      __u32 len, __u64 now)
{
	__u32 flags = e->flags;
	__u64 lifetime = ct_advance(&flags, f, reply);
	__u8 seen = reply ? e->rx_flags_seen : e->tx_flags_seen;
	int report = reply && !(e->flags & MBR_CT_F_SEEN_REPLY);

	/* Racing CPUs may lose a flag update here; the next packet of the same
	 * kind sets it again (and may be reported twice). Counters are atomic. */
	if ((seen | f->tcp_flags) != seen) {
		if (f->tcp_flags & CT_REPORT_TCP_FLAGS & ~seen)
			report = 1;
		seen |= f->tcp_flags;
		if (reply)
			e->rx_flags_seen = seen;
		else
			e->tx_flags_seen = seen;
	}
	if (flags != e->flags)
		e->flags = flags;
	e->expires = now + lifetime;
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);
	return report;
}

/* A fresh SYN reusing the tuple of a closing connection starts anew. */
static __always_inline int ct_restarts(const struct ct_entry *e, const struct flow4 *f)
{
	return f->protocol == IPPROTO_TCP && (e->flags & MBR_CT_F_CLOSING) &&
	       (f->tcp_flags & (MBR_TCP_SYN | MBR_TCP_ACK)) == MBR_TCP_SYN;
}

/* Find the connection of f and account the packet to it. *report is set to
 * 1 for a packet to report at the default monitor level (a new connection,
 * its first reply, a new SYN, FIN or RST in a direction), else 0. */
static __always_inline enum ct_status ct_lookup4(const struct flow4 *f, __u32 len, __u64 now,
						 __u8 *report, __u16 *ct_flags)
{
	void *map = ct_map(f->protocol);
	struct ct_entry *e;
	struct ct_key key;

	ct_key4(&key, f, 0);
	e = bpf_map_lookup_elem(map, &key);
	if (e && e->expires > now && !ct_restarts(e, f)) {
		*report = ct_refresh(e, f, 0, len, now);
		*ct_flags = e->flags;
		return CT_ESTABLISHED;
	}
	ct_key4(&key, f, 1);
	e = bpf_map_lookup_elem(map, &key);
	if (e && e->expires > now) {
		*report = ct_refresh(e, f, 1, len, now);
		*ct_flags = e->flags;
		return CT_REPLY;
	}
	*report = 1;
	*ct_flags = 0;
	return CT_NEW;
}

/* Create (or overwrite an expired) entry for the new connection of f.
 * Returns 0, or < 0 if the map refused it. */
static __always_inline int ct_create4(const struct flow4 *f, __u32 src_identity, __u32 len,
				      __u64 now, __u16 init_flags)
{
	struct ct_entry e = {
		.tx_flags_seen = f->tcp_flags,
		.src_identity = src_identity,
		.packets = 1,
		.bytes = len,
	};
	struct ct_key key;
	__u32 flags = init_flags;

	e.expires = now + ct_advance(&flags, f, 0);
	e.flags = flags;
	ct_key4(&key, f, 0);
	return bpf_map_update_elem(ct_map(f->protocol), &key, &e, BPF_ANY);
}

#endif /* __MBR_CT_H */
