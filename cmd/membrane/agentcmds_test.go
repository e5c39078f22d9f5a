package main

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/membrane-net/membrane/internal/api"
)

func TestApplyLabelArgs(t *testing.T) {
	got, err := applyLabelArgs(map[string]string{"app": "web", "tier": "fe"}, []string{"tier-", "env=prod", "app=api"})
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]string{"app": "api", "env": "prod"}, got); d != "" {
		t.Errorf("labels (-want +got):\n%s", d)
	}
	for _, bad := range []string{"novalue", "=x", "-"} {
		if _, err := applyLabelArgs(nil, []string{bad}); err == nil {
			t.Errorf("applyLabelArgs(%q) succeeded", bad)
		}
	}
}

func TestParsePorts(t *testing.T) {
	got, err := parsePorts([]string{"http:80", "dns:53/udp"})
	if err != nil {
		t.Fatal(err)
	}
	want := []api.NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}, {Name: "dns", Port: 53, Protocol: "UDP"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ports (-want +got):\n%s", d)
	}
	for _, bad := range []string{"80", "http:0", "http:70000", ":80"} {
		if _, err := parsePorts([]string{bad}); err == nil {
			t.Errorf("parsePorts(%q) succeeded", bad)
		}
	}
}

func TestRenderTableAndJSON(t *testing.T) {
	eps := []api.Endpoint{{ID: 1, Namespace: "ns", Name: "a", HostIfName: "lxc1", State: "ready", Labels: map[string]string{"b": "2", "a": "1"}}}
	var buf bytes.Buffer
	g := &globals{output: "table"}
	if err := g.render(&buf, eps, func(w io.Writer) {
		fmt.Fprintln(w, "ID\tNAME\tLABELS")
		fmt.Fprintf(w, "%d\t%s\t%s\n", eps[0].ID, eps[0].Name, formatLabels(eps[0].Labels))
	}); err != nil {
		t.Fatal(err)
	}
	if want := "ID  NAME  LABELS\n1   a     a=1,b=2\n"; buf.String() != want {
		t.Errorf("table =\n%q\nwant\n%q", buf.String(), want)
	}
	buf.Reset()
	g.output = "json"
	if err := g.render(&buf, eps, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(buf.Bytes(), []byte(`"namespace": "ns"`)) {
		t.Errorf("json output = %s", buf.String())
	}
	g.output = "xml"
	if err := g.render(&buf, eps, nil); err == nil {
		t.Error("unknown output format accepted")
	}
}

func TestMapWarnings(t *testing.T) {
	got := mapWarnings([]api.MapUsage{{Name: "a", Entries: 90, Capacity: 100}, {Name: "b", Entries: 91, Capacity: 100}, {Name: "c", Entries: 5, Capacity: 0}})
	if len(got) != 1 || !bytes.Contains([]byte(got[0]), []byte("b is 91% full")) {
		t.Errorf("warnings = %q", got)
	}
}
