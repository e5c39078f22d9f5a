package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/membrane-net/membrane/internal/api"
)

// SupportedVersions are the CNI spec versions the plugin speaks. skel
// answers VERSION with them and refuses configs of any other version with
// code 1. 0.4.0 is the oldest with CHECK; 1.1.0 adds GC and STATUS.
var SupportedVersions = version.PluginSupports("0.4.0", "1.0.0", "1.1.0")

// Per-command deadlines for the agent round trip. ADD may wait for an
// address allocation in etcd; STATUS must answer quickly.
const (
	addTimeout    = 60 * time.Second
	delTimeout    = 30 * time.Second
	checkTimeout  = 30 * time.Second
	gcTimeout     = 60 * time.Second
	statusTimeout = 10 * time.Second
)

// Agent is the part of the agent API the plugin uses; *api.Client
// implements it and tests substitute a fake.
type Agent interface {
	CNIAdd(ctx context.Context, r api.CNIAddRequest) (api.CNIAddResponse, error)
	CNIDel(ctx context.Context, r api.CNIDelRequest) error
	CNICheck(ctx context.Context, r api.CNICheckRequest) error
	CNIGC(ctx context.Context, r api.CNIGCRequest) (api.CNIGCResponse, error)
	CNIStatus(ctx context.Context) error
}

// Plugin serves one CNI invocation. Its methods are the skel callbacks.
type Plugin struct {
	// NewAgent returns a client for the agent listening on socketPath.
	NewAgent func(socketPath string) Agent
	// Stdout receives the CNI result.
	Stdout io.Writer
	Logger *slog.Logger
	// SelfNetns is the plugin's own network namespace file, compared with
	// CNI_NETNS on ADD; empty skips the comparison.
	SelfNetns string

	// cniVersion of the config being served, once decoded; error objects
	// carry it.
	cniVersion string
}

// New returns a Plugin that talks to the real agent.
func New(stdout io.Writer, logger *slog.Logger) *Plugin {
	return &Plugin{
		NewAgent:  func(socketPath string) Agent { return api.NewClient(socketPath) },
		Stdout:    stdout,
		Logger:    logger,
		SelfNetns: "/proc/self/ns/net",
	}
}

// Funcs returns the skel callbacks.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// Run dispatches the invocation described by the environment and stdin
// through skel. On failure it writes the CNI error object to stdout and
// returns 1; the caller exits with that status.
func (p *Plugin) Run(about string) int {
	e := skel.PluginMainFuncsWithError(p.Funcs(), SupportedVersions, about)
	if e == nil {
		return 0
	}
	p.Logger.Debug("CNI command failed", "code", e.Code, "msg", e.Msg, "details", e.Details)
	if err := p.writeError(e); err != nil {
		p.Logger.Error("write CNI error object", "err", err)
	}
	return 1
}

