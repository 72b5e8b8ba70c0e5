package vat

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
)

// RevocationID is the non-secret name of a sturdy ref, for revocation
// lists, logs and admin output: "rev1:" followed by the unpadded base64url
// of the first 16 bytes of SHA-256(revocationDomain || secret), where secret
// is the ref's service id. It cannot be turned back into the id (it is a
// hash), so it may be shown, stored and shared freely; anyone holding the
// URI can compute it (URIRevocationID). Attenuated refs will have one per
// prefix of their chain, the same function of that prefix's tag; the
// version in the prefix leaves room for other derivations.
type RevocationID string

// RevocationIDPrefix starts every RevocationID.
const RevocationIDPrefix = "rev1:"

// revocationDomain separates the revocation hash from every other hash of a
// service id (the table's lookup key is a plain SHA-256 of it).
const revocationDomain = "vatcar revocation id v1\x00"

// revocationIDBytes is how much of the hash a RevocationID keeps: 128 bits,
// far beyond any collision among the refs one vat serves.
const revocationIDBytes = 16

// ErrInvalidRevocationID wraps every RevocationID parse error.
var ErrInvalidRevocationID = errors.New("invalid revocation id")

// RevocationID returns the revocation id of the ref whose secret is id.
func (id ServiceID) RevocationID() RevocationID { return revocationID(id) }

// revocationID hashes the secret of a ref (a service id; later, a chain
// tag) into its revocation id.
func revocationID(secret []byte) RevocationID {
	h := sha256.New()
	h.Write([]byte(revocationDomain))
	h.Write(secret)
	sum := h.Sum(nil)
	return RevocationID(RevocationIDPrefix + b64.EncodeToString(sum[:revocationIDBytes]))
}

// String returns the id as printed and written in revocation lists.
func (r RevocationID) String() string { return string(r) }

// ParseRevocationID reads a revocation id as String writes it. The error
// wraps ErrInvalidRevocationID.
func ParseRevocationID(s string) (RevocationID, error) {
	rest, ok := strings.CutPrefix(s, RevocationIDPrefix)
	if !ok {
		return "", fmt.Errorf("%w: want %q followed by %d base64url characters", ErrInvalidRevocationID, RevocationIDPrefix, b64.EncodedLen(revocationIDBytes))
	}
	raw, err := b64.DecodeString(rest)
	if err != nil || len(raw) != revocationIDBytes || strings.ContainsAny(rest, "\r\n") {
		return "", fmt.Errorf("%w: want %d base64url characters after %q", ErrInvalidRevocationID, b64.EncodedLen(revocationIDBytes), RevocationIDPrefix)
	}
	return RevocationID(s), nil
}

// URIRevocationID returns the revocation id of the ref a capnp:// sturdy URI
// names, as the vat serving it computes it. The error wraps ErrInvalidURI
// and never holds the URI's secret part.
func URIRevocationID(uri string) (RevocationID, error) {
	_, id, err := ParseURI(uri)
	if err != nil {
		return "", err
	}
	if len(id) == 0 {
		return "", fmt.Errorf("%w: no service id", ErrInvalidURI)
	}
	if tok, err := ParseToken(id); err == nil {
		return tok.RevocationID(), nil // a narrowed ref
	}
	return id.RevocationID(), nil
}
