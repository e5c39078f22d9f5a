/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Verdict reasons counted in mbr_metrics. 0 is "forwarded" (the packet went
 * on: redirected, handed to the stack); every other value is a drop. The
 * codes are part of the map format and of the Go mirror (loader.DropReason):
 * never renumber, only append. */
#ifndef __MBR_DROP_H
#define __MBR_DROP_H

#define MBR_FORWARDED               0
#define MBR_DROP_POLICY_DENIED      1 /* an explicit deny rule matched */
#define MBR_DROP_POLICY_NO_RULE     2 /* direction enforced and no rule allows */
#define MBR_DROP_INVALID_PACKET     3 /* truncated or malformed headers */
#define MBR_DROP_SPOOFED_SOURCE     4 /* source (IP or ARP sender) not the endpoint of this lxc */
#define MBR_DROP_CT_MAP_FULL        5 /* conntrack entry could not be created */
#define MBR_DROP_UNKNOWN_ENDPOINT   6 /* from_host: destination is no local endpoint */
#define MBR_DROP_TTL_EXCEEDED       7 /* reserved: TTL <= 1 goes to the stack today */
#define MBR_DROP_UNSUPPORTED_L3     8 /* from_host, from_overlay: not IPv4 (ARP included) */
#define MBR_DROP_NO_TUNNEL          9 /* destination behind a tunnel, but no usable overlay device
				       * or tunnel entry; from_overlay: no tunnel metadata */
#define MBR_DROP_INVALID_IDENTITY  10 /* identity unfit for the wire: VNI 0 or host (1) received,
				       * or a source identity that is no 24-bit VNI to send */
#define MBR_DROP_NO_SERVICE_BACKEND 11 /* a service port without an active backend */
#define MBR_DROP_NO_ROUTE          12 /* NodePort: no route to the client or backend */

#endif /* __MBR_DROP_H */
