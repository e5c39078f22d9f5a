package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-net/membrane/internal/api"
	"github.com/membrane-net/membrane/internal/identity"
	"github.com/membrane-net/membrane/internal/kvstore"
	"github.com/membrane-net/membrane/internal/policy"
)

func parseManifest(m string) ([]policy.Object, error) {
	if strings.TrimSpace(m) == "" {
		return nil, &api.Error{Code: api.CodeInvalid, Message: "empty manifest"}
	}
	objs, err := policy.Parse([]byte(m))
	if err != nil {
		return nil, &api.Error{Code: api.CodeInvalid, Message: err.Error()}
	}
	seen := map[kvstore.Ref]bool{}
	for i := range objs {
		r := kvstore.RefOf(&objs[i])
		if seen[r] {
			return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("%s appears twice in the manifest; nothing was stored", r)}
		}
		seen[r] = true
	}
	return objs, nil
}

func toAPIChanges(in []kvstore.Change) []api.ResourceChange {
	out := make([]api.ResourceChange, len(in))
	for i, c := range in {
		out[i] = api.ResourceChange{Ref: storeRef(c.Ref), Action: c.Action}
	}
	return out
}

// finishWrite waits, if asked, until this agent enforces rev.
func (a *Agent) finishWrite(ctx context.Context, wait bool, changes []kvstore.Change, rev int64) (api.ApplyResponse, error) {
	out := api.ApplyResponse{Changes: toAPIChanges(changes), Revision: rev}
	if wait {
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := a.policy.waitRealized(wctx, rev); err != nil {
			return out, &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("stored at revision %d, but this agent does not enforce it yet: %v", rev, err)}
		}
		out.RealizedIn = time.Since(start)
	}
	out.RealizedRevision = a.policy.status().RealizedRevision
	return out, nil
}

// Apply implements api.Backend: validate everything, then store all in one
// transaction; invalid input stores nothing.
func (a *Agent) Apply(ctx context.Context, r api.ApplyRequest) (api.ApplyResponse, error) {
	objs, err := parseManifest(r.Manifest)
	if err != nil {
		return api.ApplyResponse{}, err
	}
	claimed, err := a.prepareServices(ctx, objs)
	if err != nil {
		return api.ApplyResponse{}, err
	}
	changes, rev, err := a.resources.Apply(ctx, objs)
	if err != nil {
		for owner, ip := range claimed {
			if rerr := kvstore.ReleaseServiceIP(context.WithoutCancel(ctx), a.kv.Client, owner, ip); rerr != nil {
				a.log.Warn("release cluster IP after a failed apply", "err", rerr)
			}
		}
		return api.ApplyResponse{}, &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
	}
	return a.finishWrite(ctx, r.Wait, changes, rev)
}

