package vat_test

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

// TestRevocationIDVector pins the revocation id format: a committed vector,
// and the definition computed independently here.
func TestRevocationIDVector(t *testing.T) {
	id := vat.ServiceID("main")
	const want = "rev1:B015wnUJAxb-Wys32ywjHA"
	sum := sha256.Sum256(append([]byte("vatcar revocation id v1\x00"), id...))
	independent := "rev1:" + base64.RawURLEncoding.EncodeToString(sum[:16])
	if got := id.RevocationID(); string(got) != independent {
		t.Errorf("RevocationID = %q, want %q (the documented definition)", got, independent)
	}
	if got := id.RevocationID(); string(got) != want {
		t.Errorf("RevocationID = %q, want the committed %q", got, want)
	}
}

func TestRevocationIDNotTheID(t *testing.T) {
	id := vat.DeriveID([]byte("key"), "greeter")
	r := id.RevocationID()
	if strings.Contains(string(r), id.Base64()) || strings.Contains(string(r), id.Base64()[:8]) {
		t.Errorf("revocation id %q shows the service id", r)
	}
	if r == vat.DeriveID([]byte("key"), "other").RevocationID() {
		t.Error("two ids share a revocation id")
	}
	if len(r) != len("rev1:")+22 {
		t.Errorf("len(%q) = %d, want %d", r, len(r), len("rev1:")+22)
	}
}

func TestParseRevocationID(t *testing.T) {
	good := vat.ServiceID("x").RevocationID()
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"valid", string(good), true},
		{"no prefix", strings.TrimPrefix(string(good), "rev1:"), false},
		{"other version", "rev2:" + strings.TrimPrefix(string(good), "rev1:"), false},
		{"short", string(good[:len(good)-1]), false},
		{"long", string(good) + "A", false},
		{"padded", string(good) + "==", false},
		{"std alphabet", "rev1:+++++++++++++++++++++w", false},
		{"non-canonical trailing bits", string(good[:len(good)-1]) + "B", false},
		{"empty", "", false},
		{"newline", string(good[:len(good)-1]) + "\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := vat.ParseRevocationID(tc.in)
			if tc.ok {
				if err != nil || got != good {
					t.Fatalf("ParseRevocationID(%q) = %q, %v; want %q", tc.in, got, err, good)
				}
				return
			}
			if !errors.Is(err, vat.ErrInvalidRevocationID) {
				t.Fatalf("ParseRevocationID(%q) = %q, %v; want ErrInvalidRevocationID", tc.in, got, err)
			}
		})
	}
}

func TestURIRevocationID(t *testing.T) {
	id := vat.DeriveID([]byte("key"), "greeter")
	var loc vat.Locator
	loc.Address, _ = vat.ParseAddress("tcp:greeter.ns.svc:7000")
	loc.Digest[0] = 1
	other := loc
	other.Address, _ = vat.ParseAddress("tcp:10.0.0.7:7000")
	for _, uri := range []string{vat.FormatURI(loc, id), vat.FormatURI(other, id)} {
		got, err := vat.URIRevocationID(uri)
		if err != nil || got != id.RevocationID() {
			t.Errorf("URIRevocationID(a URI of the id) = %q, %v; want %q (any address of the same ref)", got, err, id.RevocationID())
		}
	}
	for _, bad := range []string{"capnp://insecure@localhost:7000", "http://x/y", "capnp://sha-256:AAAA@h:1/bWFpbg"} {
		if _, err := vat.URIRevocationID(bad); !errors.Is(err, vat.ErrInvalidURI) {
			t.Errorf("URIRevocationID(%q) = %v, want ErrInvalidURI", bad, err)
		}
	}
}
