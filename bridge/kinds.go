package bridge

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Kind is the shape of a gRPC method's message streams.
type Kind uint8

const (
	KindUnknown      Kind = iota // not known: the general path, which carries every kind
	KindUnary                    // one request, one response
	KindServerStream             // one request, a stream of responses
	KindClientStream             // a stream of requests, one response
	KindBidiStream               // streams both ways
)

// String returns the kind's name as a lower-case word ("unary",
// "server-stream", ...).
func (k Kind) String() string {
	switch k {
	case KindUnknown:
		return "unknown"
	case KindUnary:
		return "unary"
	case KindServerStream:
		return "server-stream"
	case KindClientStream:
		return "client-stream"
	case KindBidiStream:
		return "bidi-stream"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// kindOf returns the kind of a method from its descriptor's streaming flags.
func kindOf(clientStreams, serverStreams bool) Kind {
	switch {
	case clientStreams && serverStreams:
		return KindBidiStream
	case clientStreams:
		return KindClientStream
	case serverStreams:
		return KindServerStream
	}
	return KindUnary
}

// Kinds maps full method names ("/pkg.Service/Method") to their kinds. A nil
// Kinds knows nothing: every method is KindUnknown. The bridge only reads
// a Kinds it was given; do not change it afterwards.
type Kinds map[string]Kind

// Kind returns the kind of the method with the given full name, KindUnknown
// if k does not know it. It is safe on a nil Kinds.
func (k Kinds) Kind(method string) Kind { return k[method] }

// Merge adds other's methods to k. A method both know with different kinds
// is an error (and k is left as it was); KindUnknown entries are ignored.
// k must not be nil unless other adds nothing.
func (k Kinds) Merge(other Kinds) error {
	for m, kind := range other {
		if old, ok := k[m]; ok && old != kind && kind != KindUnknown {
			return fmt.Errorf("merge kinds: method %s is %v and %v: %w", m, old, kind, ErrKindConflict)
		}
	}
	for m, kind := range other {
		if kind != KindUnknown {
			k[m] = kind
		}
	}
	return nil
}

// Validate reports the first entry that is not a full method name with a
// known kind.
func (k Kinds) Validate() error {
	for m, kind := range k {
		if !validMethod(m) {
			return fmt.Errorf("kinds: method name %q is not /service/method: %w", m, ErrKinds)
		}
		if kind > KindBidiStream {
			return fmt.Errorf("kinds: method %s: %v: %w", m, kind, ErrKinds)
		}
	}
	return nil
}

// validMethod reports whether m has the form "/service/method" with both
// parts non-empty.
func validMethod(m string) bool {
	rest, ok := strings.CutPrefix(m, "/")
	if !ok {
		return false
	}
	svc, name, ok := strings.Cut(rest, "/")
	return ok && svc != "" && name != "" && !strings.Contains(name, "/")
}

// ParseKinds reads the kinds of every method of every service in a
// serialized google.protobuf.FileDescriptorSet (what protoc
// --descriptor_set_out writes; --include_imports is not needed, since only
// services are read). Errors wrap ErrKinds: bytes that are not a descriptor
// set, a set without services, a method without a name, or a method
// described twice with different kinds.
func ParseKinds(descriptorSet []byte) (Kinds, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(descriptorSet, &set); err != nil {
		return nil, fmt.Errorf("parse kinds: %w: %w", ErrKinds, err)
	}
	k, err := FileKinds(set.GetFile())
	if err != nil {
		return nil, fmt.Errorf("parse kinds: %w", err)
	}
	return k, nil
}

// FileKinds returns the kinds of every method of every service in files,
// for descriptors obtained otherwise (server reflection,
// protodesc.ToFileDescriptorProto). Errors are ParseKinds's.
func FileKinds(files []*descriptorpb.FileDescriptorProto) (Kinds, error) {
	k := Kinds{}
	services := 0
	for _, f := range files {
		prefix := "/"
		if p := f.GetPackage(); p != "" {
			prefix += p + "."
		}
		for _, s := range f.GetService() {
			services++
			for _, m := range s.GetMethod() {
				name := prefix + s.GetName() + "/" + m.GetName()
				if !validMethod(name) || strings.Contains(s.GetName(), "/") || strings.Contains(f.GetPackage(), "/") {
					return nil, fmt.Errorf("file %q: method name %q is not /service/method: %w", f.GetName(), name, ErrKinds)
				}
				kind := kindOf(m.GetClientStreaming(), m.GetServerStreaming())
				if old, ok := k[name]; ok && old != kind {
					return nil, fmt.Errorf("file %q: method %s is %v and %v: %w", f.GetName(), name, old, kind, ErrKindConflict)
				}
				k[name] = kind
			}
		}
	}
	if services == 0 {
		return nil, fmt.Errorf("%w: no services", ErrKinds)
	}
	if len(k) == 0 {
		return nil, fmt.Errorf("%w: no methods", ErrKinds)
	}
	return k, nil
}
