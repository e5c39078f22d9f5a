package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Backend is what the HTTP server exposes; the agent implements it. Errors
// that are *Error keep their code; any other error is CodeInternal.
type Backend interface {
	Status(ctx context.Context) Status
	Endpoints(ctx context.Context) []Endpoint
	Endpoint(ctx context.Context, ref string) (Endpoint, error)
	PatchEndpoint(ctx context.Context, ref string, p EndpointPatch) (Endpoint, error)
	CNIAdd(ctx context.Context, r CNIAddRequest) (CNIAddResponse, error)
	CNIDel(ctx context.Context, r CNIDelRequest) error
	CNICheck(ctx context.Context, r CNICheckRequest) error
	CNIGC(ctx context.Context, r CNIGCRequest) (CNIGCResponse, error)
	CNIStatus(ctx context.Context) error
	BPFEndpoints(ctx context.Context) ([]BPFEndpointEntry, error)
	Apply(ctx context.Context, r ApplyRequest) (ApplyResponse, error)
	DeleteResources(ctx context.Context, r ApplyRequest) (ApplyResponse, error)
	Resources(ctx context.Context) ([]Resource, error)
	Identities(ctx context.Context) ([]IdentityInfo, error)
	Trace(ctx context.Context, r TraceRequest) (TraceResponse, error)
	BPFPolicy(ctx context.Context, ref string) (BPFPolicy, error)
	BPFIPCache(ctx context.Context) ([]BPFIPCacheEntry, error)
	BPFCT(ctx context.Context) ([]BPFCTEntry, error)
	BPFCTFlush(ctx context.Context) (int, error)
	// Flows emits stored flows matching q (and, with q.Follow, new ones
	// until ctx ends).
	Flows(ctx context.Context, q FlowQuery, emit func(Flow) error) error
	// Monitor emits raw datapath events until ctx ends.
	Monitor(ctx context.Context, emit func(any) error) error
	Nodes(ctx context.Context) ([]Node, error)
	BPFTunnels(ctx context.Context) ([]BPFTunnelEntry, error)
	BGPPeers(ctx context.Context) ([]BGPPeer, error)
	BGPRoutes(ctx context.Context) ([]BGPRoute, error)
	Services(ctx context.Context) ([]Service, error)
	Service(ctx context.Context, ref string) (Service, error)
	BPFLB(ctx context.Context) (BPFLB, error)
}

// NewHandler returns the API's HTTP handler.
func NewHandler(b Backend, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	h := &handler{b: b, log: log}
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, b.Status(r.Context()))
	})
	mux.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, b.Endpoints(r.Context()))
	})
	mux.HandleFunc("GET /v1/endpoints/{ref...}", withRef(h, b.Endpoint))
	mux.HandleFunc("PATCH /v1/endpoints/{ref...}", func(w http.ResponseWriter, r *http.Request) {
		var p EndpointPatch
		if !h.decode(w, r, &p) {
			return
		}
		ep, err := b.PatchEndpoint(r.Context(), r.PathValue("ref"), p)
		h.reply(w, r, ep, err)
	})
	mux.HandleFunc("POST /v1/cni/add", withBody(h, b.CNIAdd))
	mux.HandleFunc("POST /v1/cni/del", withBody(h, noResult(b.CNIDel)))
	mux.HandleFunc("POST /v1/cni/check", withBody(h, noResult(b.CNICheck)))
	mux.HandleFunc("POST /v1/cni/gc", withBody(h, b.CNIGC))
	mux.HandleFunc("GET /v1/cni/status", without(h, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, b.CNIStatus(ctx)
	}))
	mux.HandleFunc("GET /v1/bpf/endpoints", without(h, b.BPFEndpoints))
	mux.HandleFunc("POST /v1/resources/apply", withBody(h, b.Apply))
	mux.HandleFunc("POST /v1/resources/delete", withBody(h, b.DeleteResources))
	mux.HandleFunc("GET /v1/resources", without(h, b.Resources))
	mux.HandleFunc("GET /v1/identities", without(h, b.Identities))
	mux.HandleFunc("POST /v1/policy/trace", withBody(h, b.Trace))
	mux.HandleFunc("GET /v1/bpf/policy/{ref...}", withRef(h, b.BPFPolicy))
	mux.HandleFunc("GET /v1/bpf/ipcache", without(h, b.BPFIPCache))
	mux.HandleFunc("GET /v1/bpf/ct", without(h, b.BPFCT))
	mux.HandleFunc("DELETE /v1/bpf/ct", without(h, func(ctx context.Context) (map[string]int, error) {
		n, err := b.BPFCTFlush(ctx)
		return map[string]int{"deleted": n}, err
	}))
	mux.HandleFunc("POST /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		var q FlowQuery
		if !h.decode(w, r, &q) {
			return
		}
		st := newStreamer(w)
		err := b.Flows(r.Context(), q, func(f Flow) error { return st.emit(f) })
		st.finish(h, r, err)
	})
	mux.HandleFunc("POST /v1/monitor", func(w http.ResponseWriter, r *http.Request) {
		st := newStreamer(w)
		err := b.Monitor(r.Context(), st.emit)
		st.finish(h, r, err)
	})
	mux.HandleFunc("GET /v1/nodes", without(h, b.Nodes))
	mux.HandleFunc("GET /v1/bpf/tunnel", without(h, b.BPFTunnels))
	mux.HandleFunc("GET /v1/bgp/peers", without(h, b.BGPPeers))
	mux.HandleFunc("GET /v1/bgp/routes", without(h, b.BGPRoutes))
	mux.HandleFunc("GET /v1/services", without(h, b.Services))
	mux.HandleFunc("GET /v1/services/{ref...}", withRef(h, b.Service))
	mux.HandleFunc("GET /v1/bpf/lb", without(h, b.BPFLB))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, Error{Code: CodeNotFound, Message: fmt.Sprintf("no API route %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

// The route adapters: a request body decoded strictly into Req, the path's
// {ref}, or nothing, in; the backend's answer or error out.

func withBody[Req, Resp any](h *handler, fn func(context.Context, Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if !h.decode(w, r, &req) {
			return
		}
		out, err := fn(r.Context(), req)
		h.reply(w, r, out, err)
	}
}

func withRef[Resp any](h *handler, fn func(context.Context, string) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out, err := fn(r.Context(), r.PathValue("ref"))
		h.reply(w, r, out, err)
	}
}

func without[Resp any](h *handler, fn func(context.Context) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		out, err := fn(r.Context())
		h.reply(w, r, out, err)
	}
}

