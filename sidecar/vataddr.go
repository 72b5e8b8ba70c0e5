package sidecar

import (
	"errors"
	"strings"
)

// checkVatAddress checks a CapTP address: tcp:HOST:PORT, tcp:[V6]:PORT or
// unix:PATH.
func checkVatAddress(s string) error {
	switch {
	case strings.HasPrefix(s, "tcp:"):
		return CheckHostPort(strings.TrimPrefix(s, "tcp:"))
	case strings.HasPrefix(s, "unix:"):
		if len(s) == len("unix:") {
			return errors.New("empty unix socket path")
		}
		return nil
	}
	return errors.New("want tcp:HOST:PORT, tcp:[V6]:PORT or unix:PATH")
}

// checkImportURI checks an import's URI: a capnp:// sturdy ref or @FILE.
func checkImportURI(s string) error {
	if path, ok := strings.CutPrefix(s, "@"); ok {
		if path == "" {
			return errors.New("empty cap file path after @")
		}
		return nil
	}
	if !strings.HasPrefix(s, "capnp://") {
		return errors.New("want a capnp:// URI or @FILE")
	}
	return nil
}
