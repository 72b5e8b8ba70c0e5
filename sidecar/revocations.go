package sidecar

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vatcar/vatcar/vat"
)

// The revocation list (--revocations FILE, revlist.go for its format) names
// refs that no replica sharing the file may serve. The sidecar reads it
// before it exports anything, then again whenever the file changes (polled
// every revocationPollInterval: a Kubernetes ConfigMap volume swaps a
// symlink, which the resolved path shows) and on SIGHUP. A read parses the
// whole file first and then adds its ids at once. Revocations are sticky:
// an id once read stays revoked until the process restarts, so a file
// caught half-written, truncated or deleted never brings a ref back.
//
// Locking: revocations.readMu serialises the reads and appends of the file
// and guards file. revokedSet has its own lock, a leaf: it may be taken
// under Sidecar.mu, never the other way round.

// revocationPollInterval is how often the list file is checked for a
// change: well within the 5 s a change must take to apply.
const revocationPollInterval = time.Second

// revokedSet holds the revocation ids in force. It is safe for concurrent
// use.
type revokedSet struct {
	mu  sync.Mutex
	ids map[vat.RevocationID]struct{} // guarded by mu
}

// has reports whether r is revoked.
func (s *revokedSet) has(r vat.RevocationID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[r]
	return ok
}

// add revokes ids and returns those that were not revoked yet, and how many
// are revoked now.
func (s *revokedSet) add(ids []vat.RevocationID) (added []vat.RevocationID, total int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids == nil {
		s.ids = map[vat.RevocationID]struct{}{}
	}
	for _, r := range ids {
		if _, ok := s.ids[r]; !ok {
			s.ids[r] = struct{}{}
			added = append(added, r)
		}
	}
	return added, len(s.ids)
}

// listFile is what the sidecar knows of the list file, to tell a change.
type listFile struct {
	path     string
	stamp    fileStamp
	sum      [sha256.Size]byte // of the content last parsed
	read     bool              // sum is set
	missing  bool              // the last look found no file (warned)
	failure  string            // the last read error (logged)
	reported map[[sha256.Size]byte]bool
}

// fileStamp tells a changed file from an unchanged one without reading it:
// a ConfigMap update changes the resolved path, a rewrite the size or the
// modification time.
type fileStamp struct {
	resolved string
	size     int64
	modTime  time.Time
}

// revocations is a sidecar's revocation list: the ids in force and the
// file they come from.
type revocations struct {
	log     *slog.Logger
	metrics revocationMetrics
	set     revokedSet

	readMu sync.Mutex
	file   listFile // guarded by readMu
}

func newRevocations(path string, reg prometheus.Registerer, log *slog.Logger) *revocations {
	return &revocations{log: orDiscard(log), metrics: newRevocationMetrics(reg), file: listFile{path: path}}
}

// revocationMetrics count what the list reads find. No label holds an id.
type revocationMetrics struct {
	entries prometheus.Gauge       // entries in the file as last read
	invalid prometheus.Gauge       // lines of it that are not entries
	inForce prometheus.Gauge       // revocation ids in force
	reads   *prometheus.CounterVec // result: ok, missing, error
}

func newRevocationMetrics(reg prometheus.Registerer) revocationMetrics {
	m := revocationMetrics{
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vatcar_revocation_list_entries",
			Help: "Entries (sturdy URIs and revocation ids) in the --revocations file as last read.",
		}),
		invalid: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vatcar_revocation_list_invalid_lines",
			Help: "Lines of the --revocations file as last read that are not entries (ignored; each is logged once).",
		}),
		inForce: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vatcar_revocations",
			Help: "Revocation ids in force: every id read from the list since the sidecar started.",
		}),
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "vatcar_revocation_list_reads_total",
			Help: "Reads of a new or changed --revocations file, by result (ok; missing: no file, no revocations added; error: unreadable, nothing changed).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.entries, m.invalid, m.inForce, m.reads)
	return m
}

// setPath makes path the list file (a config reload may change it).
func (r *revocations) setPath(path string) {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	if path != r.file.path {
		r.file = listFile{path: path}
	}
}

