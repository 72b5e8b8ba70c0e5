package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vatcar/vatcar/bridge"
)

// TestProtosetNamesTheBackendsMethods checks that the descriptor set the
// harness gives the sidecars describes the backend's three methods with
// their real kinds.
func TestProtosetNamesTheBackendsMethods(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench.protoset")
	if err := writeProtoset(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	kinds, err := bridge.ParseKinds(b)
	if err != nil {
		t.Fatal(err)
	}
	want := bridge.Kinds{
		methodUnary:    bridge.KindUnary,
		methodStream:   bridge.KindServerStream,
		methodPingPong: bridge.KindBidiStream,
	}
	if len(kinds) != len(want) {
		t.Errorf("kinds = %v, want %v", kinds, want)
	}
	for m, k := range want {
		if got := kinds.Kind(m); got != k {
			t.Errorf("%s: kind %v, want %v", m, got, k)
		}
	}
}
