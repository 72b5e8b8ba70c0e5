package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/vatcar/vatcar/vat"
)

// Reload applies the exports, imports, routes and revocation list of cfg (a
// re-read config file with the command line's flags on top), and reads the
// revocation list again: exports and imports that the
// previous configuration made and cfg no longer has are removed, new ones
// added, changed ones replaced; unchanged ones, and those added through the
// admin API, are not touched, so their connections and calls go on. Other
// settings need a restart; a change to them is logged and ignored. An
// invalid cfg changes nothing, and neither does one whose changes cannot
// all be made: every change is prepared (cap files read, URIs parsed, new
// listen addresses tried, export URIs made) before any is applied. What
// fails after that (a port taken meanwhile) is reported as applied in part.
func (s *Sidecar) Reload(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	newCfg := cfg.withDefaults()
	if restartOnly(s.cfg) != restartOnly(newCfg) {
		s.log.Warn("reload: only exports, imports, routes and the revocation list are reloaded; other changed settings need a restart")
	}
	var errs []error

	s.revs.setPath(newCfg.Revocations)
	s.readRevocations(true)

	s.mu.Lock()
	dropExports, addExports := changes(s.exports, cfg.Exports, func(ex *export) (Export, bool) { return ex.Export, ex.fromConfig })
	dropImports, addImports := changes(s.imports, cfg.Imports, func(im *imported) (Import, bool) { return im.Import, im.fromConfig })
	s.mu.Unlock()

	if err := s.prepareReload(addExports, dropImports, addImports); err != nil {
		s.log.Warn("reload refused: nothing changed", "err", err)
		return fmt.Errorf("reload refused, nothing changed: %w", err)
	}

	for _, e := range dropExports {
		if err := s.removeExport(e.Name); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	for _, e := range addExports {
		if _, err := s.addExport(e, true); err != nil {
			errs = append(errs, err)
		}
	}
	for _, im := range dropImports {
		if err := s.removeImport(im.Name); err != nil && !errors.Is(err, ErrNotFound) {
			errs = append(errs, err)
		}
	}
	// Routes change before new imports listen, so an import that a route
	// now names gets no own endpoint.
	s.mu.Lock()
	s.routes = routeMap(cfg.Routes)
	s.mu.Unlock()
	for _, im := range addImports {
		if _, err := s.addImport(im, true); err != nil {
			errs = append(errs, err)
		}
	}
	s.pruneCapDir()
	s.log.Info("reloaded",
		"exports_added", len(addExports), "exports_removed", len(dropExports),
		"imports_added", len(addImports), "imports_removed", len(dropImports))
	if len(errs) > 0 {
		return fmt.Errorf("reload applied in part: %w", errors.Join(errs...))
	}
	return nil
}

// prepareReload checks, before anything changes, that the exports and
// imports a reload adds can be made: each export's URI, the cap directory
// they are written to, each import's URI (its cap file read and parsed), and
// each new listen address (bound and closed again, unless an import the
// reload removes holds it). It reports every problem.
func (s *Sidecar) prepareReload(addExports []Export, dropImports, addImports []Import) error {
	var errs []error
	for _, e := range addExports {
		if _, err := s.vat.SturdyURI(s.vat.DeriveID(e.Name)); err != nil {
			errs = append(errs, fmt.Errorf("%w: export %q: %w", ErrConfig, e.Name, err))
		}
	}
	if len(addExports) > 0 && s.cfg.CapDir != "" {
		if err := checkWritableDir(s.cfg.CapDir); err != nil {
			errs = append(errs, fmt.Errorf("%w: --cap-dir %q: %w", ErrConfig, s.cfg.CapDir, err))
		}
	}
	freed := map[string]bool{}
	for _, im := range dropImports {
		if im.Listen != "" {
			freed[loopbackIfNoHost(im.Listen)] = true
		}
	}
	for _, im := range addImports {
		uri, err := vat.ReadURI(im.URI)
		if err != nil {
			errs = append(errs, fmt.Errorf("%w: import %q: unreadable cap file %q: %w", ErrConfig, im.Name, im.URI, err))
			continue
		}
		if _, err := s.vat.Import(uri); err != nil {
			errs = append(errs, fmt.Errorf("%w: import %q: %s: %w", ErrConfig, im.Name, describeURI(im.URI, uri, err), err))
		}
		if addr := loopbackIfNoHost(im.Listen); im.Listen != "" && !freed[addr] {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				errs = append(errs, fmt.Errorf("%w: import %q listen %q: %w", ErrConfig, im.Name, im.Listen, err))
				continue
			}
			ln.Close()
		}
	}
	return errors.Join(errs...)
}

// checkWritableDir reports whether a file can be made in dir.
func checkWritableDir(dir string) error {
	f, err := os.CreateTemp(dir, ".reload-check-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// named is an export or import as configured.
type named interface {
	comparable
	name() string
}

func (e Export) name() string  { return e.Name }
func (im Import) name() string { return im.Name }

// changes compares the entries a reload finds (have, by name; conf returns
// an entry's configuration and whether the config file made it) with those
// the new configuration wants. drop: entries of the config file that want
// no longer holds as they are; add: entries of want that are new or replace
// a changed one of the config file. Entries added through the admin API are
// neither dropped nor replaced.
func changes[T named, E any](have map[string]E, want []T, conf func(E) (T, bool)) (drop, add []T) {
	wanted := make(map[string]T, len(want))
	for _, w := range want {
		wanted[w.name()] = w
	}
	for name, e := range have {
		cur, fromConfig := conf(e)
		if w, ok := wanted[name]; fromConfig && (!ok || w != cur) {
			drop = append(drop, cur)
		}
	}
	for _, w := range want {
		e, ok := have[w.name()]
		if !ok {
			add = append(add, w)
			continue
		}
		if cur, fromConfig := conf(e); fromConfig && cur != w {
			add = append(add, w)
		}
	}
	return drop, add
}

// restartOnly returns c without the settings Reload applies, to compare.
func restartOnly(c Config) string {
	c.Exports, c.Imports, c.Routes, c.Revocations = nil, nil, nil, ""
	return fmt.Sprintf("%+v", c)
}

// Dump implements the admin API: the vat's state, then the exports and
// imports by name (no ids or URIs).
func (s *Sidecar) Dump(w io.Writer) error {
	if err := s.vat.Dump(w); err != nil {
		return err
	}
	exports := s.ListExports()
	imports := s.ListImports()
	fmt.Fprintf(w, "exports: %d\n", len(exports))
	for _, e := range exports {
		revoked := ""
		if e.Revoked {
			revoked = " (revoked)"
		}
		fmt.Fprintf(w, "  %s -> %s%s\n", e.Name, e.Target, revoked)
	}
	fmt.Fprintf(w, "imports: %d\n", len(imports))
	for _, im := range imports {
		fmt.Fprintf(w, "  %s on %s: %s\n", im.Name, orNone(im.Listen), im.State)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(routes only)"
	}
	return s
}