// prepareServices gives every Service without a clusterIP the one it
// already holds or a new one from --service-cidr, claims given cluster IPs
// (one service per address) and checks nodePorts against --nodeport-range.
// It returns the addresses it newly claimed, for release if the apply
// fails; on error it has released them already.
func (a *Agent) prepareServices(ctx context.Context, objs []policy.Object) (claimed map[string]netip.Addr, retErr error) {
	claimed = map[string]netip.Addr{}
	defer func() {
		if retErr != nil {
			for owner, ip := range claimed {
				_ = kvstore.ReleaseServiceIP(context.WithoutCancel(ctx), a.kv.Client, owner, ip)
			}
		}
	}()
	var stored map[kvstore.Ref]policy.Object
	var pending []*policy.Object
	cidr, _ := a.cfg.ServicePrefix()
	lo, hi, _ := a.cfg.NodePorts()
	for i := range objs {
		o := &objs[i]
		if o.Kind != policy.KindService || o.Service == nil {
			continue
		}
		owner := o.Namespace + "/" + o.Name
		for j, p := range o.Service.Ports {
			if p.NodePort != 0 && (uint16(p.NodePort) < lo || uint16(p.NodePort) > hi) {
				return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("%s: spec.ports[%d].nodePort %d is outside --nodeport-range %d-%d; nothing was stored", o.Ref(), j, p.NodePort, lo, hi)}
			}
		}
		if stored == nil {
			// The stored versions of this apply's services (their cluster IPs).
			var refs []kvstore.Ref
			for i := range objs {
				if objs[i].Kind == policy.KindService {
					refs = append(refs, kvstore.RefOf(&objs[i]))
				}
			}
			var err error
			if stored, err = a.resources.Get(ctx, refs); err != nil {
				return nil, &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
			}
		}
		prev := ""
		if s, ok := stored[kvstore.RefOf(o)]; ok && s.Service != nil {
			prev = s.Service.ClusterIP
		}
		switch ip := o.Service.ClusterIP; {
		case ip == "None":
			if prev != "" && prev != "None" {
				return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("%s: spec.clusterIP is immutable (stored %s); delete the service first; nothing was stored", o.Ref(), prev)}
			}
		case ip == "" && prev != "" && prev != "None":
			o.Service.ClusterIP = prev
		case ip == "":
			pending = append(pending, o) // allocated together below
		default:
			addr, err := netip.ParseAddr(ip)
			if err != nil || !cidr.Contains(addr) {
				return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("%s: spec.clusterIP %s is not inside --service-cidr %s; nothing was stored", o.Ref(), ip, cidr)}
			}
			if prev != "" && prev != ip {
				return nil, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("%s: spec.clusterIP is immutable (stored %s, got %s); delete the service first; nothing was stored", o.Ref(), prev, ip)}
			}
			if err := kvstore.ClaimServiceIP(ctx, a.kv.Client, owner, addr); err != nil {
				code := api.CodeUnavailable
				if errors.Is(err, kvstore.ErrServiceIPTaken) {
					code = api.CodeConflict
				}
				return nil, &api.Error{Code: code, Message: err.Error() + "; nothing was stored"}
			}
			if prev == "" {
				claimed[owner] = addr
			}
		}
	}
	if len(pending) > 0 {
		owners := make([]string, len(pending))
		for i, o := range pending {
			owners[i] = o.Namespace + "/" + o.Name
		}
		got, err := kvstore.AllocateServiceIPs(ctx, a.kv.Client, owners, cidr)
		if err != nil {
			return nil, &api.Error{Code: api.CodeExhausted, Message: err.Error() + "; nothing was stored"}
		}
		for i, o := range pending {
			claimed[owners[i]] = got[owners[i]]
			o.Service.ClusterIP = got[owners[i]].String()
		}
	}
	return claimed, nil
}

// DeleteResources implements api.Backend.
func (a *Agent) DeleteResources(ctx context.Context, r api.ApplyRequest) (api.ApplyResponse, error) {
	objs, err := parseManifest(r.Manifest)
	if err != nil {
		return api.ApplyResponse{}, err
	}
	refs := make([]kvstore.Ref, len(objs))
	for i := range objs {
		refs[i] = kvstore.RefOf(&objs[i])
	}
	// Cluster IPs of deleted services go back to the pool.
	ips := map[string]netip.Addr{}
	if stored, _, err := a.resources.List(ctx); err == nil {
		want := map[kvstore.Ref]bool{}
		for _, r := range refs {
			want[r] = true
		}
		for _, s := range stored {
			if s.Kind == policy.KindService && s.Service != nil && want[kvstore.RefOf(&s)] {
				if ip, err := netip.ParseAddr(s.Service.ClusterIP); err == nil {
					ips[s.Namespace+"/"+s.Name] = ip
				}
			}
		}
	}
	changes, rev, err := a.resources.Delete(ctx, refs)
	if err != nil {
		return api.ApplyResponse{}, &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
	}
	for owner, ip := range ips {
		if err := kvstore.ReleaseServiceIP(ctx, a.kv.Client, owner, ip); err != nil {
			a.log.Warn("release cluster IP of a deleted service", "service", owner, "err", err)
		}
	}
	return a.finishWrite(ctx, r.Wait, changes, rev)
}

