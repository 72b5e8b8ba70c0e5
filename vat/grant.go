package vat

import (
	"context"
	"slices"
)

// Grant is what a restore granted: which vat restored the ref, and which
// ref it was. The Table attaches it to the context of every call made on
// the capability it restored (GrantFromContext), so the service learns who
// calls and can check a narrowed ref's per-call caveats.
type Grant struct {
	// Peer is the digest of the vat that restored the ref; zero for an
	// insecure peer. A local restore has the vat's own digest.
	Peer Digest
	// Ref is the revocation id of the ref used, root or narrowed.
	Ref RevocationID
	// Chain holds the revocation ids of the ref's chain, the root's first
	// and Ref last: revoking any of them revokes the ref.
	Chain []RevocationID
	// Caveats are a narrowed ref's checks; empty for a root ref.
	Caveats Caveats

	peerName string // Peer.String(), set with Peer by the vat (PeerName)
}

// PeerName returns Peer.String(): kept from when the vat made the grant,
// so that a sidecar naming the caller of every call does not encode the
// digest again each time.
func (g *Grant) PeerName() string {
	if g.peerName == "" {
		return g.Peer.String()
	}
	return g.peerName
}

// setPeer records the restoring peer of ctx in g.
func (g *Grant) setPeer(ctx context.Context) {
	g.Peer, _ = PeerFromContext(ctx)
	g.peerName = g.Peer.String()
}

type grantKey struct{}
type restoringPeerKey struct{}

// GrantFromContext returns the grant of the restore through which a call
// came, if any.
func GrantFromContext(ctx context.Context) (*Grant, bool) {
	g, ok := ctx.Value(grantKey{}).(*Grant)
	return g, ok
}

// withPeer records the restoring vat in a restore's context.
func withPeer(ctx context.Context, d Digest) context.Context {
	return context.WithValue(ctx, restoringPeerKey{}, d)
}

// PeerFromContext returns the digest of the vat on whose behalf a restore
// runs (set for Restorer.Restore), and whether one was set.
func PeerFromContext(ctx context.Context) (Digest, bool) {
	d, ok := ctx.Value(restoringPeerKey{}).(Digest)
	return d, ok
}

// revokedBy reports whether revoking r revokes g.
func (g *Grant) revokedBy(r RevocationID) bool { return g != nil && slices.Contains(g.Chain, r) }
