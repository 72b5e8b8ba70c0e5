package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	adminv1 "github.com/vatcar/vatcar/proto/vatcar/admin/v1"
)

// testLogger logs to the test when -v is given.
func testLogger(t testing.TB) *slog.Logger {
	if _, bench := t.(*testing.B); bench || !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func startTestBackend(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, interop.NewTestServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

func startTestSidecar(t testing.TB, cfg Config) *Sidecar {
	t.Helper()
	if cfg.AdminListen == "" {
		cfg.AdminListen = "127.0.0.1:0"
	}
	s, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// testPair is an exporting and an importing sidecar in one process.
type testPair struct {
	exporter, importer *Sidecar
	capDir             string
	client             testgrpc.TestServiceClient
}

func startTestPair(t *testing.T) *testPair { return startBenchPair(t) }

func startBenchPair(t testing.TB) *testPair { return startBenchPairKinds(t, nil) }

// startBenchPairKinds starts a pair whose sidecars both read the
// descriptor sets protos (--proto-descriptors).
func startBenchPairKinds(t testing.TB, protos []string) *testPair {
	t.Helper()
	backend := startTestBackend(t)
	dir := t.TempDir()
	p := &testPair{capDir: dir}
	p.exporter = startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir,
		Exports:          []Export{{Name: "test", Target: backend}},
		ProtoDescriptors: protos,
	})
	p.importer = startTestSidecar(t, Config{
		Imports:          []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}},
		ProtoDescriptors: protos,
	})
	cc, err := grpc.NewClient(p.importer.Addresses().Imports["test"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	p.client = testgrpc.NewTestServiceClient(cc)
	return p
}

func TestSidecarPairCalls(t *testing.T) {
	p := startTestPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.client.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("EmptyCall: %v", err)
	}
	resp, err := p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseSize: 100, Payload: &testgrpc.Payload{Body: make([]byte, 10)}})
	if err != nil || len(resp.GetPayload().GetBody()) != 100 {
		t.Fatalf("UnaryCall = %d bytes, %v; want 100 bytes", len(resp.GetPayload().GetBody()), err)
	}
	_, err = p.client.UnaryCall(ctx, &testgrpc.SimpleRequest{ResponseStatus: &testgrpc.EchoStatus{Code: 5, Message: "gone"}})
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "gone" {
		t.Errorf("UnaryCall with status: %v, want NotFound gone", err)
	}
}

