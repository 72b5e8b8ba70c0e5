package vat

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"strings"
)

// Instance identifies one process of a vat identity: replicas of a workload
// share a key (one digest) and differ by instance. Each Vat picks a random
// Instance at New and announces it in its TLS certificate; a peer that
// announces none (OCaml capnp-rpc, C++ capnp, older vatcar) has the zero
// Instance. Instances are not secret and never appear in sturdy refs.
type Instance [16]byte

// IsZero reports whether i is the zero Instance (a peer that sent none).
func (i Instance) IsZero() bool { return i == Instance{} }

// String returns i in hex; "-" for the zero Instance.
func (i Instance) String() string {
	if i.IsZero() {
		return "-"
	}
	return hex.EncodeToString(i[:])
}

// Compare orders instances bytewise: -1, 0 or +1.
func (i Instance) Compare(j Instance) int { return strings.Compare(string(i[:]), string(j[:])) }

// newInstance returns a random Instance.
func newInstance() Instance {
	var i Instance
	rand.Read(i[:]) // never fails (crypto/rand since Go 1.24)
	return i
}

// instancePrefix starts the certificate subject's serialNumber attribute
// that carries the instance: "vatcar-instance:" and 32 hex digits. The CN
// stays "capnp", as OCaml capnp-rpc makes it.
const instancePrefix = "vatcar-instance:"

// subjectSerial is the subject serialNumber attribute announcing i.
func (i Instance) subjectSerial() string { return instancePrefix + hex.EncodeToString(i[:]) }

// certInstance returns the instance a peer's certificate announces, or the
// zero Instance when it announces none or one that does not parse (such a
// peer is treated as one that sent none: the instance only deduplicates
// connections, it grants nothing).
func certInstance(cert *x509.Certificate) Instance {
	s, ok := strings.CutPrefix(cert.Subject.SerialNumber, instancePrefix)
	var i Instance
	if !ok || hex.DecodedLen(len(s)) != len(i) {
		return Instance{}
	}
	if _, err := hex.Decode(i[:], []byte(s)); err != nil {
		return Instance{}
	}
	return i
}

// identity is a vat process as the connection rules see it: a key digest
// and an instance.
type identity struct {
	digest   Digest
	instance Instance
}

// compare orders identities by digest, then by instance.
func (a identity) compare(b identity) int {
	if c := a.digest.Compare(b.digest); c != 0 {
		return c
	}
	return a.instance.Compare(b.instance)
}

// keepNewConnection is the rule for a new connection to a peer process
// (digest and instance) that already has a usable connection, prev, on
// which side initiated each (mode of the new one):
//
//   - Both accepted: the peer connected again, so it gave up on the old
//     connection; the new one wins.
//   - Both initiated here: two dials reached the same process (by two
//     addresses of one replica); the old one is kept, so neither address's
//     pool knocks the other's connection off.
//   - Crossed (one each way): the connection initiated by the greater
//     process wins, comparing digests and, between instances of one
//     identity, instance ids. Both sides compute the same answer.
func keepNewConnection(me, peer identity, prev, mode Mode) bool {
	switch {
	case prev == Accept && mode == Accept:
		return true
	case prev == Connect && mode == Connect:
		return false
	}
	return (me.compare(peer) > 0) == (mode == Connect)
}
