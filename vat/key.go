package vat

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Key is a vat's secret key, the source of its identity: its Digest is what
// capnp:// URIs pin. A Key is immutable and safe for concurrent use.
type Key struct {
	signer crypto.Signer
	pem    []byte
	digest Digest
	cert   tls.Certificate
}

// GenerateKey returns a new Ed25519 key, not saved anywhere.
func GenerateKey() (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return ParseKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// ParseKey reads a PEM private key: PKCS#8 ("PRIVATE KEY") holding an RSA,
// ECDSA or Ed25519 key, or the older PKCS#1 ("RSA PRIVATE KEY") and SEC 1
// ("EC PRIVATE KEY") forms. The PEM bytes are kept as given, since DeriveID
// hashes them.
func ParseKey(pemBytes []byte) (*Key, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrInvalidKey)
	}
	var (
		parsed any
		err    error
	)
	switch block.Type {
	case "PRIVATE KEY":
		parsed, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		parsed, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		parsed, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%w: PEM block %q is not a private key", ErrInvalidKey, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	var signer crypto.Signer
	switch k := parsed.(type) {
	case *rsa.PrivateKey:
		signer = k
	case *ecdsa.PrivateKey:
		signer = k
	case ed25519.PrivateKey:
		signer = k
	default:
		return nil, fmt.Errorf("%w: unsupported key type %T", ErrInvalidKey, parsed)
	}
	spki, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	k := &Key{signer: signer, pem: append([]byte(nil), pemBytes...), digest: sha256.Sum256(spki)}
	if k.cert, err = selfSigned(signer, Instance{}); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return k, nil
}

// LoadOrCreateKey reads the key in the PEM file at path, or, when the file
// does not exist, generates an Ed25519 key and writes it there (created
// exclusively, mode 0600; missing parent directories are created with mode
// 0700). An empty path returns a new ephemeral key.
func LoadOrCreateKey(path string) (*Key, error) {
	if path == "" {
		return GenerateKey()
	}
	data, err := os.ReadFile(path)
	if err == nil {
		k, err := ParseKey(data)
		if err != nil {
			return nil, fmt.Errorf("load key %s: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("load key: %w", err)
	}
	k, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it first: use theirs.
		return LoadOrCreateKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	if _, err := f.Write(k.pem); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("write key %s: %w", path, err)
	}
	return k, nil
}

// Digest returns the SHA-256 of the key's DER SubjectPublicKeyInfo.
func (k *Key) Digest() Digest { return k.digest }

// PEM returns a copy of the key's PEM bytes (secret).
func (k *Key) PEM() []byte { return append([]byte(nil), k.pem...) }

// Public returns the public half of the key.
func (k *Key) Public() crypto.PublicKey { return k.signer.Public() }

// DeriveID is DeriveID(k.PEM(), name).
func (k *Key) DeriveID(name string) ServiceID { return DeriveID(k.pem, name) }

// selfSigned returns a certificate for the key as OCaml capnp-rpc makes it:
// CN "capnp", valid from 1970 to 9999. Peers check only the key, never the
// dates or issuer.
// A non-zero instance is announced in the subject's serialNumber attribute.
func selfSigned(signer crypto.Signer, instance Instance) (tls.Certificate, error) {
	subject := pkix.Name{CommonName: "capnp"}
	if !instance.IsZero() {
		subject.SerialNumber = instance.subjectSerial()
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      subject,
		NotBefore:    time.Date(1970, 1, 1, 1, 1, 1, 0, time.UTC),
		NotAfter:     time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-signed certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: signer}, nil
}
