package kvstore

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/membrane-net/membrane/internal/ipam"
)

// IPAMStore persists a node's host-scope allocations under
// /membrane/v1/nodes/<node>/ipam/<addr> = <owner>. It implements ipam.Store.
type IPAMStore struct {
	c      *clientv3.Client
	prefix string
}

// NewIPAMStore returns the store for node.
func NewIPAMStore(c *clientv3.Client, node string) *IPAMStore {
	return &IPAMStore{c: c, prefix: Prefix + "nodes/" + node + "/ipam/"}
}

var _ ipam.Store = (*IPAMStore)(nil)

// Load implements ipam.Store.
func (s *IPAMStore) Load(ctx context.Context) (map[netip.Addr]string, error) {
	resp, err := s.c.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", s.prefix, err)
	}
	out := make(map[netip.Addr]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), s.prefix)
		a, err := netip.ParseAddr(k)
		if err != nil {
			return nil, fmt.Errorf("load %s: bad key %q: %w", s.prefix, kv.Key, err)
		}
		out[a] = string(kv.Value)
	}
	return out, nil
}

// Claim implements ipam.Store with a transaction: the key is created only if
// it does not exist; an existing key with the same owner is success.
func (s *IPAMStore) Claim(ctx context.Context, a netip.Addr, owner string) error {
	key := s.prefix + a.String()
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, owner)).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("claim %s: %w", key, err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 1 && string(kvs[0].Value) == owner {
		return nil
	}
	cur := ""
	if len(kvs) == 1 {
		cur = string(kvs[0].Value)
	}
	return fmt.Errorf("claim %s for %q: held by %q: %w", key, owner, cur, ipam.ErrTaken)
}

// Release implements ipam.Store.
func (s *IPAMStore) Release(ctx context.Context, a netip.Addr) error {
	key := s.prefix + a.String()
	if _, err := s.c.Delete(ctx, key); err != nil {
		return fmt.Errorf("release %s: %w", key, err)
	}
	return nil
}
