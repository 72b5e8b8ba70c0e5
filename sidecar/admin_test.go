package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	adminv1 "github.com/vatcar/vatcar/proto/vatcar/admin/v1"
	"github.com/vatcar/vatcar/vat"
)

// memBackend is an adminBackend over two maps: it lets the admin API's
// adapter (validation, status mapping, reflection, HTTP routing) be tested
// apart from the vat.
type memBackend struct {
	mu      sync.Mutex
	exports map[string]ExportStatus
}

func (m *memBackend) ListExports() []ExportStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ExportStatus
	for _, e := range m.exports {
		out = append(out, e)
	}
	return out
}

func (m *memBackend) AddExport(_ context.Context, e Export) (ExportStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.exports[e.Name]; ok {
		return ExportStatus{}, fmt.Errorf("export %q: %w", e.Name, ErrExists)
	}
	s := ExportStatus{Name: e.Name, Target: e.Target, URI: "capnp://insecure@h:1/" + e.Name}
	m.exports[e.Name] = s
	return s, nil
}

func (m *memBackend) RemoveExport(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.exports[name]; !ok {
		return fmt.Errorf("export %q: %w", name, ErrNotFound)
	}
	delete(m.exports, name)
	return nil
}

func (m *memBackend) ListImports() []ImportStatus { return nil }

func (m *memBackend) AddImport(context.Context, Import) (ImportStatus, error) {
	return ImportStatus{}, fmt.Errorf("%w: no imports here", ErrConfig)
}

func (m *memBackend) RemoveImport(name string) error {
	return fmt.Errorf("import %q: %w", name, ErrNotFound)
}

func (m *memBackend) Revoke(name string) (RevokeResult, error) {
	return RevokeResult{}, m.RemoveExport(name)
}

func (m *memBackend) RevokeRef(r vat.RevocationID) (RevokeResult, error) {
	return RevokeResult{RevocationID: r, LocalReason: "test"}, nil
}

func (m *memBackend) Narrow(name string, b vat.Block) (string, vat.RevocationID, error) {
	return "", "", fmt.Errorf("export %q: %w", name, ErrNotFound)
}

func (m *memBackend) Dump(w io.Writer) error {
	_, err := io.WriteString(w, "vat: test\n")
	return err
}

// startTestAdmin serves the admin API and the health endpoints over b on one
// loopback port (--admin-listen HOST:PORT without --health-listen).
func startTestAdmin(t *testing.T, b adminBackend, ready func() bool) string {
	t.Helper()
	m := NewMetrics()
	g := newAdminGRPCServer(b)
	a, err := startHTTP("127.0.0.1:0", g, adminHandler(g, healthMux(m.Registry, ready)), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.close(context.Background()) })
	return a.addr
}

func dialAdmin(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestAdminValidation(t *testing.T) {
	addr := startTestAdmin(t, &memBackend{exports: map[string]ExportStatus{}}, func() bool { return true })
	client := adminv1.NewAdminServiceClient(dialAdmin(t, addr))
	ctx := context.Background()

	tests := []struct {
		name       string
		call       func() error
		wantFields []string
	}{
		{"bad export name and target", func() error {
			_, err := client.AddExport(ctx, &adminv1.AddExportRequest{Name: "-x", Target: "nope"})
			return err
		}, []string{"name", "target"}},
		{"bad import uri and listen", func() error {
			_, err := client.AddImport(ctx, &adminv1.AddImportRequest{Name: "b", Uri: "http://x", Listen: "x"})
			return err
		}, []string{"uri", "listen"}},
		{"empty remove", func() error {
			_, err := client.RemoveExport(ctx, &adminv1.RemoveExportRequest{})
			return err
		}, []string{"name", "name"}},
		{"long revoke name", func() error {
			_, err := client.Revoke(ctx, &adminv1.RevokeRequest{Name: strings.Repeat("a", 64)})
			return err
		}, []string{"name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("code = %v (%v), want InvalidArgument", st.Code(), err)
			}
			var got []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, fv := range br.GetFieldViolations() {
						got = append(got, fv.GetField())
					}
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.wantFields, ",") {
				t.Errorf("violations on fields %v, want %v (message %q)", got, tt.wantFields, st.Message())
			}
			for _, f := range tt.wantFields {
				if !strings.Contains(st.Message(), f+": want ") {
					t.Errorf("message %q does not name field %s with what it wants", st.Message(), f)
				}
			}
			// Words, not regular expressions (issue 15).
			if strings.ContainsAny(st.Message(), "^$[]\\") || strings.Contains(st.Message(), "regex") {
				t.Errorf("message %q quotes a pattern", st.Message())
			}
		})
	}
}

