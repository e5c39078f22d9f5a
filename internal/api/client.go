package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"
)

// ErrAgentUnreachable is returned (wrapped) when the agent's socket cannot be
// reached: not running, wrong path, or no permission.
var ErrAgentUnreachable = errors.New("agent not reachable")

// Client talks to the agent over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the agent listening on socketPath.
func NewClient(socketPath string) *Client {
	if socketPath == "" {
		socketPath = DefaultSocketPath
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns: 2,
	}
	return &Client{socket: socketPath, hc: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
}

// SocketPath is the socket this client dials.
func (c *Client) SocketPath() string { return c.socket }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://membrane"+path, body)
	if err != nil {
		return fmt.Errorf("build %s %s request: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return fmt.Errorf("%w at %s: %v (is membrane-agent running?)", ErrAgentUnreachable, c.socket, opErr.Err)
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read %s %s response: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Code != "" {
			return &e
		}
		return &Error{Code: CodeInternal, Message: fmt.Sprintf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, bytes.TrimSpace(data))}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", method, path, err)
	}
	return nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &s)
	return s, err
}

// Endpoints lists all endpoints.
func (c *Client) Endpoints(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	err := c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &eps)
	return eps, err
}

// Endpoint returns one endpoint by numeric id or by container id.
func (c *Client) Endpoint(ctx context.Context, idOrContainer string) (Endpoint, error) {
	var ep Endpoint
	err := c.do(ctx, http.MethodGet, "/v1/endpoints/"+idOrContainer, nil, &ep)
	return ep, err
}

// PatchEndpoint changes an endpoint's labels or named ports.
func (c *Client) PatchEndpoint(ctx context.Context, id uint16, p EndpointPatch) (Endpoint, error) {
	var ep Endpoint
	err := c.do(ctx, http.MethodPatch, "/v1/endpoints/"+strconv.Itoa(int(id)), p, &ep)
	return ep, err
}

// CNIAdd creates (or returns the existing) attachment.
func (c *Client) CNIAdd(ctx context.Context, r CNIAddRequest) (CNIAddResponse, error) {
	var out CNIAddResponse
	err := c.do(ctx, http.MethodPost, "/v1/cni/add", r, &out)
	return out, err
}

// CNIDel removes an attachment; removing an unknown one is not an error.
func (c *Client) CNIDel(ctx context.Context, r CNIDelRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/cni/del", r, nil)
}

// CNICheck verifies an attachment.
func (c *Client) CNICheck(ctx context.Context, r CNICheckRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/cni/check", r, nil)
}

// CNIGC releases every attachment not listed as valid.
func (c *Client) CNIGC(ctx context.Context, r CNIGCRequest) (CNIGCResponse, error) {
	var out CNIGCResponse
	err := c.do(ctx, http.MethodPost, "/v1/cni/gc", r, &out)
	return out, err
}

// CNIStatus returns nil when the agent is ready to serve ADD.
func (c *Client) CNIStatus(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/v1/cni/status", nil, nil)
}

// BPFEndpoints dumps the datapath's endpoint map.
func (c *Client) BPFEndpoints(ctx context.Context) ([]BPFEndpointEntry, error) {
	var out []BPFEndpointEntry
	err := c.do(ctx, http.MethodGet, "/v1/bpf/endpoints", nil, &out)
	return out, err
}

// Apply stores manifests.
func (c *Client) Apply(ctx context.Context, r ApplyRequest) (ApplyResponse, error) {
	var out ApplyResponse
	err := c.do(ctx, http.MethodPost, "/v1/resources/apply", r, &out)
	return out, err
}

// DeleteResources deletes the resources named in the manifests.
func (c *Client) DeleteResources(ctx context.Context, r ApplyRequest) (ApplyResponse, error) {
	var out ApplyResponse
	err := c.do(ctx, http.MethodPost, "/v1/resources/delete", r, &out)
	return out, err
}

// Resources lists stored resources.
func (c *Client) Resources(ctx context.Context) ([]Resource, error) {
	var out []Resource
	err := c.do(ctx, http.MethodGet, "/v1/resources", nil, &out)
	return out, err
}

// Identities lists security identities.
func (c *Client) Identities(ctx context.Context) ([]IdentityInfo, error) {
	var out []IdentityInfo
	err := c.do(ctx, http.MethodGet, "/v1/identities", nil, &out)
	return out, err
}

// Trace explains the policy verdict for a packet.
func (c *Client) Trace(ctx context.Context, r TraceRequest) (TraceResponse, error) {
	var out TraceResponse
	err := c.do(ctx, http.MethodPost, "/v1/policy/trace", r, &out)
	return out, err
}

