package cni

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/membrane-net/membrane/internal/api"
)

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

func TestAgentErrorToCNI(t *testing.T) {
	const sock = "/run/membrane/membrane.sock"
	unreachable := fmt.Errorf("%w at %s: connect: no such file or directory", api.ErrAgentUnreachable, sock)
	agentErr := func(code string) error {
		return &api.Error{Code: code, Message: "pool 10.1.0.0/24 has no free address"}
	}

	tests := []struct {
		name string
		cmd  command
		err  error
		code uint
		msg  string // substring of msg
	}{
		{"unreachable ADD", cmdAdd, unreachable, types.ErrTryAgainLater, "membrane-agent is not reachable at " + sock},
		{"unreachable DEL", cmdDel, unreachable, types.ErrTryAgainLater, "check that membrane-agent is running"},
		{"unreachable CHECK", cmdCheck, unreachable, types.ErrTryAgainLater, sock},
		{"unreachable GC", cmdGC, unreachable, types.ErrTryAgainLater, sock},
		{"unreachable STATUS", cmdStatus, unreachable, types.ErrPluginNotAvailable, sock},
		{"deadline ADD", cmdAdd, fmt.Errorf("POST /v1/cni/add: %w", context.DeadlineExceeded), types.ErrTryAgainLater, "did not answer ADD in time"},
		{"timeout STATUS", cmdStatus, fmt.Errorf("GET: %w", timeoutErr{}), types.ErrPluginNotAvailable, "did not answer STATUS in time"},
		{"invalid", cmdAdd, agentErr(api.CodeInvalid), types.ErrInvalidNetworkConfig, "rejected the request: pool"},
		{"not-found CHECK", cmdCheck, agentErr(api.CodeNotFound), types.ErrUnknownContainer, "unknown container"},
		{"not-found ADD", cmdAdd, agentErr(api.CodeNotFound), types.ErrInternal, "ADD failed in membrane-agent"},
		{"exhausted", cmdAdd, agentErr(api.CodeExhausted), ErrPoolExhausted, "address pool exhausted: pool 10.1.0.0/24 has no free address"},
		{"unavailable ADD", cmdAdd, agentErr(api.CodeUnavailable), types.ErrTryAgainLater, "not ready"},
		{"unavailable STATUS", cmdStatus, agentErr(api.CodeUnavailable), types.ErrPluginNotAvailable, "not ready"},
		{"conflict", cmdAdd, agentErr(api.CodeConflict), ErrConflict, "conflicting attachment"},
		{"internal", cmdDel, agentErr(api.CodeInternal), types.ErrInternal, "DEL failed in membrane-agent"},
		{"unknown agent code", cmdAdd, agentErr("teapot"), types.ErrInternal, "pool 10.1.0.0/24"},
		{"other error", cmdAdd, errors.New("decode POST /v1/cni/add response: EOF"), types.ErrInternal, "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := agentErrorToCNI(tt.cmd, sock, tt.err)
			if e.Code != tt.code {
				t.Errorf("code = %d, want %d", e.Code, tt.code)
			}
			if !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("msg = %q, want it to contain %q", e.Msg, tt.msg)
			}
			var ae *api.Error
			if errors.As(tt.err, &ae) && !strings.Contains(e.Details, ae.Code) {
				t.Errorf("details = %q, want the agent code %q", e.Details, ae.Code)
			}
		})
	}
}
