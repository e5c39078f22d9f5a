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
	mux.HandleFunc("GET /v1/endpoints/{ref...}", func(w http.ResponseWriter, r *http.Request) {
		ep, err := b.Endpoint(r.Context(), r.PathValue("ref"))
		h.reply(w, r, ep, err)
	})
	mux.HandleFunc("PATCH /v1/endpoints/{ref...}", func(w http.ResponseWriter, r *http.Request) {
		var p EndpointPatch
		if !h.decode(w, r, &p) {
			return
		}
		ep, err := b.PatchEndpoint(r.Context(), r.PathValue("ref"), p)
		h.reply(w, r, ep, err)
	})
	mux.HandleFunc("POST /v1/cni/add", func(w http.ResponseWriter, r *http.Request) {
		var req CNIAddRequest
		if !h.decode(w, r, &req) {
			return
		}
		resp, err := b.CNIAdd(r.Context(), req)
		h.reply(w, r, resp, err)
	})
	mux.HandleFunc("POST /v1/cni/del", func(w http.ResponseWriter, r *http.Request) {
		var req CNIDelRequest
		if !h.decode(w, r, &req) {
			return
		}
		h.reply(w, r, struct{}{}, b.CNIDel(r.Context(), req))
	})
	mux.HandleFunc("POST /v1/cni/check", func(w http.ResponseWriter, r *http.Request) {
		var req CNICheckRequest
		if !h.decode(w, r, &req) {
			return
		}
		h.reply(w, r, struct{}{}, b.CNICheck(r.Context(), req))
	})
	mux.HandleFunc("POST /v1/cni/gc", func(w http.ResponseWriter, r *http.Request) {
		var req CNIGCRequest
		if !h.decode(w, r, &req) {
			return
		}
		resp, err := b.CNIGC(r.Context(), req)
		h.reply(w, r, resp, err)
	})
	mux.HandleFunc("GET /v1/cni/status", func(w http.ResponseWriter, r *http.Request) {
		h.reply(w, r, struct{}{}, b.CNIStatus(r.Context()))
	})
	mux.HandleFunc("GET /v1/bpf/endpoints", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.BPFEndpoints(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("POST /v1/resources/apply", func(w http.ResponseWriter, r *http.Request) {
		var req ApplyRequest
		if !h.decode(w, r, &req) {
			return
		}
		out, err := b.Apply(r.Context(), req)
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("POST /v1/resources/delete", func(w http.ResponseWriter, r *http.Request) {
		var req ApplyRequest
		if !h.decode(w, r, &req) {
			return
		}
		out, err := b.DeleteResources(r.Context(), req)
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/resources", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.Resources(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.Identities(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("POST /v1/policy/trace", func(w http.ResponseWriter, r *http.Request) {
		var req TraceRequest
		if !h.decode(w, r, &req) {
			return
		}
		out, err := b.Trace(r.Context(), req)
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/bpf/policy/{ref...}", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.BPFPolicy(r.Context(), r.PathValue("ref"))
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/bpf/ipcache", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.BPFIPCache(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/bpf/ct", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.BPFCT(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("DELETE /v1/bpf/ct", func(w http.ResponseWriter, r *http.Request) {
		n, err := b.BPFCTFlush(r.Context())
		h.reply(w, r, map[string]int{"deleted": n}, err)
	})
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
	mux.HandleFunc("GET /v1/nodes", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.Nodes(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/bpf/tunnel", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.BPFTunnels(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/bgp/peers", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.BGPPeers(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("GET /v1/bgp/routes", func(w http.ResponseWriter, r *http.Request) {
		out, err := b.BGPRoutes(r.Context())
		h.reply(w, r, out, err)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, Error{Code: CodeNotFound, Message: fmt.Sprintf("no API route %s %s", r.Method, r.URL.Path)})
	})
	return mux
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
