package main

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/vatcar/vatcar/sidecar"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRuntimeDefaultsAreVatcars checks that the proxy runs with `vatcar run`'s
// runtime defaults, which it copies rather than link the sidecar package.
func TestRuntimeDefaultsAreVatcars(t *testing.T) {
	if defaultCPUs != sidecar.DefaultCPUs || defaultGCPercent != sidecar.DefaultGCPercent || defaultMemoryLimit != sidecar.DefaultMemoryLimit {
		t.Errorf("grpcproxy runs with GOMAXPROCS %d, GOGC %d, GOMEMLIMIT %d; vatcar run with %d, %d, %d",
			defaultCPUs, defaultGCPercent, defaultMemoryLimit, sidecar.DefaultCPUs, sidecar.DefaultGCPercent, sidecar.DefaultMemoryLimit)
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		ok   bool
	}{
		{"h2c", []string{"--listen", "a:1", "--target", "b:2"}, true},
		{"tls", []string{"--listen", "a:1", "--target", "b:2", "--tls-cert", "c", "--tls-key", "k", "--target-tls"}, true},
		{"pprof", []string{"--listen", "a:1", "--target", "b:2", "--admin-listen", "c:3", "--pprof"}, true},
		{"descriptors", []string{"--listen", "a:1", "--target", "b:2", "--proto-descriptors", "d"}, true},
		{"addr file", []string{"--listen", "127.0.0.1:0", "--target", "b:2", "--addr-file", "f"}, true},
		{"no target", []string{"--listen", "a:1"}, false},
		{"cert without key", []string{"--listen", "a:1", "--target", "b:2", "--tls-cert", "c"}, false},
		{"pprof without admin", []string{"--listen", "a:1", "--target", "b:2", "--pprof"}, false},
		{"zero max", []string{"--listen", "a:1", "--target", "b:2", "--max-message-size", "0"}, false},
		{"argument", []string{"--listen", "a:1", "--target", "b:2", "x"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseFlags(tc.args); (err == nil) != tc.ok {
				t.Errorf("parseFlags(%q): got %v, want ok=%v", tc.args, err, tc.ok)
			}
		})
	}
}

// TestContentSubtype checks the subtype each call is forwarded with: the client's,
// in lower case; none for plain application/grpc.
func TestContentSubtype(t *testing.T) {
	for ct, want := range map[string]string{
		"application/grpc":              "",
		"application/grpc+proto":        "proto",
		"application/grpc+json":         "json",
		"application/grpc+JSON":         "json",
		"application/grpc+json; q=1":    "json",
		"application/grpc;charset=utf8": "",
		"":                              "",
	} {
		md := metadata.MD{}
		if ct != "" {
			md["content-type"] = []string{ct}
		}
		if got := contentSubtype(md); got != want {
			t.Errorf("contentSubtype(%q) = %q, want %q", ct, got, want)
		}
	}
}

// TestSingleRequestMethods reads a descriptor set: the methods that are not
// client-streaming have a single request, with and without a package; a file that is
// not a descriptor set is an error naming the flag.
func TestSingleRequestMethods(t *testing.T) {
	m := func(name string, cs, ss bool) *descriptorpb.MethodDescriptorProto {
		return &descriptorpb.MethodDescriptorProto{Name: proto.String(name), ClientStreaming: proto.Bool(cs), ServerStreaming: proto.Bool(ss)}
	}
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		{Name: proto.String("a.proto"), Package: proto.String("pkg"), Service: []*descriptorpb.ServiceDescriptorProto{{
			Name:   proto.String("Svc"),
			Method: []*descriptorpb.MethodDescriptorProto{m("Unary", false, false), m("Server", false, true), m("Client", true, false), m("Bidi", true, true)},
		}}},
		{Name: proto.String("b.proto"), Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("Top"), Method: []*descriptorpb.MethodDescriptorProto{m("Get", false, false)},
		}}},
	}}
	b, err := proto.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "set.protoset")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := singleRequestMethods(file)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/Top/Get", "/pkg.Svc/Server", "/pkg.Svc/Unary"}
	if keys := slices.Sorted(maps.Keys(got)); !slices.Equal(keys, want) {
		t.Errorf("single-request methods: got %q, want %q", keys, want)
	}
	if got, err := singleRequestMethods(""); err != nil || len(got) != 0 {
		t.Errorf("no file: got %v, %v; want none", got, err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("\xff\xff not protobuf"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := singleRequestMethods(bad); err == nil {
		t.Errorf("a file that is not a descriptor set: no error")
	}
}
