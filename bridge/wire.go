package bridge

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vatcar/vatcar/proto/captp"
)

// This file converts between gRPC values and their wire form in
// proto/captp/bridge.capnp: metadata as Header lists, statuses, deadlines.

// ReservedHeader reports whether key, a lower-case metadata key (as
// metadata.MD holds them), is the gRPC libraries' to set: pseudo-headers,
// content-type, user-agent, te, grpc-timeout, grpc-status and the other
// grpc- keys of the protocol. A proxy does not forward such keys; the
// bridge does not carry them across (the request content-type crosses
// separately, as the call's content-subtype).
func ReservedHeader(key string) bool {
	if strings.HasPrefix(key, ":") {
		return true
	}
	switch key {
	case "content-type", "user-agent", "te", "grpc-timeout", "grpc-encoding",
		"grpc-accept-encoding", "grpc-message", "grpc-status",
		"grpc-status-details-bin", "grpc-message-type",
		"grpc-previous-rpc-attempts", "grpc-retry-pushback-ms":
		return true
	}
	return false
}

// countHeaders returns how many Header entries md becomes on the wire.
func countHeaders(md metadata.MD, keep func(string) bool) int {
	n := 0
	for k, vs := range md {
		if keep(k) {
			n += len(vs)
		}
	}
	return n
}

// writeHeaders fills a list made by newList with md's entries that keep
// accepts. Binary (-bin) values travel as raw bytes.
func writeHeaders(md metadata.MD, keep func(string) bool, newList func(int32) (captp.Header_List, error)) error {
	l, err := newList(int32(countHeaders(md, keep)))
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}
	i := 0
	for k, vs := range md {
		if !keep(k) {
			continue
		}
		for _, v := range vs {
			h := l.At(i)
			i++
			if err := h.SetKey(k); err != nil {
				return fmt.Errorf("encode metadata key %q: %w", k, err)
			}
			if err := h.SetValue([]byte(v)); err != nil {
				return fmt.Errorf("encode metadata %q: %w", k, err)
			}
		}
	}
	return nil
}

// keepForward accepts every key that crosses the bridge.
func keepForward(k string) bool { return !ReservedHeader(k) }

// keepRequest also keeps the request's content-type, from which the egress
// takes the content-subtype to use towards the app.
// vatcar-* keys an app sets are dropped: only the egress says who calls.
func keepRequest(k string) bool {
	return k == "content-type" || !ReservedHeader(k) && !isVatcarKey(k)
}

// vatcarPrefix starts the metadata keys that only vatcar sets.
const vatcarPrefix = "vatcar-"

// isVatcarKey reports whether k (lowercase) is one of vatcar's own keys, or
// one a backend might take for one: vatcar_ too, since some HTTP stacks
// (CGI's, for one) treat "_" and "-" in header names alike.
func isVatcarKey(k string) bool {
	return strings.HasPrefix(k, vatcarPrefix) || strings.HasPrefix(k, "vatcar_")
}

