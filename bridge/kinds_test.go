package bridge

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
)

// interopKinds returns the kinds of grpc-go's interop test services, read
// by ParseKinds from a descriptor set made of their real descriptor.
func interopKinds(t testing.TB) Kinds {
	t.Helper()
	k, err := ParseKinds(interopKindsSet())
	if err != nil {
		t.Fatalf("ParseKinds: %v", err)
	}
	return k
}

// kindsSet returns a serialized descriptor set of one file with one service
// whose methods have the given names and streaming flags (client, server).
func kindsSet(pkg, service string, methods map[string][2]bool) []byte {
	svc := &descriptorpb.ServiceDescriptorProto{Name: proto.String(service)}
	for name, s := range methods {
		svc.Method = append(svc.Method, &descriptorpb.MethodDescriptorProto{
			Name:            proto.String(name),
			InputType:       proto.String(".x.In"),
			OutputType:      proto.String(".x.Out"),
			ClientStreaming: proto.Bool(s[0]),
			ServerStreaming: proto.Bool(s[1]),
		})
	}
	f := &descriptorpb.FileDescriptorProto{Name: proto.String(service + ".proto"), Service: []*descriptorpb.ServiceDescriptorProto{svc}}
	if pkg != "" {
		f.Package = proto.String(pkg)
	}
	b, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{f}})
	if err != nil {
		panic(err)
	}
	return b
}

// fourKinds is a descriptor set with one method of each kind.
func fourKinds() []byte {
	return kindsSet("pkg.v1", "Svc", map[string][2]bool{"U": {false, false}, "S": {false, true}, "C": {true, false}, "B": {true, true}})
}

