package kvstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ServiceIPsPrefix holds the cluster IPs handed to services:
// serviceips/<ip> = "<namespace>/<name>", permanent until the service is
// deleted.
const ServiceIPsPrefix = Prefix + "serviceips/"

// ErrServiceIPTaken is returned (wrapped) when an address belongs to
// another service.
var ErrServiceIPTaken = errors.New("cluster IP taken")

// ClaimServiceIP records that service owner ("ns/name") holds ip; claiming
// an address the owner already holds succeeds.
func ClaimServiceIP(ctx context.Context, c *clientv3.Client, owner string, ip netip.Addr) error {
	key := ServiceIPsPrefix + ip.String()
	t, err := c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, owner)).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return fmt.Errorf("claim cluster IP %s for service %s: %w", ip, owner, err)
	}
	if t.Succeeded {
		return nil
	}
	kvs := t.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 1 && string(kvs[0].Value) == owner {
		return nil
	}
	holder := ""
	if len(kvs) == 1 {
		holder = string(kvs[0].Value)
	}
	return fmt.Errorf("cluster IP %s for service %s: held by service %s: %w", ip, owner, holder, ErrServiceIPTaken)
}

// AllocateServiceIP returns the address owner holds in cidr, or claims the
// first free one. The network and broadcast addresses are never handed out.
func AllocateServiceIP(ctx context.Context, c *clientv3.Client, owner string, cidr netip.Prefix) (netip.Addr, error) {
	resp, err := c.Get(ctx, ServiceIPsPrefix, clientv3.WithPrefix())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate cluster IP for service %s: %w", owner, err)
	}
	used := map[netip.Addr]bool{}
	for _, kv := range resp.Kvs {
		ip, err := netip.ParseAddr(string(kv.Key[len(ServiceIPsPrefix):]))
		if err != nil {
			continue
		}
		if string(kv.Value) == owner && cidr.Contains(ip) {
			return ip, nil
		}
		used[ip] = true
	}
	cidr = cidr.Masked()
	size := 1 << (cidr.Addr().BitLen() - cidr.Bits())
	ip := cidr.Addr().Next()
	for i := 1; i < size-1; i++ {
		if !used[ip] {
			err := ClaimServiceIP(ctx, c, owner, ip)
			if err == nil {
				return ip, nil
			}
			if !errors.Is(err, ErrServiceIPTaken) {
				return netip.Addr{}, err
			}
		}
		ip = ip.Next()
	}
	return netip.Addr{}, fmt.Errorf("allocate cluster IP for service %s: all %d addresses of %s are taken", owner, size-2, cidr)
}

// ReleaseServiceIP frees ip if owner holds it.
func ReleaseServiceIP(ctx context.Context, c *clientv3.Client, owner string, ip netip.Addr) error {
	key := ServiceIPsPrefix + ip.String()
	_, err := c.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", owner)).Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("release cluster IP %s of service %s: %w", ip, owner, err)
	}
	return nil
}

// AllocateServiceIPs gives every owner ("ns/name") the address it holds
// in cidr, or a free one, reading the allocations once and claiming the
// new addresses in one transaction (retried if another writer raced it).
// For the services of one apply: n services cost one read, not n.
func AllocateServiceIPs(ctx context.Context, c *clientv3.Client, owners []string, cidr netip.Prefix) (map[string]netip.Addr, error) {
	cidr = cidr.Masked()
	size := 1 << (cidr.Addr().BitLen() - cidr.Bits())
	for attempt := 0; attempt < 5; attempt++ {
		resp, err := c.Get(ctx, ServiceIPsPrefix, clientv3.WithPrefix())
		if err != nil {
			return nil, fmt.Errorf("allocate cluster IPs: %w", err)
		}
		out := map[string]netip.Addr{}
		used := map[netip.Addr]bool{}
		for _, kv := range resp.Kvs {
			ip, err := netip.ParseAddr(string(kv.Key[len(ServiceIPsPrefix):]))
			if err != nil {
				continue
			}
			used[ip] = true
			if cidr.Contains(ip) {
				out[string(kv.Value)] = ip
			}
		}
		var conds []clientv3.Cmp
		var puts []clientv3.Op
		next, i := cidr.Addr().Next(), 1
		for _, o := range owners {
			if _, ok := out[o]; ok {
				continue
			}
			for i < size-1 && used[next] {
				next, i = next.Next(), i+1
			}
			if i >= size-1 {
				return nil, fmt.Errorf("allocate cluster IP for service %s: all %d addresses of %s are taken", o, size-2, cidr)
			}
			key := ServiceIPsPrefix + next.String()
			conds = append(conds, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
			puts = append(puts, clientv3.OpPut(key, o))
			out[o] = next
			used[next] = true
		}
		if len(puts) == 0 {
			return out, nil
		}
		t, err := c.Txn(ctx).If(conds...).Then(puts...).Commit()
		if err != nil {
			return nil, fmt.Errorf("allocate cluster IPs for %d services: %w", len(puts), err)
		}
		if t.Succeeded {
			return out, nil
		}
	}
	return nil, fmt.Errorf("allocate cluster IPs for %d services: other writers kept taking the same addresses; try again", len(owners))
}
