package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type fakeBackend struct {
	adds []CNIAddRequest
	err  error
}

func (f *fakeBackend) Status(context.Context) Status { return Status{NodeName: "n1"} }
func (f *fakeBackend) Endpoints(context.Context) []Endpoint {
	return []Endpoint{{ID: 1, Name: "a", IPv4: netip.MustParseAddr("10.0.0.2")}}
}
func (f *fakeBackend) Endpoint(_ context.Context, ref string) (Endpoint, error) {
	if ref == "1" {
		return Endpoint{ID: 1}, nil
	}
	return Endpoint{}, &Error{Code: CodeNotFound, Message: "no endpoint " + ref}
}
func (f *fakeBackend) PatchEndpoint(_ context.Context, ref string, p EndpointPatch) (Endpoint, error) {
	return Endpoint{ID: 1, Labels: *p.Labels}, nil
}
func (f *fakeBackend) CNIAdd(_ context.Context, r CNIAddRequest) (CNIAddResponse, error) {
	if f.err != nil {
		return CNIAddResponse{}, f.err
	}
	f.adds = append(f.adds, r)
	return CNIAddResponse{Address: netip.MustParsePrefix("10.0.0.2/32")}, nil
}
func (f *fakeBackend) CNIDel(context.Context, CNIDelRequest) error     { return nil }
func (f *fakeBackend) CNICheck(context.Context, CNICheckRequest) error { return f.err }
func (f *fakeBackend) CNIGC(context.Context, CNIGCRequest) (CNIGCResponse, error) {
	return CNIGCResponse{}, nil
}
func (f *fakeBackend) CNIStatus(context.Context) error { return f.err }
func (f *fakeBackend) BPFEndpoints(context.Context) ([]BPFEndpointEntry, error) {
	return nil, errors.New("map gone")
}

func (f *fakeBackend) Apply(context.Context, ApplyRequest) (ApplyResponse, error) {
	return ApplyResponse{Revision: 7}, nil
}
func (f *fakeBackend) DeleteResources(context.Context, ApplyRequest) (ApplyResponse, error) {
	return ApplyResponse{}, nil
}
func (f *fakeBackend) Resources(context.Context) ([]Resource, error)      { return nil, nil }
func (f *fakeBackend) Identities(context.Context) ([]IdentityInfo, error) { return nil, nil }
func (f *fakeBackend) Trace(_ context.Context, r TraceRequest) (TraceResponse, error) {
	return TraceResponse{From: r.From, To: r.To, Allowed: true}, nil
}
func (f *fakeBackend) BPFPolicy(context.Context, string) (BPFPolicy, error)  { return BPFPolicy{}, nil }
func (f *fakeBackend) BPFIPCache(context.Context) ([]BPFIPCacheEntry, error) { return nil, nil }
func (f *fakeBackend) BPFCT(context.Context) ([]BPFCTEntry, error)           { return nil, nil }
func (f *fakeBackend) BPFCTFlush(context.Context) (int, error)               { return 3, nil }

func (f *fakeBackend) Flows(_ context.Context, q FlowQuery, emit func(Flow) error) error {
	if q.Verdict == "bad" {
		return &Error{Code: CodeInvalid, Message: "verdict bad"}
	}
	for i := range 3 {
		if err := emit(Flow{Length: uint32(i)}); err != nil {
			return err
		}
	}
	return nil
}
func (f *fakeBackend) Monitor(_ context.Context, emit func(any) error) error {
	return emit(map[string]int{"type": 1})
}

func (f *fakeBackend) Nodes(context.Context) ([]Node, error) {
	return []Node{{Name: "n1", Self: true}}, nil
}
func (f *fakeBackend) BPFTunnels(context.Context) ([]BPFTunnelEntry, error) { return nil, nil }
func (f *fakeBackend) BGPPeers(context.Context) ([]BGPPeer, error) {
	return nil, &Error{Code: CodeNotFound, Message: "BGP is not enabled"}
}
func (f *fakeBackend) BGPRoutes(context.Context) ([]BGPRoute, error) { return nil, nil }
func (f *fakeBackend) Services(context.Context) ([]Service, error)   { return nil, nil }
func (f *fakeBackend) Service(_ context.Context, ref string) (Service, error) {
	if ref == "default/web" {
		return Service{Name: ref}, nil
	}
	return Service{}, &Error{Code: CodeNotFound, Message: "service " + ref + " not found"}
}
func (f *fakeBackend) BPFLB(context.Context) (BPFLB, error) { return BPFLB{}, nil }

func startServer(t *testing.T, b Backend) *Client {
	t.Helper()
	dir, err := os.MkdirTemp("", "mbr-api")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "a.sock")
	s, err := Listen(sock, NewHandler(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want 0600", fi.Mode().Perm())
	}
	return NewClient(sock)
}