func TestSidecarAdminManagesExportsAndImports(t *testing.T) {
	p := startTestPair(t)
	backend := startTestBackend(t)
	admin := adminv1.NewAdminServiceClient(dialAdmin(t, p.exporter.Addresses().Admin))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	added, err := admin.AddExport(ctx, &adminv1.AddExportRequest{Name: "second", Target: backend})
	if err != nil {
		t.Fatalf("AddExport: %v", err)
	}
	uri := added.GetExport().GetUri()
	if want, _ := p.exporter.vat.SturdyURI(p.exporter.vat.DeriveID("second")); uri != want {
		t.Errorf("AddExport URI = %s, want the derived %s", uri, want)
	}
	if b, err := os.ReadFile(filepath.Join(p.capDir, "second.cap")); err != nil || string(b) != uri+"\n" {
		t.Errorf("second.cap = %q, %v; want the URI and a newline", b, err)
	}
	list, err := admin.ListExports(ctx, &adminv1.ListExportsRequest{})
	if err != nil || len(list.GetExports()) != 2 {
		t.Fatalf("ListExports = %v, %v; want 2 exports", list, err)
	}

	// Import it through the importer's admin API and call it.
	impAdmin := adminv1.NewAdminServiceClient(dialAdmin(t, p.importer.Addresses().Admin))
	imp, err := impAdmin.AddImport(ctx, &adminv1.AddImportRequest{Name: "second", Uri: uri})
	if err != nil {
		t.Fatalf("AddImport: %v", err)
	}
	cc, err := grpc.NewClient(imp.GetImport().GetListen(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	second := testgrpc.NewTestServiceClient(cc)
	if _, err := second.EmptyCall(ctx, &testgrpc.Empty{}); err != nil {
		t.Fatalf("call on admin-added import: %v", err)
	}

	// Revoke: the live capability breaks, the URI stops working.
	if _, err := admin.Revoke(ctx, &adminv1.RevokeRequest{Name: "second"}); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	_, err = second.EmptyCall(ctx, &testgrpc.Empty{})
	if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "revoked") {
		t.Fatalf("call on a revoked live capability: %v, want NotFound naming the revocation", err)
	}
	// The import dropped its capability, so the next call restores again
	// and the exporter no longer knows the id.
	_, err = second.EmptyCall(ctx, &testgrpc.Empty{})
	if got := status.Code(err); got != codes.NotFound {
		t.Errorf("call after revoke: %v, want NotFound", err)
	}
	if _, err := os.Stat(filepath.Join(p.capDir, "second.cap")); !os.IsNotExist(err) {
		t.Errorf("cap file of a revoked export still exists: %v", err)
	}
	if _, err := admin.RemoveExport(ctx, &adminv1.RemoveExportRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("RemoveExport(nope): %v, want NotFound", err)
	}
	if _, err := impAdmin.RemoveImport(ctx, &adminv1.RemoveImportRequest{Name: "second"}); err != nil {
		t.Errorf("RemoveImport: %v", err)
	}
	dump, err := admin.Dump(ctx, &adminv1.DumpRequest{})
	if err != nil || !strings.Contains(dump.GetText(), "second -> "+backend+" (revoked)") {
		t.Errorf("Dump = %q, %v; want the revoked export listed", dump.GetText(), err)
	}
	if strings.Contains(dump.GetText(), uri) {
		t.Error("Dump shows a sturdy URI")
	}
}

func TestSidecarReloadKeepsUnchanged(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	cfg := Config{
		Listen: "tcp:127.0.0.1:0", SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir,
		Exports: []Export{{Name: "keep", Target: backend}, {Name: "old", Target: backend}},
	}
	s := startTestSidecar(t, cfg)
	keepBefore := s.exports["keep"]
	cfg.Exports = []Export{{Name: "keep", Target: backend}, {Name: "new", Target: backend}}
	if err := s.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	var names []string
	for _, e := range s.ListExports() {
		names = append(names, e.Name)
	}
	if got := strings.Join(names, ","); got != "keep,new" {
		t.Errorf("exports after reload = %s, want keep,new", got)
	}
	s.mu.Lock()
	same := s.exports["keep"] == keepBefore
	s.mu.Unlock()
	if !same {
		t.Error("reload replaced the unchanged export keep")
	}
	if _, err := os.Stat(filepath.Join(dir, "old.cap")); !os.IsNotExist(err) {
		t.Errorf("old.cap after reload: %v, want it gone", err)
	}
	bad := cfg
	bad.Exports = append(bad.Exports, Export{Name: "-x", Target: backend})
	if err := s.Reload(bad); !errors.Is(err, ErrConfig) {
		t.Errorf("Reload(invalid) = %v, want ErrConfig", err)
	}
	if got := len(s.ListExports()); got != 2 {
		t.Errorf("an invalid reload changed the exports: %d, want 2", got)
	}
}

func TestImportFailsFastAndRecovers(t *testing.T) {
	backend := startTestBackend(t)
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "tcp:" + ln.Addr().String()
	ln.Close()
	expCfg := Config{
		Listen: addr, SecretKeyFile: filepath.Join(dir, "k.pem"), CapDir: dir, AdminListen: AdminListenOff, HealthListen: AdminListenOff,
		Exports: []Export{{Name: "test", Target: backend}},
	}
	exporter, err := New(expCfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := exporter.Start(); err != nil {
		t.Fatal(err)
	}
	importer := startTestSidecar(t, Config{Imports: []Import{{Name: "test", URI: "@" + filepath.Join(dir, "test.cap")}}})
	cc, err := grpc.NewClient(importer.Addresses().Imports["test"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := testgrpc.NewTestServiceClient(cc)
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.EmptyCall(ctx, &testgrpc.Empty{})
		return err
	}
	if err := call(); err != nil {
		t.Fatalf("first call: %v", err)
	}
	exporter.Close()
	// Wait until the importer has seen the connection end (a call racing
	// that would fail too, through the dead capability).
	deadline := time.Now().Add(10 * time.Second)
	for importer.ListImports()[0].State == stateConnected {
		if time.Now().After(deadline) {
			t.Fatal("importer did not notice the exporter going away")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	for i := range 5 {
		err := call()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("call %d with the exporter gone: %v, want UNAVAILABLE", i, err)
		}
	}
	exporter2, err := New(expCfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := exporter2.Start(); err != nil {
		t.Fatal(err)
	}
	defer exporter2.Close()
	deadline = time.Now().Add(10 * time.Second)
	for call() != nil {
		if time.Now().After(deadline) {
			t.Fatal("import did not recover after the exporter came back")
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	if got := importer.ListImports()[0].State; got != stateConnected {
		t.Errorf("import state = %s, want connected", got)
	}
}

func TestSidecarReloadImports(t *testing.T) {
	p := startTestPair(t)
	capFile := "@" + filepath.Join(p.capDir, "test.cap")
	cfg := Config{Imports: []Import{{Name: "keep", URI: capFile}, {Name: "old", URI: capFile}}}
	s := startTestSidecar(t, cfg)
	keepAddr := s.Addresses().Imports["keep"]
	cc, err := grpc.NewClient(keepAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := testgrpc.NewTestServiceClient(cc).FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func() error {
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{ResponseParameters: []*testgrpc.ResponseParameters{{Size: 3}}}); err != nil {
			return err
		}
		_, err := stream.Recv()
		return err
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}

	cfg.Imports = []Import{{Name: "keep", URI: capFile}, {Name: "new", URI: capFile}}
	if err := s.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if err := roundTrip(); err != nil {
		t.Errorf("stream on the unchanged import broke on reload: %v", err)
	}
	got := s.Addresses().Imports
	if got["keep"] != keepAddr || got["new"] == "" || got["old"] != "" {
		t.Errorf("imports after reload = %v, want keep on %s, new, and no old", got, keepAddr)
	}
	stream.CloseSend()
	if _, err := stream.Recv(); err == nil {
		t.Error("stream did not end after CloseSend")
	}
}

func TestServiceOf(t *testing.T) {
	for in, want := range map[string]string{
		"/grpc.testing.TestService/EmptyCall": "grpc.testing.TestService",
		"/Svc/M":                              "Svc",
		"nomethod":                            "nomethod",
	} {
		if got := serviceOf(in); got != want {
			t.Errorf("serviceOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStartCreatesMissingCapDir(t *testing.T) {
	backend := startTestBackend(t)
	dir := filepath.Join(t.TempDir(), "not", "yet")
	startTestSidecar(t, Config{
		Listen: "tcp:127.0.0.1:0", CapDir: dir,
		Exports: []Export{{Name: "test", Target: backend}},
	})
	fi, err := os.Stat(filepath.Join(dir, "test.cap"))
	if err != nil {
		t.Fatalf("cap file in a created cap dir: %v", err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("cap file mode = %v, want 0600", got)
	}
}
