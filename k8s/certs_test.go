package k8s

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testPKI is a CA generated at test time and the files of a server
// certificate it signed for 127.0.0.1.
type testPKI struct {
	pool              *x509.CertPool
	ca                *x509.Certificate
	caKey             *ecdsa.PrivateKey
	certFile, keyFile string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vatcar test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	dir := t.TempDir()
	p := &testPKI{pool: pool, ca: ca, caKey: key,
		certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
	p.issue(t, 2)
	return p
}

// issue writes a new server certificate with the given serial number.
func (p *testPKI) issue(t *testing.T, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "vatcar-injector"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, p.keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
}

// writeFile replaces path atomically, as a Secret volume update does.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestCertReloaderKeepsOldCertOnBadFiles(t *testing.T) {
	pki := newTestPKI(t)
	r, err := NewCertReloader(pki.certFile, pki.keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() int64 {
		c, _ := r.GetCertificate(nil)
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.SerialNumber.Int64()
	}
	if got := serial(); got != 2 {
		t.Fatalf("serial = %d, want 2", got)
	}
	if changed, err := r.Reload(); changed || err != nil {
		t.Fatalf("Reload of unchanged files = %v, %v; want false, nil", changed, err)
	}
	writeFile(t, pki.certFile, []byte("not a certificate"))
	if changed, err := r.Reload(); changed || err == nil {
		t.Fatalf("Reload of a broken file = %v, %v; want false and an error", changed, err)
	}
	if got := serial(); got != 2 {
		t.Fatalf("after a failed reload serial = %d, want the old 2", got)
	}
	pki.issue(t, 3)
	if changed, err := r.Reload(); !changed || err != nil {
		t.Fatalf("Reload of a new pair = %v, %v; want true, nil", changed, err)
	}
	if got := serial(); got != 3 {
		t.Fatalf("after reload serial = %d, want 3", got)
	}
}

func TestNewCertReloaderFailsOnMissingFiles(t *testing.T) {
	if _, err := NewCertReloader(filepath.Join(t.TempDir(), "none.crt"), "none.key", nil); err == nil {
		t.Fatal("NewCertReloader with missing files succeeded")
	}
}

// servedSerial dials addr and returns the serial of the certificate served.
func servedSerial(t *testing.T, addr string, pool *x509.CertPool) int64 {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}
