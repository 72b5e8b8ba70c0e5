package sidecar

import (
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vatcar/vatcar/vat"
)

// maxCapFile bounds what pruneCapDir reads of a file: a cap file is one
// URI.
const maxCapFile = 4 << 10

// pruneCapDir removes from --cap-dir the cap files of exports this sidecar
// no longer serves (removed from the config since the last run, or revoked
// by the revocation list), so that nobody publishes a dead ref from it. It
// removes only files this vat wrote: NAME.cap with NAME an export name, a
// regular file holding one sturdy URI of this vat (its key digest; for an
// insecure vat, its public address). Anything else in the directory is left
// alone. Start runs it after exporting, Reload after applying a change.
func (s *Sidecar) pruneCapDir() {
	dir := s.cfg.CapDir
	if dir == "" {
		return
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("cannot list the cap dir to remove stale cap files", "cap_dir", dir, "err", err)
		return
	}
	s.mu.Lock()
	served := make(map[string]bool, len(s.exports))
	for name, ex := range s.exports {
		served[name] = !ex.revoked
	}
	s.mu.Unlock()
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".cap")
		if !ok || served[name] || !e.Type().IsRegular() || CheckName(name) != nil {
			continue
		}
		path := filepath.Join(dir, e.Name())
		if !s.ownCapFile(path) {
			continue
		}
		if err := os.Remove(path); err != nil {
			s.log.Warn("cannot remove a stale cap file", "path", path, "err", err)
			continue
		}
		s.log.Info("removed the cap file of an export no longer served", "path", path)
	}
}

// ownCapFile reports whether path holds a sturdy URI of this vat.
func (s *Sidecar) ownCapFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxCapFile+1))
	if err != nil || len(data) > maxCapFile {
		return false
	}
	loc, _, err := vat.ParseURI(strings.TrimSpace(string(data)))
	if err != nil {
		return false
	}
	if !s.cfg.Insecure {
		return loc.Digest == s.vat.Digest()
	}
	pub, ok := s.vat.PublicAddress()
	return ok && loc.Digest.IsZero() && loc.Address.String() == pub.String()
}
