package sidecar

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/internal/pingack"
	"github.com/vatcar/vatcar/internal/rawconn"
	"github.com/vatcar/vatcar/vat"
)

// export is one local gRPC server served as a sturdy ref.
type export struct {
	Export
	id         vat.ServiceID
	revID      vat.RevocationID // id's, for the revocation list
	uri        string
	cc         *grpc.ClientConn
	calls      revocable          // the cc's calls end with cut
	cut        context.CancelFunc // ends the calls in flight (revocation)
	revoked    bool               // by Revoke or the revocation list; guarded by Sidecar.mu
	fromConfig bool               // managed by the config file: a reload may remove it
}

// addExport serves e: a gRPC client to its target, bridged by an egress
// capability added to the restorer table under the id derived from the key
// and e.Name. With a cap dir, the cap file is written (the vat listens by
// then: Start exports after listening).
func (s *Sidecar) addExport(e Export, fromConfig bool) (*export, error) {
	s.exportOps.Lock()
	defer s.exportOps.Unlock()
	if err := CheckName(e.Name); err != nil {
		return nil, fmt.Errorf("%w: bad export NAME %q: %w", ErrConfig, e.Name, err)
	}
	if err := CheckTarget(e.Target); err != nil {
		return nil, fmt.Errorf("%w: bad export TARGET %q: %w", ErrConfig, e.Target, err)
	}
	id := s.vat.DeriveID(e.Name)
	uri, err := s.vat.SturdyURI(id)
	if err != nil {
		return nil, fmt.Errorf("%w: export %q: %w", ErrConfig, e.Name, err)
	}
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		return nil, fmt.Errorf("export %q: %w", e.Name, ErrDraining)
	}
	if _, ok := s.exports[e.Name]; ok {
		s.mu.Unlock()
		return nil, fmt.Errorf("export %q: %w", e.Name, ErrExists)
	}
	ex := &export{Export: e, id: id, revID: id.RevocationID(), uri: uri, fromConfig: fromConfig}
	var cut context.Context
	cut, ex.cut = context.WithCancel(context.Background())
	ex.calls = revocable{cut: cut}
	s.exports[e.Name] = ex // reserve the name
	s.mu.Unlock()

	cc, err := grpc.NewClient(grpcTarget(e.Target), append(backendDialOptions(),
		grpc.WithContextDialer(backendDialer(e.Target)), grpc.WithNoProxy(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStreamInterceptor(s.backendStream(ex.calls)),
	)...)
	if err != nil {
		ex.cut()
		s.mu.Lock()
		delete(s.exports, e.Name)
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: export %q target %q: %w", ErrConfig, e.Name, e.Target, err)
	}
	lim := s.cfg.egressLimits()
	lim.onOverloaded = s.metrics.overloaded()
	lim.onMessage = s.metrics.egress.onMessage
	egress, err := newEgress(cut, cc, s.kinds, lim, s.caller, s.log)
	if err != nil {
		cc.Close()
		ex.cut()
		s.mu.Lock()
		delete(s.exports, e.Name)
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: export %q: %w", ErrConfig, e.Name, err)
	}
	s.mu.Lock()
	ex.cc = cc
	listed := s.revs.set.has(ex.revID)
	if listed {
		ex.revoked = true
	}
	s.mu.Unlock()
	s.metrics.exports.Inc()
	if listed {
		// Revoked by the list: listed, never served, no cap file.
		egress.Release()
		ex.cut()
		s.log.Info("exported, revoked by the revocation list", "name", e.Name, "target", e.Target, "vat", s.vat.Digest().String(), "revocation_id", ex.revID.String())
		return ex, nil
	}
	if s.testHookListChecked != nil {
		s.testHookListChecked()
	}
	s.table.Add(id, egress)
	if s.cfg.CapDir != "" {
		if err := vat.SaveCapFile(filepath.Join(s.cfg.CapDir, e.Name+".cap"), uri); err != nil {
			s.removeExportLocked(e.Name)
			return nil, fmt.Errorf("export %q: %w", e.Name, err)
		}
	}
	// A list read (or a Revoke) since the check above may have marked the
	// export revoked while it was not in the table yet, so it could not
	// take it out: check again now that it is in.
	s.mu.Lock()
	revoked := ex.revoked || s.revs.set.has(ex.revID)
	ex.revoked = revoked
	s.mu.Unlock()
	if revoked {
		s.cutExport(ex)
		s.log.Info("exported, revoked at once", "name", e.Name, "target", e.Target, "vat", s.vat.Digest().String(), "revocation_id", ex.revID.String())
		return ex, nil
	}
	s.log.Info("exported", "name", e.Name, "target", e.Target, "vat", s.vat.Digest().String(), "id", id.String(), "revocation_id", ex.revID.String())
	s.log.Debug("export URI", "name", e.Name, "uri", uri)
	return ex, nil
}