// BPFPolicy dumps an endpoint's policy map.
func (c *Client) BPFPolicy(ctx context.Context, ref string) (BPFPolicy, error) {
	var out BPFPolicy
	err := c.do(ctx, http.MethodGet, "/v1/bpf/policy/"+ref, nil, &out)
	return out, err
}

// BPFIPCache dumps the ipcache.
func (c *Client) BPFIPCache(ctx context.Context) ([]BPFIPCacheEntry, error) {
	var out []BPFIPCacheEntry
	err := c.do(ctx, http.MethodGet, "/v1/bpf/ipcache", nil, &out)
	return out, err
}

// BPFCT dumps conntrack.
func (c *Client) BPFCT(ctx context.Context) ([]BPFCTEntry, error) {
	var out []BPFCTEntry
	err := c.do(ctx, http.MethodGet, "/v1/bpf/ct", nil, &out)
	return out, err
}

// BPFCTFlush empties conntrack and returns how many entries were removed.
func (c *Client) BPFCTFlush(ctx context.Context) (int, error) {
	var out struct {
		Deleted int `json:"deleted"`
	}
	err := c.do(ctx, http.MethodDelete, "/v1/bpf/ct", nil, &out)
	return out.Deleted, err
}

// stream POSTs in and calls each for every JSON line of the response until
// the server ends it, each returns an error, or ctx ends. The client's
// overall timeout does not apply.
func (c *Client) stream(ctx context.Context, path string, in any, each func(json.RawMessage) error) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode %s request: %w", path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://membrane"+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	hc := &http.Client{Transport: c.hc.Transport}
	resp, err := hc.Do(req)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Op == "dial" {
			return fmt.Errorf("%w at %s: %v (is membrane-agent running?)", ErrAgentUnreachable, c.socket, opErr.Err)
		}
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("POST %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		var e Error
		if json.Unmarshal(data, &e) == nil && e.Code != "" {
			return &e
		}
		return &Error{Code: CodeInternal, Message: fmt.Sprintf("POST %s: HTTP %d: %s", path, resp.StatusCode, bytes.TrimSpace(data))}
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read %s stream: %w", path, err)
		}
		if err := each(raw); err != nil {
			return err
		}
	}
}

// Flows returns stored flows matching q, or with q.Follow streams new ones
// to each until ctx ends.
func (c *Client) Flows(ctx context.Context, q FlowQuery, each func(Flow) error) error {
	return c.stream(ctx, "/v1/flows", q, func(raw json.RawMessage) error {
		var f Flow
		if err := json.Unmarshal(raw, &f); err != nil {
			return fmt.Errorf("decode flow: %w", err)
		}
		return each(f)
	})
}

// Monitor streams raw datapath events as JSON objects until ctx ends.
func (c *Client) Monitor(ctx context.Context, each func(json.RawMessage) error) error {
	return c.stream(ctx, "/v1/monitor", struct{}{}, each)
}

// Nodes lists the cluster's nodes.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var out []Node
	err := c.do(ctx, http.MethodGet, "/v1/nodes", nil, &out)
	return out, err
}

// BPFTunnels dumps the tunnel map.
func (c *Client) BPFTunnels(ctx context.Context) ([]BPFTunnelEntry, error) {
	var out []BPFTunnelEntry
	err := c.do(ctx, http.MethodGet, "/v1/bpf/tunnel", nil, &out)
	return out, err
}

// BGPPeers lists BGP sessions.
func (c *Client) BGPPeers(ctx context.Context) ([]BGPPeer, error) {
	var out []BGPPeer
	err := c.do(ctx, http.MethodGet, "/v1/bgp/peers", nil, &out)
	return out, err
}

// BGPRoutes lists the BGP table.
func (c *Client) BGPRoutes(ctx context.Context) ([]BGPRoute, error) {
	var out []BGPRoute
	err := c.do(ctx, http.MethodGet, "/v1/bgp/routes", nil, &out)
	return out, err
}

// Services lists the services this node realises.
func (c *Client) Services(ctx context.Context) ([]Service, error) {
	var out []Service
	err := c.do(ctx, http.MethodGet, "/v1/services", nil, &out)
	return out, err
}

// Service returns one service by "namespace/name" (or "name" in default).
func (c *Client) Service(ctx context.Context, ref string) (Service, error) {
	var out Service
	err := c.do(ctx, http.MethodGet, "/v1/services/"+ref, nil, &out)
	return out, err
}

// BPFLB dumps the load-balancing maps.
func (c *Client) BPFLB(ctx context.Context) (BPFLB, error) {
	var out BPFLB
	err := c.do(ctx, http.MethodGet, "/v1/bpf/lb", nil, &out)
	return out, err
}
