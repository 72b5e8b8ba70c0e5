package vat

import (
	"context"
	"crypto/sha256"
	"testing"
)

// TestGrantPeerName checks that the name kept when the vat records the
// restoring peer is the digest's String, for a grant the vat filled and for
// one built by hand.
func TestGrantPeerName(t *testing.T) {
	d := Digest(sha256.Sum256([]byte("peer key")))
	var g Grant
	g.setPeer(withPeer(context.Background(), d))
	if g.Peer != d || g.PeerName() != d.String() {
		t.Fatalf("filled grant: peer %v name %q, want %v %q", g.Peer, g.PeerName(), d, d.String())
	}
	byHand := Grant{Peer: d}
	if byHand.PeerName() != d.String() {
		t.Fatalf("grant built by hand: name %q, want %q", byHand.PeerName(), d.String())
	}
	var insecure Grant
	insecure.setPeer(context.Background())
	if !insecure.Peer.IsZero() || insecure.PeerName() != "insecure" {
		t.Fatalf("no peer: %v %q, want zero and \"insecure\"", insecure.Peer, insecure.PeerName())
	}
}