// grpcTarget turns an export target into a grpc.NewClient target: host:port
// goes through the passthrough resolver (no DNS lookups of IP literals),
// unix:/path is kept.
func grpcTarget(t string) string {
	if strings.HasPrefix(t, "unix:") {
		return t
	}
	return "passthrough:///" + t
}

// backendDialer dials an export's backend, TCP or (target unix:PATH) a Unix
// socket, with raw reads and writes (internal/rawconn). With a dialer of its
// own, grpc-go uses no HTTP proxy from the environment for the backend (and
// the client says so with WithNoProxy): a backend is the pod's own server.
func backendDialer(target string) func(context.Context, string) (net.Conn, error) {
	network := "tcp"
	if strings.HasPrefix(target, "unix:") {
		network = "unix"
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		if network == "unix" {
			// With a custom dialer grpc-go passes a Unix target back as it
			// was: unix://ABSOLUTE-PATH or unix:RELATIVE-PATH.
			if rest, ok := strings.CutPrefix(addr, "unix://"); ok {
				addr = rest
			} else {
				addr = strings.TrimPrefix(addr, "unix:")
			}
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return pingack.New(rawconn.Wrap(c), pingack.Delay), nil
	}
}

// backendStream returns the stream interceptor of an export's client
// (the egress makes every backend call as a stream, so there is no unary
// twin). It fails new calls once the drain began (calls already running go
// on) or the export was cut off (calls: revoked); it counts the calls it
// lets through in the egress metrics and in s.egressInflight until grpc-go
// reports their end (grpc.OnFinish); and it reports the revocation instead
// of the cancellation it causes. A backendCall holds all of that for a
// call. One interceptor, not a chain of three: grpc-go's chaining costs a
// closure per link and call.
// (The message sizes of every call made with the bridge's options already
// bound its calls, so the client has no default call options: grpc-go
// would copy them into every call's options.)
func (s *Sidecar) backendStream(calls revocable) grpc.StreamClientInterceptor {
	egress := s.metrics.egress
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		// Counted before the drain flag is read: a drain that set the
		// flag and then sees no call in flight knows none gets through.
		s.egressInflight.Add(1)
		if s.isDraining() {
			s.egressInflight.Add(-1)
			return nil, status.Error(codes.Unavailable, "vatcar sidecar is shutting down")
		}
		if calls.cut.Err() != nil {
			s.egressInflight.Add(-1)
			return nil, errRevokedCall()
		}
		c := &backendCall{r: calls, ms: egress.series(method), inflight: &s.egressInflight}
		c.start = c.ms.begin()
		// The egress's options are shared by its calls (and clipped):
		// they are copied into the call, with the finish option after them.
		all := append(append(c.opts[:0], opts...), grpc.OnFinish(c.finish))
		cs, err := streamer(ctx, desc, cc, method, all...)
		if err != nil {
			return nil, calls.cutOff(err)
		}
		c.ClientStream = cs
		return c, nil
	}
}

func (s *Sidecar) isDraining() bool { return s.drainFlag.Load() }

// removeExport stops serving name: its id leaves the table (live
// capabilities break), its client closes and its cap file goes.
func (s *Sidecar) removeExport(name string) error {
	s.exportOps.Lock()
	defer s.exportOps.Unlock()
	return s.removeExportLocked(name)
}

// removeExportLocked is removeExport; the caller holds exportOps.
func (s *Sidecar) removeExportLocked(name string) error {
	s.mu.Lock()
	ex, ok := s.exports[name]
	delete(s.exports, name)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("export %q: %w", name, ErrNotFound)
	}
	ex.close(s.table)
	if s.cfg.CapDir != "" {
		os.Remove(filepath.Join(s.cfg.CapDir, name+".cap"))
	}
	s.metrics.exports.Dec()
	s.log.Info("export removed", "name", name)
	return nil
}

func (e *export) close(t *vat.Table) {
	t.Remove(e.id)
	e.cut()
	if e.cc != nil {
		e.cc.Close()
	}
}

