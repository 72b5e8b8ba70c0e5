package vat

import (
	"fmt"
	"io"
	"slices"
	"sort"
)

// Dump writes a human-readable summary of the vat to w: its identity and
// address, the peers it is connecting to and connected to (by digest), its
// anonymous connections, and per connection the calls running on it. It
// prints no service ids.
func (v *Vat) Dump(w io.Writer) error {
	type row struct {
		name string
		c    *Connection
	}
	v.mu.Lock()
	pub := v.public
	closed := v.closed
	var connecting []string
	for k := range v.dials {
		connecting = append(connecting, k.String())
	}
	var rows []row
	for k, c := range v.peers {
		rows = append(rows, row{k.String(), c})
	}
	for c := range v.anon {
		rows = append(rows, row{"anonymous " + c.remote, c})
	}
	v.mu.Unlock()
	sort.Strings(connecting)
	sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })

	ew := &errWriter{w: w}
	if v.cfg.Insecure {
		ew.printf("vat %v\n", v.Digest())
	} else {
		ew.printf("vat %v instance %v\n", v.Digest(), v.instance)
	}
	if pub.IsZero() {
		ew.printf("  address: none (client only)\n")
	} else {
		ew.printf("  address: %v\n", pub)
	}
	if closed {
		ew.printf("  closed\n")
	}
	ew.printf("  connecting: %d\n", len(connecting))
	for _, name := range connecting {
		ew.printf("    %s\n", name)
	}
	ew.printf("  connections: %d\n", len(rows))
	for _, r := range rows {
		state := "up"
		if !r.c.usable() {
			state = "closing"
		}
		st := r.c.Stats()
		ew.printf("    %s (%v, %s, remote %s): questions %d, answers %d, imports %d, exports %d, calls in %d\n",
			r.name, r.c.mode, state, r.c.remote, st.Questions, st.Answers, st.Imports, st.Exports,
			r.c.limit.running.Load())
	}
	return ew.err
}

// String names a dial target for Dump.
func (k dialKey) String() string {
	if k.digest.IsZero() {
		return "insecure " + k.addr
	}
	return k.digest.String() + " at " + k.addr
}

// String names a peer for Dump and logs.
func (k peerKey) String() string {
	if k.digest.IsZero() {
		return "insecure " + k.addr
	}
	if k.instance.IsZero() {
		return k.digest.String()
	}
	return k.digest.String() + " instance " + k.instance.String()
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, args ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, args...)
	}
}

// Stats is a snapshot of a vat's connections.
type Stats struct {
	// Peers is the number of connections to identified peers (one each).
	Peers int
	// Anonymous is the number of inbound connections from insecure peers.
	Anonymous int
	// Connecting is the number of outbound connections being made.
	Connecting int
	// CallsRunning is the number of calls peers have running on the
	// capabilities they restored from this vat.
	CallsRunning int64
	// Inbound is the number of connections Serve holds, those still in
	// their handshake included (bounded by Config.MaxConnections).
	Inbound int
}

// Stats returns a snapshot of the vat's connections.
func (v *Vat) Stats() Stats {
	v.mu.Lock()
	defer v.mu.Unlock()
	s := Stats{Peers: len(v.peers), Anonymous: len(v.anon), Connecting: len(v.dials), Inbound: v.inbound.count()}
	for _, c := range v.peers {
		s.CallsRunning += c.limit.running.Load()
	}
	for c := range v.anon {
		s.CallsRunning += c.limit.running.Load()
	}
	return s
}

// Peers returns the digests of the peers the vat is connected to, in
// ascending order, each once however many of its instances are connected
// (insecure peers dialled by this vat are left out).
func (v *Vat) Peers() []Digest {
	v.mu.Lock()
	var ds []Digest
	for k := range v.peers {
		if !k.digest.IsZero() {
			ds = append(ds, k.digest)
		}
	}
	v.mu.Unlock()
	slices.SortFunc(ds, Digest.Compare)
	return slices.Compact(ds)
}

// Connections returns the vat's current connections (to identified peers
// first, by digest, then anonymous ones).
func (v *Vat) Connections() []*Connection {
	v.mu.Lock()
	var named, anon []*Connection
	for _, c := range v.peers {
		named = append(named, c)
	}
	for c := range v.anon {
		anon = append(anon, c)
	}
	v.mu.Unlock()
	sort.Slice(named, func(i, j int) bool { return named[i].key.String() < named[j].key.String() })
	sort.Slice(anon, func(i, j int) bool { return anon[i].remote < anon[j].remote })
	return append(named, anon...)
}
