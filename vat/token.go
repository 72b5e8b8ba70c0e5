package vat

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// A narrowed (attenuated) sturdy ref keeps the URI form; its path segment
// is a token instead of the service id (docs/design.md, "Attenuated refs"):
//
//	token = version(1) locator(32) count(1) { blockLen(2) block }* tag(32)
//	block = { type(1) len(2) value }*
//
// version is tokenVersion; locator is SHA-256(root id), the key under which
// the restorer table already finds ids; tag_0 = root id and tag_i =
// HMAC-SHA256(key = tag_(i-1), msg = block_i); the token carries the last
// tag, never an earlier one. Lengths are big-endian. Anyone holding a token
// can append a block (Narrow); nobody can remove one without the earlier
// tag. The exporter recomputes the chain from the root id and compares the
// tag in constant time (VerifyToken).

// tokenVersion is the first byte of a token. Other values are reserved
// (public-key blocks, say) and refused.
const tokenVersion = 0xa1

// Bounds of a token: about 1 KiB in all, a few blocks.
const (
	MaxTokenSize   = 1024
	MaxTokenBlocks = 8
	tokenMinSize   = 1 + sha256.Size + 1 + sha256.Size
)

// Caveat types, one byte each on the wire. An unknown type refuses the ref.
const (
	caveatMethods   = 1 // patterns "/pkg.Service/Method" or "/pkg.Service/*", '\n'-separated
	caveatNotAfter  = 2 // int64 Unix seconds
	caveatNotBefore = 3 // int64 Unix seconds
	caveatPeer      = 4 // a vat key digest (32 bytes); several in one block: any of them
	caveatNonce     = 5 // 16 random bytes, so every narrowed ref has its own tag
)

// ErrInvalidToken is wrapped by every error about a token's form. A token
// that is well formed but whose tag is wrong is ErrUnknownService, exactly
// like an unknown id.
var ErrInvalidToken = errors.New("invalid narrowed ref")

// Block is one narrowing step of a ref: every caveat it sets must hold.
// Zero fields set nothing.
type Block struct {
	// Methods, when not empty, are the gRPC methods the ref may call:
	// "/pkg.Service/Method" or "/pkg.Service/*".
	Methods []string
	// NotAfter and NotBefore, when not zero, bound the time the ref works.
	NotAfter, NotBefore time.Time
	// Peers, when not empty, are the key digests of the vats that may
	// restore the ref.
	Peers []Digest
	// Nonce makes the block's tag unique; Narrow fills it in.
	Nonce [16]byte
}

// Token is a parsed narrowed ref, not yet verified.
type Token struct {
	Locator [sha256.Size]byte // SHA-256 of the root id
	Blocks  []Block
	raw     [][]byte // the blocks as encoded
	Tag     [sha256.Size]byte
}

// IsToken reports whether seg (a URI's decoded path segment) has the form
// of a narrowed ref rather than a plain service id. A plain id that
// happens to parse as a token fails verification and is then looked up as
// an id.
func IsToken(seg []byte) bool {
	_, err := ParseToken(seg)
	return err == nil
}

