package loader

// The generated datapath_bpfel.{go,o} are committed; regenerate after any
// change under bpf/ and commit the result (it is byte-for-byte reproducible).
//go:generate go tool bpf2go -tags linux -target bpfel -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../../../bpf/include" -type endpoint_key -type endpoint_info -type ipcache_key -type ipcache_value -type policy_key -type policy_value -type ct_key -type ct_entry -type metrics_key -type metrics_value -type dp_config -type tunnel_value -type flow_event -type lb4_key -type lb4_service -type lb4_backend -type lb4_revnat -type lb_affinity_key -type lb_affinity_value -type lb4_sk_key -type lb4_nat_key -type lb4_nat datapath ../../../bpf/datapath.c
