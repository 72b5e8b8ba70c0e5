package vat_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/vatcar/vatcar/vat"
)

// strangerCert is a client certificate for key announcing a random
// instance, as any TLS client may present.
func strangerCert(t *testing.T, key crypto.Signer) tls.Certificate {
	t.Helper()
	inst := make([]byte, 16)
	rand.Read(inst)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "capnp", SerialNumber: "vatcar-instance:" + hex.EncodeToString(inst)},
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func newECKey(t *testing.T) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// stranger completes a TLS handshake with the vat at target and restores
// nothing; the connection stays open until the test ends.
func stranger(t *testing.T, target string, cert tls.Certificate) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", target, &tls.Config{
		Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatalf("stranger handshake: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByPeer reports whether the vat closed c (a read ends with EOF or a
// reset), waiting for it at most a few seconds.
func closedByPeer(c *tls.Conn) bool {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

// refusals counts OnRefused reasons.
type refusals struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *refusals) hook(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *refusals) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}

// TestIdleStrangersMakeRoom: with every slot held by TLS peers that never
// restore, a legitimate importer still connects and calls: the oldest
// stranger past StrangerGrace is closed for it, and counted.
func TestIdleStrangersMakeRoom(t *testing.T) {
	ctx := testContext(t)
	var r refusals
	const slots = 3
	b, _, uri := hostEcho(t, "b", vat.Config{MaxConnections: slots, StrangerGrace: 50 * time.Millisecond, OnRefused: r.hook})
	addr, _ := b.PublicAddress()
	target := net.JoinHostPort(addr.Host, strconv.Itoa(addr.Port))
	var strangers []*tls.Conn
	for range slots {
		strangers = append(strangers, stranger(t, target, strangerCert(t, newECKey(t))))
	}
	waitFor(t, "b to hold the strangers", func() bool { return len(b.Peers()) == slots })

	a := startVat(t, vat.Config{})
	var c interface{ Release() }
	waitFor(t, "a legitimate importer to connect", func() bool {
		cap, err := a.MustImport(uri).Connect(ctx)
		if err != nil {
			return false // a stranger may still be within its grace
		}
		c = cap
		return true
	})
	defer c.Release()
	if r.count(vat.RefusedIdle) < 1 {
		t.Errorf("no eviction counted as %q: %v", vat.RefusedIdle, r.n)
	}
	if !closedByPeer(strangers[0]) {
		t.Error("the oldest stranger is still connected")
	}
	if n := b.Stats().Inbound; n > slots {
		t.Errorf("b holds %d inbound connections, more than its %d slots", n, slots)
	}
	// The importer, having restored, is not a stranger: more strangers do
	// not push it out.
	for range 2 {
		stranger(t, target, strangerCert(t, newECKey(t)))
	}
	waitFor(t, "the new strangers to be let in or refused", func() bool {
		return r.count(vat.RefusedIdle)+r.count(vat.RefusedMaxConnections) >= 3
	})
	cap, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatalf("the importer after more strangers: %v", err)
	}
	if got, err := call(ctx, cap, "x"); err != nil || got != "b:x" {
		t.Errorf("call = %q, %v", got, err)
	}
	cap.Release()
}

// TestKeyShareMakesRoom: with every slot held by one key's connections
// (instances it made up), a connection from another key takes the newest
// of them.
func TestKeyShareMakesRoom(t *testing.T) {
	ctx := testContext(t)
	var r refusals
	const slots = 3
	b, _, uri := hostEcho(t, "b", vat.Config{MaxConnections: slots, StrangerGrace: -1, OnRefused: r.hook})
	addr, _ := b.PublicAddress()
	target := net.JoinHostPort(addr.Host, strconv.Itoa(addr.Port))
	hog := newECKey(t)
	var conns []*tls.Conn
	for i := range slots {
		// One at a time: b registers a connection after its own side of
		// the handshake, which under load can come after the client's
		// next dial; the newest by b's count must be conns[slots-1].
		conns = append(conns, stranger(t, target, strangerCert(t, hog)))
		waitFor(t, "b to hold the hog's connections", func() bool { return len(b.Connections()) == i+1 })
	}

	a := startVat(t, vat.Config{})
	cap, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatalf("another key's connection while one key holds every slot: %v", err)
	}
	defer cap.Release()
	if got, err := call(ctx, cap, "x"); err != nil || got != "b:x" {
		t.Errorf("call = %q, %v", got, err)
	}
	if r.count(vat.RefusedKeyShare) != 1 {
		t.Errorf("evictions over the key share = %d, want 1 (%v)", r.count(vat.RefusedKeyShare), r.n)
	}
	if !closedByPeer(conns[slots-1]) {
		t.Error("the hog's newest connection is still open")
	}
}

// TestAnswerBudgetKeepsBusyPeers: a peer making many calls, each finished
// as go-capnp does (a Finish some 250 ms after the Return), stays well under
// a modest budget and keeps its connection.
func TestAnswerBudgetKeepsBusyPeers(t *testing.T) {
	ctx := testContext(t)
	var r refusals
	_, _, uri := hostEcho(t, "b", vat.Config{MaxAnswers: 2000, OnRefused: r.hook})
	a := startVat(t, vat.Config{})
	c, err := a.MustImport(uri).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	for i := range 500 {
		if got, err := call(ctx, c, "x"); err != nil || got != "b:x" {
			t.Fatalf("call %d = %q, %v", i, got, err)
		}
	}
	if n := r.count(vat.RefusedAnswerBudget); n != 0 {
		t.Errorf("%d connections closed over the answer budget, want 0", n)
	}
}
