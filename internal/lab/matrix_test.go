package lab

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestMatrixRender(t *testing.T) {
	m := Matrix{
		Proto: "tcp",
		Port:  8080,
		Pods:  []string{"default/client", "default/web", "prod/db"},
		OK: [][]bool{
			{true, true, false},
			{true, true, false},
			{false, false, true},
		},
		Err: [][]string{
			{"", "", "timeout"},
			{"", "", "timeout"},
			{"connection refused", "connection refused", ""},
		},
	}
	var b bytes.Buffer
	if err := m.Render(&b); err != nil {
		t.Fatal(err)
	}
	golden(t, "matrix_tcp.golden", b.Bytes())
	if m.Full() {
		t.Error("Full() = true for a partial matrix")
	}

	icmp := Matrix{Proto: "icmp", Pods: []string{"a/x", "b/y"}, OK: [][]bool{{true, true}, {true, true}}, Err: [][]string{{"", ""}, {"", ""}}}
	b.Reset()
	if err := icmp.Render(&b); err != nil {
		t.Fatal(err)
	}
	golden(t, "matrix_icmp.golden", b.Bytes())
	if !icmp.Full() {
		t.Error("Full() = false for a full matrix")
	}

	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "matrix_tcp.json", append(js, '\n'))
}
