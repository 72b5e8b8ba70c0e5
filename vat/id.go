package vat

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"
)

// b64 is the encoding of digests and service ids in URIs: unpadded base64url,
// strict about trailing bits so that each value has one spelling.
var b64 = base64.RawURLEncoding.Strict()

// ServiceID names a service hosted by a vat: the secret part of a sturdy ref.
// Whoever knows it (and the vat's address) may use the service, so it must
// not be logged; String prints only a short hash of it.
type ServiceID []byte

// GenerateID returns a fresh random service id of 20 bytes.
func GenerateID() ServiceID {
	id := make(ServiceID, 20)
	if _, err := rand.Read(id); err != nil {
		panic("vat: crypto/rand failed: " + err.Error())
	}
	return id
}

// DeriveID returns the service id HMAC-SHA256(key = SHA-256(keyPEM), msg =
// name): the same for the same vat key file and name across restarts, and
// the same as OCaml capnp-rpc's derived ids.
func DeriveID(keyPEM []byte, name string) ServiceID {
	k := sha256.Sum256(keyPEM)
	mac := hmac.New(sha256.New, k[:])
	mac.Write([]byte(name))
	return mac.Sum(nil)
}

// Equal reports whether id and other are the same id. It takes time
// independent of where they differ.
func (id ServiceID) Equal(other ServiceID) bool {
	a, b := id.hash(), other.hash()
	return hmac.Equal(a[:], b[:])
}

// String returns a short, non-secret tag for the id, fit for logs: "id:"
// followed by 8 hex digits of its SHA-256.
func (id ServiceID) String() string {
	h := id.hash()
	return "id:" + hex.EncodeToString(h[:4])
}

// Base64 returns the id as it appears in a URI (unpadded base64url).
func (id ServiceID) Base64() string { return b64.EncodeToString(id) }

func (id ServiceID) hash() [sha256.Size]byte { return sha256.Sum256(id) }

// Digest identifies a vat: the SHA-256 of its public key's DER
// SubjectPublicKeyInfo. The zero Digest stands for no identity (an insecure
// vat or peer).
type Digest [sha256.Size]byte

// IsZero reports whether d is the zero Digest (no identity).
func (d Digest) IsZero() bool { return d == Digest{} }

// String returns d as in a URI's user info, "sha-256:<base64url>", or
// "insecure" for the zero Digest.
func (d Digest) String() string {
	if d.IsZero() {
		return "insecure"
	}
	return "sha-256:" + d.Base64()
}

// Base64 returns the digest in unpadded base64url.
func (d Digest) Base64() string { return b64.EncodeToString(d[:]) }

// Compare compares digests bytewise, as the crossed-connection rule does.
func (d Digest) Compare(other Digest) int { return bytes.Compare(d[:], other[:]) }

// ParseDigest parses a digest as Digest.String prints it,
// "sha-256:<base64url>".
func ParseDigest(s string) (Digest, error) {
	v, ok := strings.CutPrefix(s, "sha-256:")
	if !ok {
		return Digest{}, fmt.Errorf("digest %q: want sha-256:<base64url>", s)
	}
	raw, err := b64.DecodeString(v)
	if err != nil || len(raw) != sha256.Size {
		return Digest{}, fmt.Errorf("digest %q: want 32 bytes in unpadded base64url", s)
	}
	return Digest(raw), nil
}