// ParseToken parses a token's form (not its tag).
func ParseToken(seg []byte) (*Token, error) {
	if len(seg) > MaxTokenSize {
		return nil, fmt.Errorf("%w: %d bytes, over %d", ErrInvalidToken, len(seg), MaxTokenSize)
	}
	if len(seg) < tokenMinSize || seg[0] != tokenVersion {
		return nil, fmt.Errorf("%w: not a token", ErrInvalidToken)
	}
	t := &Token{}
	copy(t.Locator[:], seg[1:])
	n := int(seg[1+sha256.Size])
	if n == 0 || n > MaxTokenBlocks {
		return nil, fmt.Errorf("%w: %d blocks, want 1 to %d", ErrInvalidToken, n, MaxTokenBlocks)
	}
	rest := seg[2+sha256.Size : len(seg)-sha256.Size]
	copy(t.Tag[:], seg[len(seg)-sha256.Size:])
	for i := range n {
		if len(rest) < 2 {
			return nil, fmt.Errorf("%w: block %d truncated", ErrInvalidToken, i+1)
		}
		l := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+l {
			return nil, fmt.Errorf("%w: block %d truncated", ErrInvalidToken, i+1)
		}
		raw := rest[2 : 2+l]
		b, err := parseBlock(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: block %d: %w", ErrInvalidToken, i+1, err)
		}
		t.Blocks = append(t.Blocks, b)
		t.raw = append(t.raw, raw)
		rest = rest[2+l:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the blocks", ErrInvalidToken, len(rest))
	}
	return t, nil
}

func parseBlock(raw []byte) (Block, error) {
	var b Block
	nonce := false
	for len(raw) > 0 {
		if len(raw) < 3 {
			return b, errors.New("caveat truncated")
		}
		typ, l := raw[0], int(binary.BigEndian.Uint16(raw[1:]))
		if len(raw) < 3+l {
			return b, errors.New("caveat truncated")
		}
		v := raw[3 : 3+l]
		raw = raw[3+l:]
		switch typ {
		case caveatMethods:
			if len(b.Methods) > 0 {
				return b, errors.New("methods given twice")
			}
			b.Methods = strings.Split(string(v), "\n")
			for _, m := range b.Methods {
				if err := CheckMethodPattern(m); err != nil {
					return b, err
				}
			}
		case caveatNotAfter, caveatNotBefore:
			if l != 8 {
				return b, errors.New("time caveat not 8 bytes")
			}
			at := time.Unix(int64(binary.BigEndian.Uint64(v)), 0).UTC()
			if typ == caveatNotAfter {
				if !b.NotAfter.IsZero() {
					return b, errors.New("expiry given twice")
				}
				b.NotAfter = at
			} else {
				if !b.NotBefore.IsZero() {
					return b, errors.New("not-before given twice")
				}
				b.NotBefore = at
			}
		case caveatPeer:
			if l != sha256.Size {
				return b, errors.New("peer caveat not a digest")
			}
			b.Peers = append(b.Peers, Digest(v))
		case caveatNonce:
			if l != len(b.Nonce) || nonce {
				return b, errors.New("bad nonce")
			}
			copy(b.Nonce[:], v)
			nonce = true
		default:
			return b, fmt.Errorf("unknown caveat type %d", typ)
		}
	}
	if !nonce {
		return b, errors.New("no nonce")
	}
	return b, nil
}

// CheckMethodPattern checks a methods caveat's pattern:
// "/pkg.Service/Method" or "/pkg.Service/*".
func CheckMethodPattern(p string) error {
	svc, m, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/")
	if !strings.HasPrefix(p, "/") || !ok || svc == "" || m == "" || strings.ContainsAny(svc, "/*\n ") ||
		strings.ContainsAny(m, "/\n ") || (strings.Contains(m, "*") && m != "*") {
		return fmt.Errorf("bad method pattern %q: want /pkg.Service/Method or /pkg.Service/*", p)
	}
	return nil
}

// encode returns the block's wire form.
func (b Block) encode() ([]byte, error) {
	var out []byte
	put := func(typ byte, v []byte) {
		out = append(out, typ)
		out = binary.BigEndian.AppendUint16(out, uint16(len(v)))
		out = append(out, v...)
	}
	if len(b.Methods) > 0 {
		for _, m := range b.Methods {
			if err := CheckMethodPattern(m); err != nil {
				return nil, err
			}
		}
		put(caveatMethods, []byte(strings.Join(b.Methods, "\n")))
	}
	if !b.NotAfter.IsZero() {
		put(caveatNotAfter, binary.BigEndian.AppendUint64(nil, uint64(b.NotAfter.Unix())))
	}
	if !b.NotBefore.IsZero() {
		put(caveatNotBefore, binary.BigEndian.AppendUint64(nil, uint64(b.NotBefore.Unix())))
	}
	for _, d := range b.Peers {
		put(caveatPeer, d[:])
	}
	put(caveatNonce, b.Nonce[:])
	return out, nil
}

// chain returns HMAC-SHA256(key = tag, msg = block): the next tag.
func chain(tag, block []byte) [sha256.Size]byte {
	mac := hmac.New(sha256.New, tag)
	mac.Write(block)
	var out [sha256.Size]byte
	mac.Sum(out[:0])
	return out
}

// Narrow appends block b to the ref whose path segment is seg (a root id or
// a token) and returns the new segment. It needs no key and no network: the
// new tag is computed from the last one. A zero Nonce is filled in at
// random.
func Narrow(seg []byte, b Block) ([]byte, error) {
	if b.Nonce == ([16]byte{}) {
		rand.Read(b.Nonce[:])
	}
	raw, err := b.encode()
	if err != nil {
		return nil, err
	}
	var locator [sha256.Size]byte
	var prev []byte // tag_(i-1): the root id itself for a root ref
	var blocks [][]byte
	if t, err := ParseToken(seg); err == nil {
		locator, prev, blocks = t.Locator, t.Tag[:], t.raw
	} else {
		if len(seg) == 0 {
			return nil, fmt.Errorf("%w: empty ref", ErrInvalidToken)
		}
		locator, prev = sha256.Sum256(seg), seg
	}
	if len(blocks)+1 > MaxTokenBlocks {
		return nil, fmt.Errorf("%w: at most %d blocks", ErrInvalidToken, MaxTokenBlocks)
	}
	next := chain(prev, raw)
	out := []byte{tokenVersion}
	out = append(out, locator[:]...)
	out = append(out, byte(len(blocks)+1))
	for _, r := range append(slices.Clip(blocks), raw) {
		out = binary.BigEndian.AppendUint16(out, uint16(len(r)))
		out = append(out, r...)
	}
	out = append(out, next[:]...)
	if len(out) > MaxTokenSize {
		return nil, fmt.Errorf("%w: would be %d bytes, over %d", ErrInvalidToken, len(out), MaxTokenSize)
	}
	return out, nil
}

// Verify recomputes t's chain from the root id and reports whether its tag
// matches, in constant time. It returns the revocation id of every prefix
// of the chain, the root's first: revoking any of them kills the ref.
func (t *Token) Verify(root ServiceID) ([]RevocationID, bool) {
	if sha256.Sum256(root) != t.Locator {
		return nil, false
	}
	revs := []RevocationID{root.RevocationID()}
	tag := []byte(root)
	for _, raw := range t.raw {
		next := chain(tag, raw)
		tag = next[:]
		revs = append(revs, revocationID(tag))
	}
	return revs, hmac.Equal(tag, t.Tag[:])
}

// RevocationID returns the revocation id of the ref t is (its last
// prefix), computable by any holder.
func (t *Token) RevocationID() RevocationID { return revocationID(t.Tag[:]) }

// CaveatError says which caveat of a narrowed ref refused a restore or a
// call. Its message names the caveat, never the token.
type CaveatError struct {
	Kind   string // "methods", "expiry", "not-before" or "peer"
	Detail string
}

func (e *CaveatError) Error() string {
	return fmt.Sprintf("narrowed ref refuses this: %s caveat: %s", e.Kind, e.Detail)
}

// Caveats are the checks of a verified narrowed ref: every block's.
type Caveats struct {
	Blocks []Block
	Skew   time.Duration // allowance on expiry and not-before
}

// CheckPeer checks every block's peer caveat against the restoring vat.
func (c Caveats) CheckPeer(peer Digest) error {
	for _, b := range c.Blocks {
		if len(b.Peers) > 0 && !slices.Contains(b.Peers, peer) {
			return &CaveatError{Kind: "peer", Detail: fmt.Sprintf("the ref is bound to other vats than %v", peer)}
		}
	}
	return nil
}

// CheckTime checks every block's expiry and not-before at now.
func (c Caveats) CheckTime(now time.Time) error {
	for _, b := range c.Blocks {
		if !b.NotAfter.IsZero() && now.After(b.NotAfter.Add(c.Skew)) {
			return &CaveatError{Kind: "expiry", Detail: "expired at " + b.NotAfter.Format(time.RFC3339)}
		}
		if !b.NotBefore.IsZero() && now.Before(b.NotBefore.Add(-c.Skew)) {
			return &CaveatError{Kind: "not-before", Detail: "not valid before " + b.NotBefore.Format(time.RFC3339)}
		}
	}
	return nil
}

// CheckMethod checks every block's methods caveat against a full gRPC
// method name, "/pkg.Service/Method".
func (c Caveats) CheckMethod(method string) error {
	for _, b := range c.Blocks {
		if len(b.Methods) > 0 && !slices.ContainsFunc(b.Methods, func(p string) bool { return methodMatches(p, method) }) {
			return &CaveatError{Kind: "methods", Detail: fmt.Sprintf("method %s is not allowed", method)}
		}
	}
	return nil
}

// Expiry returns the earliest expiry of any block, or zero.
func (c Caveats) Expiry() time.Time {
	var at time.Time
	for _, b := range c.Blocks {
		if !b.NotAfter.IsZero() && (at.IsZero() || b.NotAfter.Before(at)) {
			at = b.NotAfter
		}
	}
	if at.IsZero() {
		return at
	}
	return at.Add(c.Skew)
}

// methodMatches reports whether pattern (see CheckMethodPattern) admits
// method.
func methodMatches(pattern, method string) bool {
	if svc, ok := strings.CutSuffix(pattern, "/*"); ok {
		rest, ok := strings.CutPrefix(method, svc+"/")
		return ok && rest != "" && !strings.Contains(rest, "/")
	}
	return pattern == method
}