func TestAPIRoundTrips(t *testing.T) {
	fb := &fakeBackend{}
	c := startServer(t, fb)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || st.NodeName != "n1" {
		t.Fatalf("status = %+v, %v", st, err)
	}
	eps, err := c.Endpoints(ctx)
	if err != nil || len(eps) != 1 || eps[0].IPv4.String() != "10.0.0.2" {
		t.Fatalf("endpoints = %+v, %v", eps, err)
	}
	resp, err := c.CNIAdd(ctx, CNIAddRequest{ContainerID: "c", Labels: map[string]string{"a": "b"}})
	if err != nil || resp.Address.String() != "10.0.0.2/32" || fb.adds[0].Labels["a"] != "b" {
		t.Fatalf("add = %+v, %v", resp, err)
	}
	if ar, err := c.Apply(ctx, ApplyRequest{Manifest: "kind: Namespace"}); err != nil || ar.Revision != 7 {
		t.Fatalf("apply = %+v, %v", ar, err)
	}
	if tr, err := c.Trace(ctx, TraceRequest{From: "a", To: "b"}); err != nil || !tr.Allowed || tr.To != "b" {
		t.Fatalf("trace = %+v, %v", tr, err)
	}
	if n, err := c.BPFCTFlush(ctx); err != nil || n != 3 {
		t.Fatalf("ct flush = %d, %v", n, err)
	}
	var got []uint32
	if err := c.Flows(ctx, FlowQuery{}, func(f Flow) error { got = append(got, f.Length); return nil }); err != nil || len(got) != 3 || got[2] != 2 {
		t.Fatalf("flows = %v, %v", got, err)
	}
	var e *Error
	if err := c.Flows(ctx, FlowQuery{Verdict: "bad"}, func(Flow) error { return nil }); !errors.As(err, &e) || e.Code != CodeInvalid {
		t.Fatalf("bad flow query err = %v", err)
	}
	n := 0
	if err := c.Monitor(ctx, func(json.RawMessage) error { n++; return nil }); err != nil || n != 1 {
		t.Fatalf("monitor = %d, %v", n, err)
	}
	l := map[string]string{"x": "y"}
	ep, err := c.PatchEndpoint(ctx, 1, EndpointPatch{Labels: &l})
	if err != nil || ep.Labels["x"] != "y" {
		t.Fatalf("patch = %+v, %v", ep, err)
	}
}

func TestAPIErrors(t *testing.T) {
	fb := &fakeBackend{}
	c := startServer(t, fb)
	ctx := context.Background()

	_, err := c.Endpoint(ctx, "42")
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeNotFound || !strings.Contains(e.Message, "42") {
		t.Errorf("missing endpoint err = %v", err)
	}
	fb.err = &Error{Code: CodeExhausted, Message: "pool 10.0.0.0/30 exhausted"}
	if _, err := c.CNIAdd(ctx, CNIAddRequest{}); !errors.As(err, &e) || e.Code != CodeExhausted {
		t.Errorf("exhausted err = %v", err)
	}
	fb.err = errors.New("boom")
	if err := c.CNIStatus(ctx); !errors.As(err, &e) || e.Code != CodeInternal || e.Message != "boom" {
		t.Errorf("plain error = %v", err)
	}
	if _, err := c.BPFEndpoints(ctx); !errors.As(err, &e) || e.Code != CodeInternal {
		t.Errorf("bpf error = %v", err)
	}
	// Unknown fields are refused, not ignored.
	err = c.do(ctx, "POST", "/v1/cni/add", map[string]any{"containerID": "x", "bogus": 1}, nil)
	if !errors.As(err, &e) || e.Code != CodeInvalid || !strings.Contains(e.Message, "bogus") {
		t.Errorf("unknown field err = %v", err)
	}
	err = c.do(ctx, "GET", "/v1/nope", nil, nil)
	if !errors.As(err, &e) || e.Code != CodeNotFound {
		t.Errorf("unknown route err = %v", err)
	}
}

func TestClientAgentDown(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "none.sock"))
	_, err := c.Status(context.Background())
	if !errors.Is(err, ErrAgentUnreachable) || !strings.Contains(err.Error(), "none.sock") {
		t.Fatalf("err = %v, want ErrAgentUnreachable naming the socket", err)
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	c := startServer(t, &fakeBackend{})
	if _, err := Listen(c.SocketPath(), NewHandler(&fakeBackend{}, nil)); err == nil || !strings.Contains(err.Error(), "already serving") {
		t.Fatalf("second Listen err = %v", err)
	}
}