// ListExports implements the admin API.
func (s *Sidecar) ListExports() []ExportStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ExportStatus, 0, len(s.exports))
	for _, e := range s.exports {
		out = append(out, ExportStatus{Name: e.Name, Target: e.Target, URI: e.uri, Revoked: e.revoked})
	}
	slices.SortFunc(out, func(a, b ExportStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// AddExport implements the admin API: the export lives until removed or
// the sidecar stops (a config reload leaves it alone).
func (s *Sidecar) AddExport(_ context.Context, e Export) (ExportStatus, error) {
	ex, err := s.addExport(e, false)
	if err != nil {
		return ExportStatus{}, err
	}
	return ExportStatus{Name: ex.Name, Target: ex.Target, URI: ex.uri}, nil
}

// RemoveExport implements the admin API.
func (s *Sidecar) RemoveExport(name string) error { return s.removeExport(name) }

// RevokeResult says what Revoke did.
type RevokeResult struct {
	// RevocationID is the export's revocation id: the entry that revokes it
	// in a revocation list.
	RevocationID vat.RevocationID
	// List is the revocation list file the entry was appended to. Empty:
	// the revocation is local to this sidecar (and lasts until the export is
	// added again or the sidecar restarts) until the entry is added to the
	// list every replica reads; LocalReason says why it was not appended.
	List        string
	LocalReason string
}

// Revoke implements the admin API: the export's id leaves the restorer, so
// its URI stops working, live capabilities break and calls in flight are
// cut off; its cap file goes. The export stays listed as revoked. When the
// sidecar has a revocation list file it can write (--revocations), the
// export's revocation id is appended to it, with a comment naming the
// export and the time, so the revocation reaches every replica reading the
// file and outlives restarts. Otherwise it is local: the id is derived from
// the key and the name, so removing and adding the export again (or
// restarting) brings the same URI back.
func (s *Sidecar) Revoke(name string) (RevokeResult, error) {
	s.mu.Lock()
	ex, ok := s.exports[name]
	if ok {
		ex.revoked = true
	}
	s.mu.Unlock()
	if !ok {
		return RevokeResult{}, fmt.Errorf("export %q: %w", name, ErrNotFound)
	}
	s.cutExport(ex)
	s.log.Info("export revoked", "name", name, "id", ex.id.String(), "revocation_id", ex.revID.String())
	res := RevokeResult{RevocationID: ex.revID}
	entry := fmt.Sprintf("%s # export %s, %s\n", ex.revID, name, time.Now().UTC().Format(time.RFC3339))
	path, err := s.revs.appendEntry(entry)
	if err != nil {
		res.LocalReason = err.Error()
		s.log.Warn("revocation is local to this sidecar: not added to the revocation list", "name", name, "revocation_id", ex.revID.String(), "err", err)
		return res, nil
	}
	res.List = path
	s.log.Info("revocation added to the revocation list", "name", name, "revocation_id", ex.revID.String(), "path", path)
	s.readRevocations(false)
	return res, nil
}

// RevokeRef revokes the ref named by r, a revocation id (of a narrowed ref
// or a root one), as a revocation list entry does: at once on this sidecar,
// and on every replica once appended to a writable list.
func (s *Sidecar) RevokeRef(r vat.RevocationID) (RevokeResult, error) {
	s.revs.add(r)
	s.applyRevocations()
	n := s.table.RevokeRef(r)
	s.log.Info("ref revoked", "revocation_id", r.String(), "capabilities", n)
	res := RevokeResult{RevocationID: r}
	path, err := s.revs.appendEntry(fmt.Sprintf("%s # revoked by ctl, %s\n", r, time.Now().UTC().Format(time.RFC3339)))
	if err != nil {
		res.LocalReason = err.Error()
		s.log.Warn("revocation is local to this sidecar: not added to the revocation list", "revocation_id", r.String(), "err", err)
		return res, nil
	}
	res.List = path
	s.readRevocations(false)
	return res, nil
}

// Narrow mints a narrowed ref of export name with the caveats of b.
func (s *Sidecar) Narrow(name string, b vat.Block) (string, vat.RevocationID, error) {
	s.mu.Lock()
	ex, ok := s.exports[name]
	s.mu.Unlock()
	if !ok {
		return "", "", fmt.Errorf("export %q: %w", name, ErrNotFound)
	}
	loc, _, err := vat.ParseURI(ex.uri)
	if err != nil {
		return "", "", err
	}
	seg, err := vat.Narrow(ex.id, b)
	if err != nil {
		return "", "", fmt.Errorf("%w: %w", ErrConfig, err)
	}
	uri := vat.FormatURI(loc, seg)
	r, err := vat.URIRevocationID(uri)
	if err != nil {
		return "", "", err
	}
	s.log.Info("narrowed ref minted", "name", name, "revocation_id", r.String())
	return uri, r, nil
}

// cutExport takes a revoked export out of service: its id leaves the
// restorer (live capabilities break), its calls in flight end, its cap file
// goes.
func (s *Sidecar) cutExport(ex *export) {
	s.table.Remove(ex.id)
	ex.cut()
	if s.cfg.CapDir != "" {
		os.Remove(filepath.Join(s.cfg.CapDir, ex.Name+".cap"))
	}
}
