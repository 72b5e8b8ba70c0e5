package vat

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// serverTLS returns the listener's TLS configuration: it presents the vat's
// certificate and requires one from the client, of any key (the client's
// digest becomes the connection's peer identity).
func serverTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := certDigest(raw)
			return err
		},
	}
}

// clientTLS returns the dialler's TLS configuration: it presents the vat's
// certificate and accepts the server only if its key hashes to want. Dates,
// names and issuers are not checked: the key is the identity.
func clientTLS(cert tls.Certificate, want Digest) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{cert},
		ServerName:         "capnp",
		InsecureSkipVerify: true, // replaced by the key pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			got, err := certDigest(raw)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("%w: expected %v, got %v", ErrKeyMismatch, want, got)
			}
			return nil
		},
	}
}

// certDigest returns the digest of the key in the first certificate.
func certDigest(raw [][]byte) (Digest, error) {
	if len(raw) == 0 {
		return Digest{}, errors.New("peer sent no certificate")
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return Digest{}, fmt.Errorf("peer certificate: %w", err)
	}
	return sha256.Sum256(cert.RawSubjectPublicKeyInfo), nil
}

// peerIdentity returns the digest of the peer's key and the instance its
// certificate announces on an established TLS connection.
func peerIdentity(cs tls.ConnectionState) (identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return identity{}, errors.New("peer sent no certificate")
	}
	cert := cs.PeerCertificates[0]
	return identity{digest: sha256.Sum256(cert.RawSubjectPublicKeyInfo), instance: certInstance(cert)}, nil
}