// Resources implements api.Backend.
func (a *Agent) Resources(ctx context.Context) ([]api.Resource, error) {
	objs, _, err := a.resources.List(ctx)
	if err != nil {
		return nil, &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
	}
	in, res := a.policy.snapshot()
	names := map[uint16]string{}
	for _, ep := range a.eps.List() {
		names[ep.ID] = ep.Namespace + "/" + ep.Name
	}
	out := make([]api.Resource, 0, len(objs))
	for i := range objs {
		b, err := json.Marshal(objs[i])
		if err != nil {
			return nil, err
		}
		r := api.Resource{Ref: storeRef(kvstore.RefOf(&objs[i])), Manifest: b}
		if objs[i].Kind != "Namespace" {
			r.Selects = selectedBy(in, res, &objs[i], names)
		}
		out = append(out, r)
	}
	return out, nil
}

// selectedBy lists the local endpoints whose policy maps carry a rule of o.
func selectedBy(in policy.Input, res policy.Result, o *policy.Object, names map[uint16]string) []string {
	var out []string
	for _, ep := range in.Endpoints {
		pol := res.Endpoints[ep.ID]
		for _, e := range pol.Entries {
			if r := res.Rule(e.Cookie); r != nil && strings.EqualFold(r.Kind, o.Kind) && r.Namespace == o.Namespace && r.Name == o.Name {
				out = append(out, names[ep.ID])
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// Identities implements api.Backend.
func (a *Agent) Identities(ctx context.Context) ([]api.IdentityInfo, error) {
	all, err := a.idAlloc.List(ctx)
	if err != nil {
		return nil, &api.Error{Code: api.CodeUnavailable, Message: err.Error()}
	}
	users := map[uint32][]string{}
	for _, ep := range a.eps.List() {
		users[ep.Identity] = append(users[ep.Identity], ep.Namespace+"/"+ep.Name)
	}
	var out []api.IdentityInfo
	for id := range identity.ReservedNames {
		out = append(out, api.IdentityInfo{ID: uint32(id), Labels: identity.ReservedLabels(id), Reserved: true, Scope: "reserved", Endpoints: users[uint32(id)]})
	}
	for id, canonical := range all {
		l, _ := identity.ParseCanonical(canonical)
		out = append(out, api.IdentityInfo{ID: uint32(id), Labels: l, Scope: "cluster", Endpoints: users[uint32(id)]})
	}
	in, _ := a.policy.snapshot()
	for _, c := range in.CIDRIdentities {
		out = append(out, api.IdentityInfo{ID: c.ID, Labels: map[string]string{"cidr:" + c.Prefix.String(): ""}, Scope: "local", CIDR: c.Prefix.String()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// resolvePeer turns a trace argument into a policy.Peer.
func (a *Agent) resolvePeer(in policy.Input, s string) (policy.Peer, string, error) {
	bad := func(format string, args ...any) (policy.Peer, string, error) {
		return policy.Peer{}, "", &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf(format, args...)}
	}
	if s == "" {
		return bad("empty peer: give a pod (ns/name), an IP, id:<n> or labels k=v,...")
	}
	if n, ok := strings.CutPrefix(s, "id:"); ok {
		v, err := strconv.ParseUint(n, 10, 32)
		if err != nil {
			return bad("peer %q: bad identity number", s)
		}
		return policy.Peer{Identity: uint32(v)}, "identity " + n, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		if ep, err := a.eps.Get(s); err == nil {
			id := ep.ID
			return policy.Peer{Endpoint: &id, IP: ip}, ep.Namespace + "/" + ep.Name + " (" + s + ")", nil
		}
		return policy.Peer{IP: ip}, s, nil
	}
	if strings.Contains(s, "=") {
		want, err := policy.ParseLabels(s)
		if err != nil {
			return bad("peer %q: %v", s, err)
		}
		var match []policy.Identity
		for _, id := range in.Identities {
			ok := true
			for _, l := range want {
				if v, has := id.Labels.Get(l.Key); !has || v != l.Value {
					ok = false
					break
				}
			}
			if ok {
				match = append(match, id)
			}
		}
		switch len(match) {
		case 1:
			return policy.Peer{Identity: match[0].ID}, fmt.Sprintf("identity %d {%s}", match[0].ID, match[0].Labels), nil
		case 0:
			return bad("peer %q: no identity has these labels (known: %d identities; see membrane identity list)", s, len(in.Identities))
		default:
			var ids []string
			for _, m := range match {
				ids = append(ids, strconv.FormatUint(uint64(m.ID), 10))
			}
			return bad("peer %q matches identities %s; add labels (e.g. io.kubernetes.pod.namespace=NS) or use id:<n>", s, strings.Join(ids, ", "))
		}
	}
	ep, err := a.eps.Get(s)
	if err != nil {
		return policy.Peer{}, "", apiError(err)
	}
	id := ep.ID
	return policy.Peer{Endpoint: &id, IP: ep.IPv4}, ep.Namespace + "/" + ep.Name, nil
}

// Trace implements api.Backend.
func (a *Agent) Trace(_ context.Context, r api.TraceRequest) (api.TraceResponse, error) {
	proto, ok := policy.ParseProto(strings.ToUpper(r.Protocol))
	if !ok && strings.EqualFold(r.Protocol, "icmp") {
		proto, ok = 1, true
	}
	if !ok {
		return api.TraceResponse{}, &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("protocol %q: want TCP, UDP, SCTP or ICMP", r.Protocol)}
	}
	in, res := a.policy.snapshot()
	from, fromName, err := a.resolvePeer(in, r.From)
	if err != nil {
		return api.TraceResponse{}, err
	}
	to, toName, err := a.resolvePeer(in, r.To)
	if err != nil {
		return api.TraceResponse{}, err
	}
	v := policy.Trace(in, res, from, to, proto, r.Port)
	conv := func(d policy.DirVerdict) api.TraceDecision {
		out := api.TraceDecision{Enforced: d.Enforced, Decision: d.Decision}
		if d.Rule != nil {
			out.Rule = d.Rule.String()
			out.Policy = strings.ToLower(d.Rule.Kind) + " " + d.Rule.Namespace + "/" + d.Rule.Name
		}
		return out
	}
	out := api.TraceResponse{From: fromName, To: toName, Allowed: v.Allowed, Egress: conv(v.Egress), Ingress: conv(v.Ingress)}
	// A no-rule decision names the policies that isolate the endpoint.
	if v.Egress.Decision == policy.DecisionNoRule && from.Endpoint != nil {
		if pols := res.Endpoints[*from.Endpoint].EgressPolicies; len(pols) > 0 {
			out.Egress.Policy = strings.Join(pols, ",")
			out.Egress.Rule = "no rule allows it; egress isolated by " + out.Egress.Policy
		}
	}
	if v.Ingress.Decision == policy.DecisionNoRule && to.Endpoint != nil {
		if pols := res.Endpoints[*to.Endpoint].IngressPolicies; len(pols) > 0 {
			out.Ingress.Policy = strings.Join(pols, ",")
			out.Ingress.Rule = "no rule allows it; ingress isolated by " + out.Ingress.Policy
		}
	}
	verdict := "DENIED"
	if v.Allowed {
		verdict = "ALLOWED"
	}
	out.Summary = fmt.Sprintf("%s → %s %d/%s: %s (egress: %s; ingress: %s)", fromName, toName, r.Port, policy.ProtoName(proto), verdict, v.Egress, v.Ingress)
	return out, nil
}
