/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Service load balancing: maps and backend selection shared by the socket
 * hooks (cgroup connect4, sendmsg4, recvmsg4, getpeername4) and the packet
 * path. IPv4 only. Every struct is part of a pinned map format: no implicit
 * padding, pad fields zero.
 *
 * A service port (frontend) is the entry with slot 0 in mbr_lb4_services;
 * slots 1..count hold the ids of its active backends, so a random choice is
 * two hash lookups whatever the number of services. Backends that are not
 * ready or are terminating stay in mbr_lb4_backends (connections already
 * made to them continue) but in no slot: they get no new connections.
 */
#ifndef __MBR_LB_H
#define __MBR_LB_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "common.h"

#ifndef MBR_LB_MAP_SIZE
#define MBR_LB_MAP_SIZE 65536
#endif
/* Slots of one Maglev table; the agent sets the real size at load. */
#ifndef MBR_LB_MAGLEV_SIZE
#define MBR_LB_MAGLEV_SIZE 1021
#endif

/* lb4_service.flags */
#define MBR_LB_F_AFFINITY 0x1 /* ClientIP session affinity, affinity_timeout seconds */
#define MBR_LB_F_MAGLEV   0x2 /* packet path: Maglev table in mbr_lb_maglev */
#define MBR_LB_F_NODEPORT 0x4 /* a NodePort frontend (node address) */

/* lb4_backend.state */
#define MBR_LB_BACKEND_ACTIVE      0
#define MBR_LB_BACKEND_TERMINATING 1
#define MBR_LB_BACKEND_NOT_READY   2

/* Key of mbr_lb4_services. address and dport in network byte order. 12
 * bytes. */
struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 slot;     /* 0: the service port itself; 1..count: a backend slot */
	__u8 proto;     /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];
};

/* Value of mbr_lb4_services. 16 bytes. */
struct lb4_service {
	__u32 backend_id;       /* slot > 0: the backend in this slot */
	__u16 count;            /* slot 0: number of active backend slots */
	__u16 rev_nat_id;       /* slot 0: id of the service port (mbr_lb4_revnat, affinity, maglev) */
	__u32 affinity_timeout; /* slot 0: seconds, with MBR_LB_F_AFFINITY */
	__u8 flags;             /* slot 0: MBR_LB_F_* */
	__u8 pad[3];
};

/* Value of mbr_lb4_backends (key: backend id, 1..2^32-1). 8 bytes. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state;             /* MBR_LB_BACKEND_* */
};

/* Value of mbr_lb4_revnat (key: rev_nat_id as __u32): the frontend a reply
 * from one of the service's backends must appear to come from. 8 bytes. */
struct lb4_revnat {
	__be32 address;
	__be16 port;
	__u8 pad[2];
};

/* Key of mbr_lb_affinity. 16 bytes. */
struct lb_affinity_key {
	__u64 client;           /* network namespace cookie (socket hooks) or client IPv4 (packets) */
	__u32 rev_nat_id;
	__u8 netns;             /* 1: client is a netns cookie */
	__u8 pad[3];
};

/* Value of mbr_lb_affinity. 16 bytes. */
struct lb_affinity_value {
	__u64 last_used;        /* bpf_ktime_get_ns() of the last selection */
	__u32 backend_id;
	__u32 pad;
};

/* Key of mbr_lb4_sk_revnat: a socket and the backend it was sent to. 16
 * bytes. */
struct lb4_sk_key {
	__u64 cookie;           /* socket cookie */
	__be32 address;         /* backend address */
	__be16 port;            /* backend port */
	__u8 pad[2];
};

/* mbr_lb4_services: (frontend, slot) -> service port or backend slot. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_lb4_services SEC(".maps");

/* mbr_lb4_backends: backend id -> address, port, state. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_lb4_backends SEC(".maps");

/* mbr_lb4_revnat: service port id -> frontend address and port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_revnat);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_lb4_revnat SEC(".maps");

/* mbr_lb_affinity: (client, service port) -> backend chosen last and when. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_value);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_lb_affinity SEC(".maps");

/* mbr_lb4_sk_revnat: (socket, backend) -> the frontend it translated, so
 * that recvmsg and getpeername show the service address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_sk_key);
	__type(value, struct lb4_revnat);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_lb4_sk_revnat SEC(".maps");

/* mbr_lb4_sk_fwd: (socket, frontend) -> the backend it was sent to last, so
 * that the datagrams of one unconnected UDP socket to a service stay with
 * one backend while it is active. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_sk_key);
	__type(value, __u32);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_lb4_sk_fwd SEC(".maps");

/* NodePort translation state (packet path). A forward entry (dir 0) keys
 * a client's connection to a NodePort frontend and holds its backend and,
 * for a backend on another node, the source port the node translated the
 * client to (SNAT). Reverse entries (dir 1) key the backend's replies: for
 * a remote backend (backend -> node IP:SNAT port) they give the client to
 * send to and the frontend to appear from; for a local backend (backend ->
 * client) just the frontend. 16 bytes each. */
struct lb4_nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;        /* 0: client to frontend, 1: backend reply */
	__u8 pad[2];
};

struct lb4_nat {
	__be32 addr;     /* fwd: backend; rev (remote backend): client */
	__be32 nat_addr; /* fwd: node address of the SNAT, 0 if none; rev: frontend address */
	__be16 port;     /* as addr */
	__be16 nat_port; /* fwd: SNAT port, 0 if none; rev: frontend port */
	__u32 backend_id;
};

/* mbr_lb4_nat: NodePort connections (forward and reverse entries). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_nat_key);
	__type(value, struct lb4_nat);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mbr_lb4_nat SEC(".maps");

/* Template of one service port's Maglev table: one entry holding the
 * backend id of every slot. The agent sets the value size (4 x table size)
 * at load and creates one per Maglev service port. */
