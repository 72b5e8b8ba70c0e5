package vat_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vatcar/vatcar/vat"
)

func TestDeriveIDMatchesHMAC(t *testing.T) {
	// Computed independently with Python's hmac module.
	pemBytes := []byte("-----BEGIN PRIVATE KEY-----\nfake\n-----END PRIVATE KEY-----\n")
	const want = "2559b0d61b426c897afe4b74f3d31dba8b15478e14479734b8570357121e95bd"
	if got := hex.EncodeToString(vat.DeriveID(pemBytes, "my-service")); got != want {
		t.Errorf("DeriveID = %s, want %s", got, want)
	}

	k, err := vat.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(k.PEM())
	mac := hmac.New(sha256.New, sum[:])
	mac.Write([]byte("svc"))
	if got, want := k.DeriveID("svc"), mac.Sum(nil); !bytes.Equal(got, want) {
		t.Errorf("Key.DeriveID = %x, want %x", got, want)
	}
	if bytes.Equal(k.DeriveID("a"), k.DeriveID("b")) {
		t.Error("different names gave the same id")
	}
}

func TestGenerateID(t *testing.T) {
	a, b := vat.GenerateID(), vat.GenerateID()
	if len(a) != 20 || len(b) != 20 {
		t.Fatalf("lengths %d, %d, want 20", len(a), len(b))
	}
	if a.Equal(b) {
		t.Error("two generated ids are equal")
	}
	if !a.Equal(append(vat.ServiceID(nil), a...)) {
		t.Error("id not equal to its copy")
	}
	if s := a.String(); bytes.Contains([]byte(s), []byte(a.Base64())) || len(s) != len("id:")+8 {
		t.Errorf("String() = %q: want a short hash, not the id", s)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vat.pem")
	k1, err := vat.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("key file mode %o, want 600", mode)
	}
	k2, err := vat.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Digest() != k2.Digest() || !bytes.Equal(k1.PEM(), k2.PEM()) {
		t.Error("reloaded key differs from the created one")
	}
	onDisk, _ := os.ReadFile(path)
	if !bytes.Equal(onDisk, k1.PEM()) {
		t.Error("PEM() differs from the file")
	}

	eph1, err := vat.LoadOrCreateKey("")
	if err != nil {
		t.Fatal(err)
	}
	eph2, _ := vat.LoadOrCreateKey("")
	if eph1.Digest() == eph2.Digest() {
		t.Error("two ephemeral keys have the same digest")
	}

	bad := filepath.Join(t.TempDir(), "bad.pem")
	os.WriteFile(bad, []byte("not a key"), 0o600)
	if _, err := vat.LoadOrCreateKey(bad); !errors.Is(err, vat.ErrInvalidKey) {
		t.Errorf("garbage key file: got %v, want ErrInvalidKey", err)
	}
}

func TestParseKeyTypes(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	ecDER, _ := x509.MarshalECPrivateKey(ecKey)
	for _, tc := range []struct {
		name string
		pem  []byte
		pub  any
	}{
		{"rsa-pkcs8", pkcs8(rsaKey), rsaKey.Public()},
		{"ecdsa-pkcs8", pkcs8(ecKey), ecKey.Public()},
		{"rsa-pkcs1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), rsaKey.Public()},
		{"ec-sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}), ecKey.Public()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := vat.ParseKey(tc.pem)
			if err != nil {
				t.Fatal(err)
			}
			spki, _ := x509.MarshalPKIXPublicKey(tc.pub)
			if want := vat.Digest(sha256.Sum256(spki)); k.Digest() != want {
				t.Errorf("digest %v, want %v", k.Digest(), want)
			}
		})
	}
	if _, err := vat.ParseKey(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})); !errors.Is(err, vat.ErrInvalidKey) {
		t.Errorf("certificate PEM: got %v, want ErrInvalidKey", err)
	}
}

func TestCapFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.cap")
	const uri = "capnp://insecure@localhost:7000/bWFpbg"
	if err := vat.SaveCapFile(path, uri); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if string(data) != uri+"\n" {
		t.Errorf("file holds %q, want %q", data, uri+"\n")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("cap file mode %o, want 600", fi.Mode().Perm())
	}
	got, err := vat.LoadCapFile(path)
	if err != nil || got != uri {
		t.Errorf("LoadCapFile = %q, %v; want %q", got, err, uri)
	}
	got, err = vat.ReadURI("@" + path)
	if err != nil || got != uri {
		t.Errorf("ReadURI(@path) = %q, %v; want %q", got, err, uri)
	}
}

// TestLoadOrCreateKeyMakesItsDirectory: a key path whose directories do not
// exist yet (the README's keys/vat.pem) gets them, private to the user.
func TestLoadOrCreateKeyMakesItsDirectory(t *testing.T) {
	root := t.TempDir()
	path := filepath.Join(root, "keys", "deeper", "vat.pem")
	k, err := vat.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(root, "keys"), filepath.Join(root, "keys", "deeper")} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			t.Errorf("%s: mode %o, want no group or other access (0700)", dir, mode)
		}
	}
	again, err := vat.LoadOrCreateKey(path)
	if err != nil || again.Digest() != k.Digest() {
		t.Fatalf("reload: %v, digest changed: %v", err, err == nil && again.Digest() != k.Digest())
	}
	// A path under a file is an error that names the operation.
	if _, err := vat.LoadOrCreateKey(filepath.Join(path, "vat.pem")); err == nil {
		t.Error("key under a regular file: no error")
	}
}