// errorObject is the spec's error output. types.Error lacks cniVersion,
// which the spec asks for; it is left out when the config was never
// decoded (skel rejected the invocation before calling us).
type errorObject struct {
	CNIVersion string `json:"cniVersion,omitempty"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func (p *Plugin) writeError(e *types.Error) error {
	data, err := json.MarshalIndent(errorObject{CNIVersion: p.cniVersion, Code: e.Code, Msg: e.Msg, Details: e.Details}, "", "    ")
	if err != nil {
		return err
	}
	_, err = p.Stdout.Write(append(data, '\n'))
	return err
}

// loadConfig decodes stdin and validates it fully (full=true: ADD, CHECK,
// STATUS) or only as far as cleanup needs (DEL, GC).
func (p *Plugin) loadConfig(stdin []byte, full bool) (*NetConf, *types.Error) {
	conf, err := ParseConfig(stdin)
	if err != nil {
		return nil, configErrorToCNI(err)
	}
	p.cniVersion = conf.CNIVersion
	if full {
		err = conf.Validate()
	} else {
		err = conf.ValidateForCleanup()
	}
	if err != nil {
		return nil, configErrorToCNI(err)
	}
	return conf, nil
}

// Add attaches the container through the agent and prints the result.
func (p *Plugin) Add(args *skel.CmdArgs) (retErr error) {
	conf, cerr := p.loadConfig(args.StdinData, true)
	if cerr != nil {
		return cerr
	}
	if err := p.checkNetns(args.Netns); err != nil {
		return err
	}
	wa, err := ParseArgs(args.Args)
	if err != nil {
		return configErrorToCNI(err)
	}
	ports, err := convertPorts("runtimeConfig.containerPorts", conf.RuntimeConfig.ContainerPorts)
	if err != nil { // already validated; kept so a future change cannot skip it
		return configErrorToCNI(err)
	}
	req := api.CNIAddRequest{
		ContainerID: args.ContainerID,
		Netns:       args.Netns,
		IfName:      args.IfName,
		Namespace:   podNamespace(wa),
		PodName:     podName(wa, args.ContainerID),
		Labels:      mergeLabels(wa.Labels, conf.Args.CNI.Labels, conf.RuntimeConfig.Labels),
		Ports:       ports,
		MTU:         conf.MTU,
	}

	socket := conf.Socket()
	agent := p.NewAgent(socket)
	ctx, cancel := context.WithTimeout(context.Background(), addTimeout)
	defer cancel()
	resp, err := agent.CNIAdd(ctx, req)
	if err != nil {
		return agentErrorToCNI(cmdAdd, socket, err)
	}
	// The agent holds an attachment now: if we cannot hand the runtime a
	// result, undo it so a failed ADD leaves nothing behind.
	defer func() {
		if retErr == nil {
			return
		}
		dctx, dcancel := context.WithTimeout(context.Background(), delTimeout)
		defer dcancel()
		derr := agent.CNIDel(dctx, api.CNIDelRequest{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns})
		if derr != nil {
			p.Logger.Warn("roll back attachment after failed ADD", "container", args.ContainerID, "ifname", args.IfName, "err", derr)
		}
	}()

	res, err := BuildResult(args.IfName, args.Netns, resp)
	if err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	if err := p.printResult(res, conf.CNIVersion); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return nil
}

// printResult converts the result to the caller's version and prints it,
// as types.PrintResult does, but to p.Stdout.
func (p *Plugin) printResult(res *types100.Result, cniVersion string) error {
	out, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return fmt.Errorf("convert result to version %s: %w", cniVersion, err)
	}
	if err := out.PrintTo(p.Stdout); err != nil {
		return fmt.Errorf("print result: %w", err)
	}
	return nil
}

// checkNetns refuses, before the agent is asked anything, a CNI_NETNS that
// does not exist or is the plugin's own namespace.
func (p *Plugin) checkNetns(path string) *types.Error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_NETNS %q does not exist", path), "")
	}
	if err != nil || p.SelfNetns == "" {
		// Not ours to judge (e.g. no permission to stat): the agent, which
		// opens the namespace, reports the precise reason.
		return nil
	}
	self, err := os.Stat(p.SelfNetns)
	if err == nil && os.SameFile(st, self) {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q is the plugin's own network namespace", path), "")
	}
	return nil
}

// Del removes the attachment. An attachment the agent does not know is
// already removed; a missing netns is the agent's to tolerate.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, cerr := p.loadConfig(args.StdinData, false)
	if cerr != nil {
		return cerr
	}
	socket := conf.Socket()
	ctx, cancel := context.WithTimeout(context.Background(), delTimeout)
	defer cancel()
	err := p.NewAgent(socket).CNIDel(ctx, api.CNIDelRequest{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns})
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeNotFound {
		p.Logger.Debug("DEL of unknown attachment", "container", args.ContainerID, "ifname", args.IfName)
		return nil
	}
	if err != nil {
		return agentErrorToCNI(cmdDel, socket, err)
	}
	return nil
}

// Check asks the agent to verify the attachment, with the address from
// prevResult when the runtime passed one.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, cerr := p.loadConfig(args.StdinData, true)
	if cerr != nil {
		return cerr
	}
	addr, err := conf.prevAddress(args.IfName)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, err.Error(), "")
	}
	socket := conf.Socket()
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	err = p.NewAgent(socket).CNICheck(ctx, api.CNICheckRequest{ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns, Address: addr})
	if err != nil {
		return agentErrorToCNI(cmdCheck, socket, err)
	}
	return nil
}

// prevAddress parses prevResult (any supported version, converted to the
// current one) and returns the pod interface's address, or the zero Prefix
// when there is no prevResult.
func (c *NetConf) prevAddress(ifName string) (netip.Prefix, error) {
	if c.RawPrevResult == nil {
		return netip.Prefix{}, nil
	}
	pc := types.PluginConf{CNIVersion: c.CNIVersion, RawPrevResult: c.RawPrevResult}
	if err := version.ParsePrevResult(&pc); err != nil {
		return netip.Prefix{}, fmt.Errorf("prevResult: %w", err)
	}
	prev, err := types100.NewResultFromResult(pc.PrevResult)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("prevResult: convert to %s: %w", types100.ImplementedSpecVersion, err)
	}
	return prevResultAddress(prev, ifName)
}

// GC tells the agent which attachments the runtime still uses; the agent
// releases the rest. Nothing is printed on success.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, cerr := p.loadConfig(args.StdinData, false)
	if cerr != nil {
		return cerr
	}
	gca := conf.GCAttachments()
	valid := make([]api.Attachment, 0, len(gca))
	for _, a := range gca {
		valid = append(valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	socket := conf.Socket()
	ctx, cancel := context.WithTimeout(context.Background(), gcTimeout)
	defer cancel()
	resp, err := p.NewAgent(socket).CNIGC(ctx, api.CNIGCRequest{Valid: valid})
	if err != nil {
		return agentErrorToCNI(cmdGC, socket, err)
	}
	p.Logger.Debug("GC done", "valid", len(valid), "removed", len(resp.RemovedEndpoints), "releasedIPs", len(resp.ReleasedIPs))
	return nil
}

// Status reports whether the agent is ready to serve ADD.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, cerr := p.loadConfig(args.StdinData, true)
	if cerr != nil {
		return cerr
	}
	socket := conf.Socket()
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	if err := p.NewAgent(socket).CNIStatus(ctx); err != nil {
		return agentErrorToCNI(cmdStatus, socket, err)
	}
	return nil
}