// read reads the list file if it changed since the last read, or in any case
// with force, and returns the revocation ids it adds. Problems are logged
// and counted, never returned: the revocations in force stay.
func (r *revocations) read(force bool) []vat.RevocationID {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	f := &r.file
	if f.path == "" {
		return nil
	}
	st, err := stampOf(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		if !f.missing {
			f.missing, f.stamp = true, fileStamp{}
			r.metrics.reads.WithLabelValues("missing").Inc()
			r.log.Warn("revocation list file missing: no revocations read from it (those read before stay in force)", "path", f.path)
		}
		return nil
	}
	f.missing = false
	if err == nil && !force && f.read && st == f.stamp {
		return nil
	}
	var data []byte
	if err == nil {
		data, err = readLimited(f.path, maxRevocationListSize)
	}
	if err != nil {
		if msg := err.Error(); msg != f.failure || force {
			f.failure = msg
			r.metrics.reads.WithLabelValues("error").Inc()
			r.log.Error("revocation list unreadable: the revocations in force stay", "path", f.path, "err", err)
		}
		return nil
	}
	f.failure = ""
	f.stamp = st
	sum := sha256.Sum256(data)
	if f.read && sum == f.sum && !force {
		return nil // touched, not changed
	}
	f.sum, f.read = sum, true
	list := ParseRevocationList(data)
	reported := make(map[[sha256.Size]byte]bool, len(list.Invalid))
	for _, l := range list.Invalid {
		k := l.key()
		reported[k] = true
		if f.reported[k] {
			continue // logged for an earlier version of the file
		}
		r.log.Warn("revocation list: ignoring a line that is not an entry", "path", f.path, "line", l.Line, "reason", l.Reason)
		r.log.Debug("revocation list: the ignored line", "path", f.path, "line", l.Line, "text", l.text)
	}
	f.reported = reported
	added, total := r.set.add(list.IDs)
	r.metrics.reads.WithLabelValues("ok").Inc()
	r.metrics.entries.Set(float64(len(list.IDs)))
	r.metrics.invalid.Set(float64(len(list.Invalid)))
	r.metrics.inForce.Set(float64(total))
	r.log.Info("revocation list read", "path", f.path, "entries", len(list.IDs), "new", len(added), "invalid_lines", len(list.Invalid), "in_force", total)
	return added
}

// add revokes ids without the list (ctl revoke of a ref), keeping
// vatcar_revocations true.
func (r *revocations) add(ids ...vat.RevocationID) {
	_, total := r.set.add(ids)
	r.metrics.inForce.Set(float64(total))
}

// stampOf stats path, following symlinks.
func stampOf(path string) (fileStamp, error) {
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fileStamp{}, err
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{resolved: resolved, size: fi.Size(), modTime: fi.ModTime()}, nil
}

// readLimited reads a regular file of at most limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return data, nil
}

// appendEntry appends line (an entry and its comment, ending in a newline)
// to the list file in one write with O_APPEND, after a newline if the file
// does not end with one; a missing file is created (mode 0600). It returns
// the file's path; an error when no list is configured or the file cannot
// be written.
func (r *revocations) appendEntry(line string) (string, error) {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	path := r.file.path
	if path == "" {
		return "", errors.New("no revocation list is configured (--revocations)")
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%s is not a regular file", path)
	}
	if n := fi.Size(); n > 0 {
		var last [1]byte
		if _, err := f.ReadAt(last[:], n-1); err != nil {
			return "", err
		}
		if last[0] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := f.WriteString(line); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	return path, f.Close()
}

// IsRevoked reports whether the revocation list revokes r.
func (s *Sidecar) IsRevoked(r vat.RevocationID) bool { return s.revs.set.has(r) }

// RereadRevocations reads the revocation list file now, changed or not (the
// SIGHUP path), and applies what it adds.
func (s *Sidecar) RereadRevocations() { s.readRevocations(true) }

// readRevocations reads the list (if changed, or with force) and revokes the
// exports its new ids name.
func (s *Sidecar) readRevocations(force bool) {
	if added := s.revs.read(force); len(added) > 0 {
		s.applyRevocations()
		// Narrowed refs: their live capabilities break too (new restores
		// are refused by the table's policy).
		for _, r := range added {
			if n := s.table.RevokeRef(r); n > 0 {
				s.log.Info("narrowed ref revoked by the revocation list", "revocation_id", r.String(), "capabilities", n)
			}
		}
	}
}

// pollRevocations rereads the list whenever it changes, until the sidecar
// stops serving.
func (s *Sidecar) pollRevocations() {
	t := time.NewTicker(revocationPollInterval)
	defer t.Stop()
	for {
		select {
		case <-s.serveCtx.Done():
			return
		case <-t.C:
			s.readRevocations(false)
		}
	}
}

// applyRevocations revokes every export the list revokes that is not
// revoked yet.
func (s *Sidecar) applyRevocations() {
	s.mu.Lock()
	var hit []*export
	for _, ex := range s.exports {
		if !ex.revoked && s.revs.set.has(ex.revID) {
			ex.revoked = true
			hit = append(hit, ex)
		}
	}
	s.mu.Unlock()
	for _, ex := range hit {
		s.cutExport(ex)
		s.log.Info("export revoked by the revocation list", "name", ex.Name, "revocation_id", ex.revID.String())
	}
}