// noResult adapts a call that answers only with an error; success is {}.
func noResult[Req any](fn func(context.Context, Req) error) func(context.Context, Req) (struct{}, error) {
	return func(ctx context.Context, req Req) (struct{}, error) { return struct{}{}, fn(ctx, req) }
}

type handler struct {
	b   Backend
	log *slog.Logger
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// refused, so a typo in a client never silently means something else.
func (h *handler) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, Error{Code: CodeInvalid, Message: fmt.Sprintf("decode %s %s body: %v", r.Method, r.URL.Path, err)})
		return false
	}
	if dec.More() {
		writeJSON(w, http.StatusBadRequest, Error{Code: CodeInvalid, Message: fmt.Sprintf("decode %s %s body: trailing data after JSON object", r.Method, r.URL.Path)})
		return false
	}
	return true
}

func (h *handler) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err == nil {
		writeJSON(w, http.StatusOK, v)
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: CodeInternal, Message: err.Error()}
	}
	status := map[string]int{
		CodeInvalid:     http.StatusBadRequest,
		CodeNotFound:    http.StatusNotFound,
		CodeConflict:    http.StatusConflict,
		CodeExhausted:   http.StatusInsufficientStorage,
		CodeUnavailable: http.StatusServiceUnavailable,
	}[e.Code]
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if status >= 500 && h.log != nil {
		h.log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", e.Message)
	}
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Server serves the API on a unix socket with mode 0600.
type Server struct {
	path string
	srv  *http.Server
	ln   net.Listener
	done chan error
}

// Listen creates the socket (replacing a stale one) and starts serving.
func Listen(path string, h http.Handler) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory for %s: %w", path, err)
	}
	// A live agent on the same socket must not be hijacked.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen on %s: another agent is already serving this socket", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod 0600 %s: %w", path, err)
	}
	s := &Server{path: path, ln: ln, done: make(chan error, 1),
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}}
	go func() { s.done <- s.srv.Serve(ln) }()
	return s, nil
}

// Shutdown stops accepting, waits for in-flight requests and removes the socket.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	<-s.done
	_ = os.Remove(s.path)
	return err
}

// streamer writes JSON lines, flushing each, and turns an error before the
// first line into a normal error reply.
type streamer struct {
	w       http.ResponseWriter
	enc     *json.Encoder
	started bool
}

func newStreamer(w http.ResponseWriter) *streamer { return &streamer{w: w, enc: json.NewEncoder(w)} }

func (s *streamer) emit(v any) error {
	if !s.started {
		s.w.Header().Set("Content-Type", "application/x-ndjson")
		s.w.WriteHeader(http.StatusOK)
		s.started = true
	}
	if err := s.enc.Encode(v); err != nil {
		return err
	}
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
	return nil
}

func (s *streamer) finish(h *handler, r *http.Request, err error) {
	if err != nil && !s.started {
		h.reply(s.w, r, nil, err)
		return
	}
	if !s.started {
		s.w.Header().Set("Content-Type", "application/x-ndjson")
		s.w.WriteHeader(http.StatusOK)
	}
}