struct mbr_lb_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__uint(value_size, MBR_LB_MAGLEV_SIZE * sizeof(__u32));
	__uint(max_entries, 1);
};

/* mbr_lb_maglev: service port id -> its Maglev table. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, MBR_LB_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct mbr_lb_maglev_inner);
} mbr_lb_maglev SEC(".maps");

/* Slots of every Maglev table: set by the agent at load (a prime). */
volatile const __u32 LB_MAGLEV_SIZE = MBR_LB_MAGLEV_SIZE;
/* The NodePort range (host byte order), set by the agent at load. */
volatile const __u16 NODEPORT_MIN = 30000;
volatile const __u16 NODEPORT_MAX = 32767;
/* Source ports for NodePort connections to backends on other nodes: above
 * Linux's default ephemeral range, so they never meet the node's own
 * sockets. */
#define MBR_SNAT_PORT_MIN 61000
#define MBR_SNAT_PORT_COUNT 4536
#define MBR_SNAT_RETRIES 8

/* A flow hash that is the same on every node for the same client flow (so
 * Maglev picks the same backend wherever it arrives): client address and
 * port, frontend port and protocol, not the node address. */
static __always_inline __u32 lb4_flow_hash(__be32 saddr, __be16 sport, __be16 dport, __u8 proto)
{
	__u32 h = saddr * 0x9e3779b1u;

	h ^= (((__u32)sport << 16) | dport) * 0x85ebca77u;
	h ^= proto;
	h ^= h >> 15;
	h *= 0x2c1b3c6du;
	h ^= h >> 12;
	h *= 0x297a2d39u;
	h ^= h >> 15;
	return h;
}

static __always_inline struct lb4_service *lb4_lookup_service(__be32 addr, __be16 port, __u8 proto)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto };

	return bpf_map_lookup_elem(&mbr_lb4_services, &key);
}

/* The backend in slot (1..count) of a service port, or NULL. */
static __always_inline struct lb4_backend *lb4_slot_backend(__be32 addr, __be16 port, __u8 proto,
							     __u32 slot, __u32 *backend_id)
{
	struct lb4_key key = { .address = addr, .dport = port, .proto = proto, .slot = slot };
	struct lb4_service *s = bpf_map_lookup_elem(&mbr_lb4_services, &key);

	if (!s)
		return NULL;
	*backend_id = s->backend_id;
	return bpf_map_lookup_elem(&mbr_lb4_backends, &s->backend_id);
}

/* The backend of the Maglev table of service port rev_nat_id for a flow
 * hash, or NULL. */
static __always_inline struct lb4_backend *lb4_maglev_backend(__u32 rev_nat_id, __u32 hash,
							       __u32 *backend_id)
{
	__u32 zero = 0, idx;
	__u32 *table;
	void *inner = bpf_map_lookup_elem(&mbr_lb_maglev, &rev_nat_id);

	if (!inner)
		return NULL;
	table = bpf_map_lookup_elem(inner, &zero);
	if (!table)
		return NULL;
	idx = hash % LB_MAGLEV_SIZE;
	if (idx >= LB_MAGLEV_SIZE)
		return NULL;
	*backend_id = table[idx];
	return bpf_map_lookup_elem(&mbr_lb4_backends, backend_id);
}

/* An affinity entry's backend if it is still active and younger than the
 * timeout; NULL otherwise. */
static __always_inline struct lb4_backend *lb_affinity_backend(struct lb_affinity_key *k,
							       __u32 timeout, __u64 now,
							       __u32 *backend_id)
{
	struct lb_affinity_value *v = bpf_map_lookup_elem(&mbr_lb_affinity, k);
	struct lb4_backend *b;

	if (!v || now - v->last_used > (__u64)timeout * 1000000000ULL)
		return NULL;
	b = bpf_map_lookup_elem(&mbr_lb4_backends, &v->backend_id);
	if (!b || b->state != MBR_LB_BACKEND_ACTIVE)
		return NULL;
	*backend_id = v->backend_id;
	return b;
}

static __always_inline void lb_affinity_update(struct lb_affinity_key *k, __u32 backend_id,
					       __u64 now)
{
	struct lb_affinity_value v = { .last_used = now, .backend_id = backend_id };

	bpf_map_update_elem(&mbr_lb_affinity, k, &v, BPF_ANY);
}

/* Chooses a backend of service port svc (frontend addr:port/proto) for a
 * new connection: the affinity entry of client if the service has one and
 * it is valid, else the Maglev slot of hash (packet path of Maglev
 * services) or a random slot. NULL when the service has no active backend. */
static __always_inline struct lb4_backend *lb4_select(struct lb4_service *svc, __be32 addr,
						      __be16 port, __u8 proto, __u64 client,
						      __u8 netns, __u32 hash, int use_maglev,
						      __u32 *backend_id)
{
	struct lb_affinity_key ak = { .client = client, .rev_nat_id = svc->rev_nat_id, .netns = netns };
	struct lb4_backend *b = NULL;
	__u64 now = 0;

	if (svc->count == 0)
		return NULL;
	if (svc->flags & MBR_LB_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		b = lb_affinity_backend(&ak, svc->affinity_timeout, now, backend_id);
	}
	if (!b && use_maglev && (svc->flags & MBR_LB_F_MAGLEV))
		b = lb4_maglev_backend(svc->rev_nat_id, hash, backend_id);
	if (!b)
		b = lb4_slot_backend(addr, port, proto, bpf_get_prandom_u32() % svc->count + 1,
				     backend_id);
	if (b && (svc->flags & MBR_LB_F_AFFINITY))
		lb_affinity_update(&ak, *backend_id, now);
	return b;
}

#endif /* __MBR_LB_H */
