package loader

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/membrane-net/membrane/internal/testutil"
)

// TestVerifierStats loads the datapath and logs how many instructions the
// verifier processed per program (run with -v to see them), a budget to
// watch when the datapath grows: the kernel's limit is one million.
func TestVerifierStats(t *testing.T) {
	testutil.Privileged(t)
	dp, err := Load(Config{PinDir: testPinDir(t), RouterIPv4: routerIP, EndpointMapSize: 64})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	for name, prog := range map[string]*ebpf.Program{
		datapathProgFromContainer: dp.objs.FromContainer,
		datapathProgFromHost:      dp.objs.FromHost,
		datapathProgFromOverlay:   dp.objs.FromOverlay,
	} {
		info, err := prog.Info()
		if err != nil {
			t.Fatalf("info of %s: %v", name, err)
		}
		n, ok := info.VerifiedInstructions()
		if !ok {
			t.Skipf("kernel does not report verified instructions")
		}
		t.Logf("%s: %d instructions verified", name, n)
	}
}