func TestAdminStatusMapping(t *testing.T) {
	addr := startTestAdmin(t, &memBackend{exports: map[string]ExportStatus{}}, func() bool { return true })
	client := adminv1.NewAdminServiceClient(dialAdmin(t, addr))
	ctx := context.Background()

	resp, err := client.AddExport(ctx, &adminv1.AddExportRequest{Name: "echo", Target: "127.0.0.1:1"})
	if err != nil {
		t.Fatalf("AddExport: %v", err)
	}
	if got := resp.GetExport().GetName(); got != "echo" {
		t.Errorf("AddExport name = %q, want echo", got)
	}
	_, err = client.AddExport(ctx, &adminv1.AddExportRequest{Name: "echo", Target: "127.0.0.1:1"})
	if got := status.Code(err); got != codes.AlreadyExists {
		t.Errorf("second AddExport code = %v, want AlreadyExists", got)
	}
	_, err = client.RemoveImport(ctx, &adminv1.RemoveImportRequest{Name: "none"})
	if got := status.Code(err); got != codes.NotFound {
		t.Errorf("RemoveImport(none) code = %v, want NotFound", got)
	}
	_, err = client.AddImport(ctx, &adminv1.AddImportRequest{Name: "b", Uri: testURI})
	if got := status.Code(err); got != codes.InvalidArgument {
		t.Errorf("AddImport with backend config error: code = %v, want InvalidArgument", got)
	}
	dump, err := client.Dump(ctx, &adminv1.DumpRequest{})
	if err != nil || dump.GetText() != "vat: test\n" {
		t.Errorf("Dump = %q, %v; want %q", dump.GetText(), err, "vat: test\n")
	}
}

func TestAdminReflection(t *testing.T) {
	addr := startTestAdmin(t, &memBackend{}, func() bool { return true })
	stream, err := reflectionpb.NewServerReflectionClient(dialAdmin(t, addr)).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "vatcar.admin.v1.AdminService") {
		t.Errorf("reflection lists %v, want vatcar.admin.v1.AdminService among them", names)
	}
}

func TestAdminHTTP(t *testing.T) {
	var mu sync.Mutex
	ready := false
	addr := startTestAdmin(t, &memBackend{}, func() bool { mu.Lock(); defer mu.Unlock(); return ready })
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz before ready = %d, want 503", code)
	}
	mu.Lock()
	ready = true
	mu.Unlock()
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, "vatcar_ready") || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d, missing vatcar_ready or go_goroutines:\n%.500s", code, body)
	}
	// A gRPC service the admin server does not have answers UNIMPLEMENTED:
	// gRPC requests reach the gRPC server, not the HTTP mux.
	_, err := healthpb.NewHealthClient(dialAdmin(t, addr)).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if got := status.Code(err); got != codes.Unimplemented {
		t.Errorf("health Check on admin port: code = %v, want Unimplemented", got)
	}
}

func TestLoopbackIfNoHost(t *testing.T) {
	for in, want := range map[string]string{
		":9000":          "127.0.0.1:9000",
		"0.0.0.0:9000":   "0.0.0.0:9000",
		"[::1]:9000":     "[::1]:9000",
		"localhost:9000": "localhost:9000",
	} {
		if got := loopbackIfNoHost(in); got != want {
			t.Errorf("loopbackIfNoHost(%q) = %q, want %q", in, got, want)
		}
	}
}
