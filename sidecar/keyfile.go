package sidecar

import (
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
)

// warnKeyFileMode logs a warning when the key file at path can be read by
// its group or by others: anyone who reads the key can impersonate the vat.
// The key is used anyway (as ssh-agent does not, but as most servers do), so
// that a shared volume with loose modes does not stop a running system; the
// warning says how to fix it. Files in a Kubernetes Secret volume are not
// warned about: there the mode is the volume's defaultMode (the injector
// uses 0444, since the sidecar does not run as the files' owner, root) and
// only the containers that mount the volume see the file. A missing file
// (the vat creates it, mode 0600) is not warned about either.
func warnKeyFileMode(log *slog.Logger, path string) {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o077 == 0 || inSecretVolume(path) {
		return
	}
	log.Warn("the vat key file is readable by its group or others; anyone who reads it can act as this vat: chmod 600 it",
		"path", path, "mode", fmtMode(fi.Mode().Perm()))
}

// inSecretVolume reports whether path is in a Kubernetes Secret, ConfigMap
// or projected volume: the kubelet's atomic writer keeps the files' data in
// a "..data" symlink beside them.
func inSecretVolume(path string) bool {
	fi, err := os.Lstat(filepath.Join(filepath.Dir(path), "..data"))
	return err == nil && fi.Mode()&fs.ModeSymlink != 0
}

// fmtMode formats permission bits as octal ("0644").
func fmtMode(m fs.FileMode) string {
	const digits = "01234567"
	return string([]byte{'0', digits[m>>6&7], digits[m>>3&7], digits[m&7]})
}
