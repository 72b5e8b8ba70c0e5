package vat_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vatcar/vatcar/vat"
)

func pkcs8Key(t *testing.T, k any) *vat.Key {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	key, err := vat.ParseKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func TestKeyTypesInteroperate(t *testing.T) {
	ctx := testContext(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, _, uri := hostEcho(t, "rsa", vat.Config{Key: pkcs8Key(t, rsaKey)})
	a := startVat(t, vat.Config{Key: pkcs8Key(t, ecKey)})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatalf("ECDSA vat connecting to an RSA vat: %v", err)
	}
	defer c.Release()
	if got, err := call(ctx, c, "x"); err != nil || got != "rsa:x" {
		t.Errorf("call = %q, %v", got, err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	// A client that connects and never speaks TLS is dropped after the
	// handshake timeout.
	v := startVat(t, vat.Config{HandshakeTimeout: 100 * time.Millisecond})
	pub, _ := v.PublicAddress()
	raw, err := net.Dial("tcp", net.JoinHostPort(pub.Host, fmt.Sprint(pub.Port)))
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(raw)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("silent client still connected after %v", time.Since(start))
	}
	if s := v.Stats(); s.Peers+s.Anonymous != 0 {
		t.Errorf("stats %+v after a failed handshake", s)
	}
}

func TestPlainClientRefusedBySecureVat(t *testing.T) {
	ctx := testContext(t)
	_, _, uri := hostEcho(t, "b", vat.Config{})
	loc, id, _ := vat.ParseURI(uri)
	loc.Digest = vat.Digest{}
	a := startVat(t, vat.Config{Insecure: true})
	_, err := a.MustImport(vat.FormatURI(loc, id)).Connect(ctx)
	if err == nil || !vat.IsDisconnected(err) {
		t.Errorf("insecure client against a TLS vat: got %v, want a disconnected error", err)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLoggingTagsAndSecrets(t *testing.T) {
	ctx := testContext(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b, _, uri := hostEcho(t, "b", vat.Config{Logger: log, Tags: []slog.Attr{slog.String("pod", "b-0")}})
	a := startVat(t, vat.Config{})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	_, err = a.MustImport(strings.Replace(uri, "/"+uri[strings.LastIndex(uri, "/")+1:], "/AAAA", 1)).Connect(ctx)
	if err == nil {
		t.Fatal("unknown id restored")
	}
	waitFor(t, "the connection and restore logs", func() bool {
		return strings.Contains(logs.String(), "msg=connected") && strings.Contains(logs.String(), "restore failed")
	})
	out := logs.String()
	for _, want := range []string{"pod=b-0", "vat=" + b.Digest().String(), "peer=" + a.Digest().String()} {
		if !strings.Contains(out, want) {
			t.Errorf("logs lack %q:\n%s", want, out)
		}
	}
	if _, id, _ := vat.ParseURI(uri); strings.Contains(out, id.Base64()) {
		t.Errorf("logs reveal a service id:\n%s", out)
	}
}