// validKey reports whether a request metadata key, before lowercasing, is
// one gRPC can send: at least one character, each in [0-9a-z-_.] once
// ASCII letters are lowercased. Pseudo-headers (":...") pass here; the
// egress drops them. grpc-go refuses any other key as INTERNAL after the
// call has cost a stream; the egress refuses it first, as
// INVALID_ARGUMENT.
func validKey(k []byte) bool {
	if len(k) == 0 {
		return false
	}
	if k[0] == ':' {
		return true
	}
	for _, c := range k {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validValue reports whether a value of key k (any case) is one gRPC can
// send: anything for a binary (-bin) key, else printable ASCII.
func validValue(k, v []byte) bool {
	if len(k) >= 4 && bytes.EqualFold(k[len(k)-4:], []byte("-bin")) {
		return true
	}
	for _, c := range v {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// headerOverhead is what HTTP/2 adds to each header entry's key and value
// when it counts a header list's size (RFC 9113, SETTINGS_MAX_HEADER_LIST_SIZE).
const headerOverhead = 32

// metadataSize returns the size of md's entries that keep accepts, counted
// as HTTP/2 does.
func metadataSize(md metadata.MD, keep func(string) bool) int {
	n := 0
	for k, vs := range md {
		if !keep(k) {
			continue
		}
		for _, v := range vs {
			n += len(k) + len(v) + headerOverhead
		}
	}
	return n
}

// checkMetadata fails with ErrMetadataTooLarge when md's entries that keep
// accepts are larger than limit; what names them in the error.
func checkMetadata(what string, md metadata.MD, keep func(string) bool, limit int) error {
	if n := metadataSize(md, keep); n > limit {
		return metadataTooLarge(what, n, limit)
	}
	return nil
}

func metadataTooLarge(what string, n, limit int) error {
	return fmt.Errorf("%w: %s of %d bytes or more, over the limit of %d", ErrMetadataTooLarge, what, n, limit)
}

// readHeaders turns a Header list into metadata (nil for an empty list). A
// list larger than limit (counted as HTTP/2 does) fails with
// ErrMetadataTooLarge before its values are copied; what names it in the
// error.
func readHeaders(what string, l captp.Header_List, limit int) (metadata.MD, error) {
	size := 0
	for i := 0; i < l.Len(); i++ {
		h := l.At(i)
		k, err := h.KeyBytes()
		if err != nil {
			return nil, fmt.Errorf("decode metadata key: %w", err)
		}
		v, err := h.Value()
		if err != nil {
			return nil, fmt.Errorf("decode metadata %q: %w", k, err)
		}
		if size += len(k) + len(v) + headerOverhead; size > limit {
			return nil, metadataTooLarge(what, size, limit)
		}
	}
	if l.Len() == 0 {
		return nil, nil
	}
	md := make(metadata.MD, l.Len())
	for i := 0; i < l.Len(); i++ {
		h := l.At(i)
		kb, _ := h.KeyBytes()
		v, _ := h.Value()
		k := headerKey(kb)
		md[k] = append(md[k], headerValue(k, v))
	}
	return md, nil
}

// headerKey returns key lowercased, without allocating for the keys every
// call has or that recur (metadataKeys).
func headerKey(key []byte) string {
	switch string(key) { // compared in place: no allocation
	case "content-type":
		return "content-type"
	case "user-agent":
		return "user-agent"
	case "grpc-accept-encoding":
		return "grpc-accept-encoding"
	}
	for _, c := range key {
		if 'A' <= c && c <= 'Z' {
			return strings.ToLower(string(key))
		}
	}
	return metadataKeys.get(key)
}

// headerValue returns v as a string, without allocating for the content-type
// nearly every call has.
func headerValue(key string, v []byte) string {
	if key == "content-type" && string(v) == plainContentType {
		return plainContentType
	}
	return string(v)
}

// contentSubtype returns the content-subtype of a gRPC content-type
// ("application/grpc+json" -> "json"; "application/grpc" -> "").
func contentSubtype(contentType string) string {
	rest, ok := strings.CutPrefix(contentType, "application/grpc")
	if !ok || rest == "" {
		return ""
	}
	if rest[0] != '+' { // ";..." holds parameters, not a subtype
		return ""
	}
	sub := rest[1:]
	if i := strings.IndexByte(sub, ';'); i >= 0 {
		sub = sub[:i]
	}
	sub = strings.TrimSpace(sub)
	for i := 0; i < len(sub); i++ {
		if c := sub[i]; c <= ' ' || c >= 0x7f { // not a token: no subtype
			return ""
		}
	}
	return strings.ToLower(sub)
}

// writeStatus stores st in dst. Details travel as the bytes of the
// google.rpc.Status, exactly what grpc-status-details-bin carries.
func writeStatus(dst captp.Status, st *grpcstatus.Status) error {
	dst.SetCode(uint32(st.Code()))
	if err := dst.SetMessage_(st.Message()); err != nil {
		return fmt.Errorf("encode status message: %w", err)
	}
	if len(st.Details()) == 0 { // Proto would clone the status first
		return nil
	}
	b, err := proto.Marshal(st.Proto())
	if err != nil {
		return fmt.Errorf("encode status details: %w", err)
	}
	if err := dst.SetDetails(b); err != nil {
		return fmt.Errorf("encode status details: %w", err)
	}
	return nil
}

// readStatus turns a wire Status into a gRPC status.
func readStatus(src captp.Status) (*grpcstatus.Status, error) {
	msg, err := src.Message_()
	if err != nil {
		return nil, fmt.Errorf("decode status message: %w", err)
	}
	code := codes.Code(src.Code())
	if !src.HasDetails() {
		return grpcstatus.New(code, msg), nil
	}
	b, err := src.Details()
	if err != nil {
		return nil, fmt.Errorf("decode status details: %w", err)
	}
	var p status.Status
	if err := proto.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decode status details: %w", err)
	}
	p.Code, p.Message = int32(code), msg
	return grpcstatus.FromProto(&p), nil
}

// remainingNanos returns what is left of ctx's deadline, for
// CallHead.timeoutNanos: 0 without a deadline, at least 1 with one.
func remainingNanos(ctx context.Context) int64 {
	d, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	return max(int64(time.Until(d)), 1)
}

// writeCallHead fills a CallHead for a call to method with the request
// metadata md and ctx's deadline.
func writeCallHead(h captp.CallHead, ctx context.Context, method string, md metadata.MD) error {
	if err := h.SetMethod(method); err != nil {
		return fmt.Errorf("encode method: %w", err)
	}
	h.SetTimeoutNanos(remainingNanos(ctx))
	keep := keepRequest
	if ct := md["content-type"]; len(ct) == 1 && ct[0] == plainContentType {
		// The egress reads no content-subtype from it, as from none:
		// most calls need no metadata list at all then.
		keep = keepRequestButContentType
	}
	if countHeaders(md, keep) == 0 {
		return nil // no list: the egress reads an empty one
	}
	return writeHeaders(md, keep, h.NewMd)
}

// plainContentType is the content-type of gRPC without a content-subtype.
const plainContentType = "application/grpc"

func keepRequestButContentType(k string) bool { return k != "content-type" && keepRequest(k) }

// callHead is a decoded CallHead, but for its metadata (readCallHead).
type callHead struct {
	method  string
	subtype string
	timeout time.Duration
}

// readCallHead decodes a CallHead. Its metadata that may reach the backend
// is appended to pairs as key, value, key, value...: keys lowercased,
// entries in list order, without the keys keepRequestButContentType
// refuses (the gRPC libraries' own and vatcar-*, which only the egress
// sets). The first content-type gives the subtype. Metadata larger than
// maxMD fails with ErrMetadataTooLarge before anything is copied. The
// values share one allocation; pairs grows only when it is too short.
func readCallHead(h captp.CallHead, maxMD int, pairs []string) (callHead, []string, error) {
	mb, err := h.MethodBytes()
	if err != nil {
		return callHead{}, pairs, fmt.Errorf("decode method: %w", err)
	}
	head := callHead{method: methodNames.get(mb), timeout: time.Duration(h.TimeoutNanos())}
	l, err := h.Md()
	if err != nil {
		return callHead{}, pairs, fmt.Errorf("decode metadata: %w", err)
	}
	// The first entries read are kept for the second pass: each pointer
	// read costs (capnp counts it against the message's read limit).
	var read [8]struct{ k, v []byte }
	size, values := 0, 0
	for i := 0; i < l.Len(); i++ {
		h := l.At(i)
		k, err := h.KeyBytes()
		if err != nil {
			return callHead{}, pairs, fmt.Errorf("decode metadata key: %w", err)
		}
		v, err := h.Value()
		if err != nil {
			return callHead{}, pairs, fmt.Errorf("decode metadata %q: %w", k, err)
		}
		if size += len(k) + len(v) + headerOverhead; size > maxMD {
			return callHead{}, pairs, metadataTooLarge("request metadata", size, maxMD)
		}
		if !validKey(k) {
			return callHead{}, pairs, fmt.Errorf("%w: key %q has characters not in [0-9a-z-_.]", ErrInvalidMetadata, k[:min(len(k), 64)])
		}
		if !validValue(k, v) {
			return callHead{}, pairs, fmt.Errorf("%w: the value of %q is not printable ASCII (only -bin keys carry bytes)", ErrInvalidMetadata, k)
		}
		values += len(v)
		if i < len(read) {
			read[i].k, read[i].v = k, v
		}
	}
	var b strings.Builder // every value, each a slice of b's one buffer
	sawType := false
	for i := 0; i < l.Len(); i++ {
		var kb, v []byte
		if i < len(read) {
			kb, v = read[i].k, read[i].v
		} else {
			// Read once already, so these cannot fail but for the
			// message's read limit; fail the call rather than send a
			// key or value that is not the peer's.
			h := l.At(i)
			var err error
			if kb, err = h.KeyBytes(); err == nil {
				v, err = h.Value()
			}
			if err != nil {
				return callHead{}, pairs, fmt.Errorf("decode metadata: %w", err)
			}
		}
		k := headerKey(kb) // ASCII only (validKey): lowercased as grpc-go would
		if k == "content-type" && !sawType {
			sawType = true
			if string(v) != plainContentType {
				head.subtype = contentSubtype(string(v))
			}
		}
		if !keepRequestButContentType(k) {
			continue
		}
		if b.Cap() == 0 {
			b.Grow(values)
		}
		b.Write(v)
		all := b.String() // only grows: earlier values stay as they are
		pairs = append(pairs, k, all[len(all)-len(v):])
	}
	return head, pairs, nil
}
