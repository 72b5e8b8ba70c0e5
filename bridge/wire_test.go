package bridge

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/proto/captp"
)

func TestContentSubtypeParse(t *testing.T) {
	cases := map[string]string{
		"application/grpc":                 "",
		"application/grpc+proto":           "proto",
		"application/grpc+JSON":            "json",
		"application/grpc;charset=utf-8":   "",
		"application/grpc+json; charset=x": "json",
		"application/grpcx":                "",
		"text/plain":                       "",
		"":                                 "",
	}
	for in, want := range cases {
		if got := contentSubtype(in); got != want {
			t.Errorf("contentSubtype(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCallHeadRoundTrip checks that what writeCallHead encodes,
// readCallHead decodes: method, metadata (binary too), content-subtype,
// deadline.
func TestCallHeadRoundTrip(t *testing.T) {
	md := metadata.MD{
		"x-a":          {"1", "2"},
		"x-b-bin":      {string([]byte{0, 0xff})},
		"content-type": {"application/grpc+json"},
		":authority":   {"dropped"},
		"grpc-timeout": {"dropped"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h := emptyCallHead(t)
	if err := writeCallHead(h, ctx, "/p.S/M", md); err != nil {
		t.Fatal(err)
	}
	got, pairs, err := readCallHead(h, DefaultMaxMetadataSize, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.method != "/p.S/M" || got.subtype != "json" {
		t.Errorf("method %q subtype %q", got.method, got.subtype)
	}
	if got.timeout <= 0 || got.timeout > time.Minute {
		t.Errorf("timeout %v, want (0, 1m]", got.timeout)
	}
	want := metadata.MD{"x-a": {"1", "2"}, "x-b-bin": {string([]byte{0, 0xff})}}
	if md := pairsMD(t, pairs); !reflect.DeepEqual(md, want) {
		t.Errorf("metadata %q, want %v", pairs, want)
	}
}

// emptyCallHead returns an empty CallHead, the root of a message of its
// own.
func emptyCallHead(t testing.TB) captp.CallHead {
	t.Helper()
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	h, err := captp.NewRootCallHead(seg)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// newCallHead returns a CallHead in a message of its own with method
// (none if empty) and entries (key, value) as its metadata list, in order.
func newCallHead(t testing.TB, method string, entries [][2]string) captp.CallHead {
	t.Helper()
	h := emptyCallHead(t)
	if method != "" {
		if err := h.SetMethod(method); err != nil {
			t.Fatal(err)
		}
	}
	if err := setMetadata(h, entries); err != nil {
		t.Fatal(err)
	}
	return h
}

// setMetadata gives h entries (key, value) as its metadata list, in order.
func setMetadata(h captp.CallHead, entries [][2]string) error {
	l, err := h.NewMd(int32(len(entries)))
	if err != nil {
		return err
	}
	for i, e := range entries {
		if err := l.At(i).SetKey(e[0]); err != nil {
			return err
		}
		if err := l.At(i).SetValue([]byte(e[1])); err != nil {
			return err
		}
	}
	return nil
}

// pairsMD returns pairs (key, value, ...) as metadata, failing t when they
// are odd in number.
func pairsMD(t testing.TB, pairs []string) metadata.MD {
	t.Helper()
	if len(pairs)%2 != 0 {
		t.Fatalf("odd pairs %q", pairs)
	}
	md := metadata.MD{}
	for i := 0; i < len(pairs); i += 2 {
		md[pairs[i]] = append(md[pairs[i]], pairs[i+1])
	}
	return md
}

// TestReadCallHeadPairs checks the metadata readCallHead passes on: keys
// lowercased (also as grpc-go lowercases Unicode), in list order, repeated
// keys in theirs; the first content-type gives the subtype; the gRPC
// libraries' keys and vatcar-* (and vatcar_*) keys in any case are
// dropped; pairs given are appended to.
func TestReadCallHeadPairs(t *testing.T) {
	entries := [][2]string{
		{"X-A", "1"}, {"content-type", "application/grpc+JSON"}, {"VATCAR-PEER", "forged"},
		{"x-b-bin", "\x00\xff"}, {"Vatcar-Ref", "forged"}, {"x-a", "2"}, {"vatcar-peer", "forged"},
		{"content-type", "application/grpc+xml"}, {":authority", "a"}, {"grpc-timeout", "1S"},
		{"User-Agent", "ua"}, {"x-empty", ""}, {"X-A", "3"}, {"vatcar-other", "x"},
		{"VATCAR_PEER", "forged"}, {"x.dot_under", "ok"},
	}
	h := newCallHead(t, "/p.S/M", entries)
	head, pairs, err := readCallHead(h, DefaultMaxMetadataSize, []string{"kept", "v"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kept", "v", "x-a", "1", "x-b-bin", "\x00\xff", "x-a", "2", "x-empty", "", "x-a", "3", "x.dot_under", "ok"}
	if !slices.Equal(pairs, want) {
		t.Errorf("pairs\n%q, want\n%q", pairs, want)
	}
	if head.subtype != "json" || head.method != "/p.S/M" || head.timeout != 0 {
		t.Errorf("head %+v, want method /p.S/M, subtype json, no timeout", head)
	}
}

// TestReadCallHeadInvalid: metadata gRPC cannot send (a key outside
// [0-9a-z-_.] once ASCII is lowercased, Unicode included; an empty key; a
// non-binary value that is not printable ASCII) fails the call as
// INVALID_ARGUMENT, also once its text has crossed CapTP; binary values
// and keys in upper case pass.
func TestReadCallHeadInvalid(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		ok         bool
	}{
		{"X-Upper.Case_ok", "v", true},
		{"x-data-BIN", "\x00\x01\xff", true},
		{"x-\u212a", "kelvin", false}, // grpc-go would lower the Kelvin sign to "k"
		{"x y", "v", false},
		{"x/y", "v", false},
		{"", "v", false},
		{"x-ctl", "a\nb", false},
		{"x-high", "\xff", false},
	} {
		h := newCallHead(t, "/p.S/M", [][2]string{{tc.key, tc.value}})
		_, _, err := readCallHead(h, DefaultMaxMetadataSize, nil)
		if tc.ok {
			if err != nil {
				t.Errorf("key %q value %q: %v", tc.key, tc.value, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidMetadata) {
			t.Errorf("key %q value %q: %v, want ErrInvalidMetadata", tc.key, tc.value, err)
			continue
		}
		for _, e := range []error{err, errors.New("unary: " + err.Error())} { // as the importer gets it
			if st := Status(e); st.Code() != codes.InvalidArgument {
				t.Errorf("key %q value %q: status %v, want INVALID_ARGUMENT", tc.key, tc.value, st)
			}
		}
	}
}

// TestStatusRoundTrip checks writeStatus and readStatus.
func TestStatusRoundTrip(t *testing.T) {
	st, _ := status.New(codes.Aborted, "ä ☺\n").WithDetails(status.New(codes.OK, "inner").Proto())
	for _, in := range []*status.Status{status.New(codes.OK, ""), status.New(codes.NotFound, "nope"), st} {
		_, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
		w, _ := captp.NewRootStatus(seg)
		if err := writeStatus(w, in); err != nil {
			t.Fatal(err)
		}
		out, err := readStatus(w)
		if err != nil {
			t.Fatal(err)
		}
		if out.Code() != in.Code() || out.Message() != in.Message() || len(out.Details()) != len(in.Details()) {
			t.Errorf("got %v, want %v", out, in)
		}
	}
}

// FuzzReadCallHead decodes arbitrary bytes as a CallHead: whatever a peer
// sends, decoding fails or succeeds, it never panics.
func FuzzReadCallHead(f *testing.F) {
	_, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
	h, _ := captp.NewRootCallHead(seg)
	writeCallHead(h, context.Background(), "/a.B/C", metadata.Pairs("x-k", "v", "content-type", "application/grpc"))
	b, _ := seg.Message().Marshal()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := capnp.Unmarshal(data)
		if err != nil {
			return
		}
		msg.ResetReadLimit(1 << 20)
		h, err := captp.ReadRootCallHead(msg)
		if err != nil {
			return
		}
		_, pairs, err := readCallHead(h, DefaultMaxMetadataSize, nil)
		if err != nil {
			return
		}
		if len(pairs)%2 != 0 {
			t.Fatalf("odd pairs %q", pairs)
		}
		for i := 0; i < len(pairs); i += 2 {
			k, v := pairs[i], pairs[i+1]
			if k != strings.ToLower(k) || !keepRequestButContentType(k) || !validKey([]byte(k)) || k[0] == ':' {
				t.Fatalf("key %q passed", k)
			}
			if !validValue([]byte(k), []byte(v)) {
				t.Fatalf("value %q of %q passed", v, k)
			}
		}
	})
}

// FuzzContentSubtype checks that any content-type parses to a lower-case
// subtype without panicking.
func FuzzContentSubtype(f *testing.F) {
	for _, s := range []string{"application/grpc", "application/grpc+json", "application/grpc;x=y", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sub := contentSubtype(s)
		if len(sub) > len(s) {
			t.Fatalf("contentSubtype(%q) = %q, longer than its input", s, sub)
		}
	})
}

// TestReadHeadersKeys checks that keys arrive lowercased whatever a peer
// wrote, common or not, and values as written; an empty list is nil metadata,
// and a call head without metadata gives no pairs.
func TestReadHeadersKeys(t *testing.T) {
	h := newCallHead(t, "", [][2]string{{"Content-Type", "application/grpc"}, {"content-type", "application/grpc+json"}, {"X-Mixed", "v1"}, {"user-agent", "ua"}, {"x-mixed", "v2"}})
	l, err := h.Md()
	if err != nil {
		t.Fatal(err)
	}
	md, err := readHeaders("test", l, DefaultMaxMetadataSize)
	if err != nil {
		t.Fatal(err)
	}
	want := metadata.MD{"content-type": {"application/grpc", "application/grpc+json"}, "x-mixed": {"v1", "v2"}, "user-agent": {"ua"}}
	if len(md) != len(want) {
		t.Fatalf("md = %v, want %v", md, want)
	}
	for k, v := range want {
		if got := md[k]; len(got) != len(v) || got[0] != v[0] || got[len(got)-1] != v[len(v)-1] {
			t.Errorf("md[%q] = %q, want %q", k, got, v)
		}
	}

	empty, err := captp.NewCallHead(h.Segment())
	if err != nil {
		t.Fatal(err)
	}
	el, err := empty.NewMd(0)
	if err != nil {
		t.Fatal(err)
	}
	if md, err := readHeaders("test", el, DefaultMaxMetadataSize); err != nil || md != nil {
		t.Errorf("empty list: %v, %v; want nil metadata", md, err)
	}
	if _, pairs, err := readCallHead(empty, DefaultMaxMetadataSize, nil); err != nil || pairs != nil {
		t.Errorf("empty call head: %q, %v; want no pairs", pairs, err)
	}
}

// TestCallHeadPlainContentType checks that a call with the plain gRPC
// content-type (no subtype) and no other metadata sends no metadata list,
// and one with other metadata sends those keys only: the egress reads no
// subtype either way, as from "application/grpc" itself.
func TestCallHeadPlainContentType(t *testing.T) {
	for _, tc := range []struct {
		name  string
		md    metadata.MD
		list  bool
		keys  []string
		subty string
	}{
		{"plain only", metadata.MD{"content-type": {"application/grpc"}, ":authority": {"x"}}, false, nil, ""},
		{"plain and more", metadata.MD{"content-type": {"application/grpc"}, "x-a": {"1"}}, true, []string{"x-a"}, ""},
		{"with a subtype", metadata.MD{"content-type": {"application/grpc+json"}}, true, nil, "json"},
		{"none", metadata.MD{}, false, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := emptyCallHead(t)
			if err := writeCallHead(h, context.Background(), "/p.S/M", tc.md); err != nil {
				t.Fatal(err)
			}
			if h.HasMd() != tc.list {
				t.Errorf("metadata list sent: %v, want %v", h.HasMd(), tc.list)
			}
			got, pairs, err := readCallHead(h, DefaultMaxMetadataSize, nil)
			if err != nil {
				t.Fatal(err)
			}
			md := pairsMD(t, pairs)
			if got.subtype != tc.subty || len(md) != len(tc.keys) {
				t.Fatalf("subtype %q metadata %q, want %q and keys %v", got.subtype, pairs, tc.subty, tc.keys)
			}
			for _, k := range tc.keys {
				if len(md[k]) != 1 {
					t.Errorf("md[%q] = %v", k, md[k])
				}
			}
		})
	}
}