func TestParseKindsInterop(t *testing.T) {
	k := interopKinds(t)
	want := map[string]Kind{
		"/grpc.testing.TestService/EmptyCall":                    KindUnary,
		"/grpc.testing.TestService/UnaryCall":                    KindUnary,
		"/grpc.testing.TestService/StreamingOutputCall":          KindServerStream,
		"/grpc.testing.TestService/StreamingInputCall":           KindClientStream,
		"/grpc.testing.TestService/FullDuplexCall":               KindBidiStream,
		"/grpc.testing.TestService/HalfDuplexCall":               KindBidiStream,
		"/grpc.testing.UnimplementedService/UnimplementedCall":   KindUnary,
		"/grpc.testing.ReconnectService/Start":                   KindUnary,
		"/grpc.testing.TestService/NoSuchMethod":                 KindUnknown,
		"grpc.testing.TestService/EmptyCall":                     KindUnknown,
		"/grpc.testing.TestService/EmptyCall/":                   KindUnknown,
		"/grpc.testing.UnimplementedService/UnimplementedCallXX": KindUnknown,
	}
	for m, kind := range want {
		if got := k.Kind(m); got != kind {
			t.Errorf("Kind(%q) = %v, want %v", m, got, kind)
		}
	}
	if err := k.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestParseKinds(t *testing.T) {
	cases := []struct {
		name string
		set  []byte
		want Kinds
		err  error  // nil: no error
		msg  string // in the error
	}{
		{"four kinds", fourKinds(), Kinds{
			"/pkg.v1.Svc/U": KindUnary, "/pkg.v1.Svc/S": KindServerStream,
			"/pkg.v1.Svc/C": KindClientStream, "/pkg.v1.Svc/B": KindBidiStream,
		}, nil, ""},
		{"no package", kindsSet("", "Svc", map[string][2]bool{"U": {}}), Kinds{"/Svc/U": KindUnary}, nil, ""},
		{"garbage", []byte("\xff\xff\xff not a descriptor set"), nil, ErrKinds, "parse kinds"},
		{"empty set", nil, nil, ErrKinds, "no services"},
		{"service without methods", kindsSet("p", "Svc", nil), nil, ErrKinds, "no methods"},
		{"method without a name", kindsSet("p", "Svc", map[string][2]bool{"": {}}), nil, ErrKinds, "not /service/method"},
		{"conflict", append(fourKinds(), kindsSet("pkg.v1", "Svc", map[string][2]bool{"U": {false, true}})...), nil, ErrKindConflict, "/pkg.v1.Svc/U is unary and server-stream"},
		{"same method twice", append(fourKinds(), kindsSet("pkg.v1", "Svc", map[string][2]bool{"U": {}})...), Kinds{
			"/pkg.v1.Svc/U": KindUnary, "/pkg.v1.Svc/S": KindServerStream,
			"/pkg.v1.Svc/C": KindClientStream, "/pkg.v1.Svc/B": KindBidiStream,
		}, nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseKinds(c.set)
			if c.err != nil {
				if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.msg) {
					t.Fatalf("ParseKinds() error = %v, want %v containing %q", err, c.err, c.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseKinds() error = %v", err)
			}
			if len(got) != len(c.want) {
				t.Errorf("got %d methods %v, want %v", len(got), got, c.want)
			}
			for m, kind := range c.want {
				if got[m] != kind {
					t.Errorf("%s: got %v, want %v", m, got[m], kind)
				}
			}
		})
	}
}

func TestKindsMerge(t *testing.T) {
	k := Kinds{"/a.S/U": KindUnary}
	if err := k.Merge(Kinds{"/a.S/B": KindBidiStream, "/a.S/U": KindUnary, "/a.S/X": KindUnknown}); err != nil {
		t.Fatalf("Merge: %v", err)
	}
	if len(k) != 2 || k.Kind("/a.S/B") != KindBidiStream {
		t.Errorf("after Merge: %v", k)
	}
	err := k.Merge(Kinds{"/a.S/U": KindClientStream, "/a.S/New": KindUnary})
	if !errors.Is(err, ErrKindConflict) {
		t.Errorf("conflicting Merge = %v, want ErrKindConflict", err)
	}
	if k.Kind("/a.S/U") != KindUnary || k.Kind("/a.S/New") != KindUnknown {
		t.Errorf("a failed Merge changed k: %v", k)
	}
	var none Kinds
	if none.Kind("/a.S/U") != KindUnknown {
		t.Error("a nil Kinds knows a method")
	}
}

func TestKindsValidate(t *testing.T) {
	cases := []struct {
		k   Kinds
		err error
	}{
		{nil, nil},
		{Kinds{"/a.S/U": KindUnary, "/S/B": KindBidiStream, "/a.S/N": KindUnknown}, nil},
		{Kinds{"a.S/U": KindUnary}, ErrKinds},
		{Kinds{"/a.S/": KindUnary}, ErrKinds},
		{Kinds{"//U": KindUnary}, ErrKinds},
		{Kinds{"/a.S/U/V": KindUnary}, ErrKinds},
		{Kinds{"/a.S/U": KindBidiStream + 1}, ErrKinds},
	}
	for _, c := range cases {
		if err := c.k.Validate(); !errors.Is(err, c.err) {
			t.Errorf("%v.Validate() = %v, want %v", c.k, err, c.err)
		}
	}
	bad := Kinds{"nope": KindUnary}
	if err := (IngressConfig{Director: nil, Kinds: bad}).Validate(); !errors.Is(err, ErrNoDirector) {
		t.Errorf("IngressConfig without Director: %v", err)
	}
	if err := (EgressConfig{Conn: &grpc.ClientConn{}, Kinds: bad}).Validate(); !errors.Is(err, ErrKinds) {
		t.Errorf("EgressConfig with bad Kinds: Validate() = %v, want ErrKinds", err)
	}
}

func TestKindString(t *testing.T) {
	want := []string{"unknown", "unary", "server-stream", "client-stream", "bidi-stream", "Kind(5)"}
	for k, w := range want {
		if got := Kind(k).String(); got != w {
			t.Errorf("Kind(%d).String() = %q, want %q", k, got, w)
		}
	}
}

// FuzzParseKinds parses arbitrary bytes as a descriptor set: it fails or
// returns only well-formed, valid entries, and never panics.
func FuzzParseKinds(f *testing.F) {
	f.Add(fourKinds())
	f.Add(interopKindsSet())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParseKinds(data)
		if err != nil {
			if k != nil {
				t.Fatalf("ParseKinds failed (%v) but returned %v", err, k)
			}
			if !errors.Is(err, ErrKinds) && !errors.Is(err, ErrKindConflict) {
				t.Fatalf("ParseKinds error %v wraps neither ErrKinds nor ErrKindConflict", err)
			}
			return
		}
		if len(k) == 0 {
			t.Fatal("ParseKinds succeeded with no methods")
		}
		if err := k.Validate(); err != nil {
			t.Fatalf("ParseKinds returned invalid kinds: %v", err)
		}
		for m, kind := range k {
			if kind == KindUnknown {
				t.Fatalf("%s: KindUnknown", m)
			}
		}
	})
}

// interopKindsSet is the serialized descriptor set of grpc-go's interop
// test services.
func interopKindsSet() []byte {
	b, err := proto.Marshal(&descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(testgrpc.File_grpc_testing_test_proto),
	}})
	if err != nil {
		panic(err)
	}
	return b
}
