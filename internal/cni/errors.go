package cni

import (
	"context"
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/membrane-net/membrane/internal/api"
)

// Plugin-specific CNI error codes (the spec reserves 100 and up for plugins).
const (
	ErrPoolExhausted uint = 100 // the agent's address pool is exhausted
	ErrConflict      uint = 101 // the attachment exists with different parameters
)

// Error code table: every error the plugin prints is one of these rows.
// skel produces the rows marked (skel); configErrorToCNI, agentErrorToCNI
// and Plugin.checkNetns the others. A result the plugin cannot build or
// print is 999 / 5 and rolls the ADD back.
//
//	cause                                   ADD  DEL  CHECK  GC   STATUS
//	config version unsupported (skel)        1    1     1     1     1
//	ipam section present                     2    -     2     -     2
//	stdin not JSON (skel / ParseConfig)      6    6     6     6     6
//	prevResult not a valid result            -    -     6     -     -
//	config invalid (*ConfigError, no name)   7    7     7     7     7
//	required CNI_* env missing (skel)        4    4     4     4     4
//	CNI_NETNS absent, bad CNI_ARGS           4    -     -     -     -
//	CNI_NETNS is the plugin's own netns      8    8     -     -     -
//	agent unreachable (ErrAgentUnreachable) 11   11    11    11    50
//	agent did not answer in time            11   11    11    11    50
//	agent "invalid"                          7    7     7     7     7
//	agent "not-found"                      999   ok     3   999   999
//	agent "exhausted"                      100  100   100   100   100
//	agent "unavailable"                     11   11    11    11    50
//	agent "conflict"                       101  101   101   101   101
//	agent "internal" / anything else       999  999   999   999   999
//
// DEL and GC validate only name and socketPath, so labels, ports or mtu
// that ADD would refuse never block cleanup.

// command names the CNI verb being served; it changes a few mappings.
type command string

const (
	cmdAdd    command = "ADD"
	cmdDel    command = "DEL"
	cmdCheck  command = "CHECK"
	cmdGC     command = "GC"
	cmdStatus command = "STATUS"
)

// configErrorToCNI maps errors from ParseConfig, Validate and ParseArgs.
func configErrorToCNI(err error) *types.Error {
	var (
		de *DecodeError
		ce *ConfigError
		ue *UnsupportedFieldError
		ae *ArgsError
	)
	switch {
	case errors.As(err, &de):
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	case errors.As(err, &ce):
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid network config: "+err.Error(), "")
	case errors.As(err, &ue):
		return types.NewError(types.ErrUnsupportedField, "unsupported field: "+err.Error(), "")
	case errors.As(err, &ae):
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	default:
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
}

// agentErrorToCNI maps an error from the agent client. socket names the
// socket dialled, for messages that send the operator to the agent.
func agentErrorToCNI(cmd command, socket string, err error) *types.Error {
	unavailable := types.ErrTryAgainLater
	if cmd == cmdStatus {
		unavailable = types.ErrPluginNotAvailable
	}

	if errors.Is(err, api.ErrAgentUnreachable) {
		return types.NewError(unavailable,
			fmt.Sprintf("membrane-agent is not reachable at %s: check that membrane-agent is running and that socketPath in the CNI config is the agent's API socket", socket),
			err.Error())
	}
	var timeout interface{ Timeout() bool }
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &timeout) && timeout.Timeout() {
		return types.NewError(unavailable,
			fmt.Sprintf("membrane-agent at %s did not answer %s in time: check membrane-agent's health and logs", socket, cmd),
			err.Error())
	}

	var ae *api.Error
	if !errors.As(err, &ae) {
		return types.NewError(types.ErrInternal, fmt.Sprintf("%s via membrane-agent at %s: %v", cmd, socket, err), "")
	}
	details := "membrane-agent error code: " + ae.Code
	switch ae.Code {
	case api.CodeInvalid:
		return types.NewError(types.ErrInvalidNetworkConfig, "membrane-agent rejected the request: "+ae.Message, details)
	case api.CodeNotFound:
		if cmd == cmdCheck {
			return types.NewError(types.ErrUnknownContainer, "unknown container: "+ae.Message, details)
		}
	case api.CodeExhausted:
		return types.NewError(ErrPoolExhausted, "address pool exhausted: "+ae.Message, details)
	case api.CodeUnavailable:
		return types.NewError(unavailable, "membrane-agent is not ready: "+ae.Message, details)
	case api.CodeConflict:
		return types.NewError(ErrConflict, "conflicting attachment: "+ae.Message, details)
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("%s failed in membrane-agent: %s", cmd, ae.Message), details)
}
