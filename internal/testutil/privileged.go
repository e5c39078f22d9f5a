// Package testutil holds helpers shared by the project's tests: the
// privileged-test gate and unique names for kernel objects.
package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
)

// Privileged marks a test that needs root (CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN).
// Call it on the test's first line. Without root the test is skipped on a
// developer machine and fails when CI=true, so CI can never pass by skipping.
func Privileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("privileged test %s cannot run: not root (euid %d) and CI=true", t.Name(), os.Geteuid())
	}
	t.Skipf("privileged test %s skipped: needs root", t.Name())
}

// RequireOrFail fails the test under CI=true and skips it otherwise. Use it
// when a privileged test finds that a kernel feature or tool it needs is
// missing.
func RequireOrFail(t testing.TB, ok bool, format string, args ...any) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// UniqueSuffix returns 6 random hex characters, used to make namespace, link
// and pin names unique per test run so that tests can run in parallel and
// after a crashed run.
func UniqueSuffix() string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}
