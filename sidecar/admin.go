package sidecar

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	adminv1 "github.com/vatcar/vatcar/proto/vatcar/admin/v1"
	"github.com/vatcar/vatcar/vat"
)

// ExportStatus describes one export for the admin API.
type ExportStatus struct {
	Name    string
	Target  string
	URI     string // the sturdy ref: a bearer secret
	Revoked bool
}

// ImportStatus describes one import for the admin API.
type ImportStatus struct {
	Name   string
	URI    string
	Listen string // the bound local endpoint; empty when reached via GRPCListen only
	State  string // "idle", "connecting", "connected" or "unavailable"
}

// adminBackend is what the admin API manages; *Sidecar implements it.
type adminBackend interface {
	ListExports() []ExportStatus
	AddExport(ctx context.Context, e Export) (ExportStatus, error)
	RemoveExport(name string) error
	ListImports() []ImportStatus
	AddImport(ctx context.Context, im Import) (ImportStatus, error)
	RemoveImport(name string) error
	Revoke(name string) (RevokeResult, error)
	RevokeRef(r vat.RevocationID) (RevokeResult, error)
	Narrow(name string, b vat.Block) (uri string, r vat.RevocationID, err error)
	Dump(w io.Writer) error
}

// newAdminGRPCServer makes the admin gRPC server: the AdminService with
// protoc-gen-validate checks on every request, and server reflection.
func newAdminGRPCServer(b adminBackend) *grpc.Server {
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(validateUnary))
	adminv1.RegisterAdminServiceServer(srv, &adminServer{b: b})
	reflection.Register(srv)
	return srv
}

// validator is implemented by every generated request message.
type validator interface{ ValidateAll() error }

// validateUnary rejects a request that breaks its protoc-gen-validate rules
// with INVALID_ARGUMENT listing each violation, in the message and as
// google.rpc.BadRequest details.
func validateUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if v, ok := req.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, invalidArgument(err)
		}
	}
	return handler(ctx, req)
}

// fieldViolation is the shape of every PGV validation error.
type fieldViolation interface {
	Field() string
	Reason() string
}

func invalidArgument(err error) error {
	var all []error
	if m, ok := err.(interface{ AllErrors() []error }); ok {
		all = m.AllErrors()
	} else {
		all = []error{err}
	}
	br := &errdetails.BadRequest{}
	for _, e := range all {
		if field, rule := humanViolation(e); field != "" {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
				Field: field, Description: rule,
			})
		}
	}
	st := status.New(codes.InvalidArgument, violationMessage(all))
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

// adminError maps a backend error to a gRPC status.
func adminError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, ErrConfig):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ErrDraining):
		return status.Error(codes.Unavailable, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// adminServer implements adminv1.AdminServiceServer over an adminBackend.
type adminServer struct {
	adminv1.UnimplementedAdminServiceServer
	b adminBackend
}

func exportProto(e ExportStatus) *adminv1.Export {
	return &adminv1.Export{Name: e.Name, Target: e.Target, Uri: e.URI, Revoked: e.Revoked}
}

func importProto(i ImportStatus) *adminv1.Import {
	return &adminv1.Import{Name: i.Name, Uri: i.URI, Listen: i.Listen, State: i.State}
}

func (a *adminServer) ListExports(context.Context, *adminv1.ListExportsRequest) (*adminv1.ListExportsResponse, error) {
	resp := &adminv1.ListExportsResponse{}
	for _, e := range a.b.ListExports() {
		resp.Exports = append(resp.Exports, exportProto(e))
	}
	return resp, nil
}

func (a *adminServer) AddExport(ctx context.Context, req *adminv1.AddExportRequest) (*adminv1.AddExportResponse, error) {
	e, err := a.b.AddExport(ctx, Export{Name: req.GetName(), Target: req.GetTarget()})
	if err != nil {
		return nil, adminError(err)
	}
	return &adminv1.AddExportResponse{Export: exportProto(e)}, nil
}

func (a *adminServer) RemoveExport(_ context.Context, req *adminv1.RemoveExportRequest) (*adminv1.RemoveExportResponse, error) {
	if err := a.b.RemoveExport(req.GetName()); err != nil {
		return nil, adminError(err)
	}
	return &adminv1.RemoveExportResponse{}, nil
}

func (a *adminServer) ListImports(context.Context, *adminv1.ListImportsRequest) (*adminv1.ListImportsResponse, error) {
	resp := &adminv1.ListImportsResponse{}
	for _, i := range a.b.ListImports() {
		resp.Imports = append(resp.Imports, importProto(i))
	}
	return resp, nil
}

func (a *adminServer) AddImport(ctx context.Context, req *adminv1.AddImportRequest) (*adminv1.AddImportResponse, error) {
	i, err := a.b.AddImport(ctx, Import{Name: req.GetName(), URI: req.GetUri(), Listen: req.GetListen()})
	if err != nil {
		return nil, adminError(err)
	}
	return &adminv1.AddImportResponse{Import: importProto(i)}, nil
}

func (a *adminServer) RemoveImport(_ context.Context, req *adminv1.RemoveImportRequest) (*adminv1.RemoveImportResponse, error) {
	if err := a.b.RemoveImport(req.GetName()); err != nil {
		return nil, adminError(err)
	}
	return &adminv1.RemoveImportResponse{}, nil
}

func (a *adminServer) Revoke(_ context.Context, req *adminv1.RevokeRequest) (*adminv1.RevokeResponse, error) {
	res, err := a.b.Revoke(req.GetName())
	if err != nil {
		return nil, adminError(err)
	}
	return &adminv1.RevokeResponse{RevocationId: res.RevocationID.String(), RevocationList: res.List, LocalReason: res.LocalReason}, nil
}

func (a *adminServer) RevokeRef(_ context.Context, req *adminv1.RevokeRefRequest) (*adminv1.RevokeResponse, error) {
	r, err := vat.ParseRevocationID(req.GetRevocationId())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	res, err := a.b.RevokeRef(r)
	if err != nil {
		return nil, adminError(err)
	}
	return &adminv1.RevokeResponse{RevocationId: res.RevocationID.String(), RevocationList: res.List, LocalReason: res.LocalReason}, nil
}

func (a *adminServer) Narrow(_ context.Context, req *adminv1.NarrowRequest) (*adminv1.NarrowResponse, error) {
	b := vat.Block{Methods: req.GetMethods()}
	if s := req.GetExpiresInSeconds(); s > 0 {
		b.NotAfter = time.Now().Add(time.Duration(s) * time.Second)
	}
	for _, p := range req.GetPeers() {
		d, err := vat.ParseDigest(p)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		b.Peers = append(b.Peers, d)
	}
	uri, r, err := a.b.Narrow(req.GetName(), b)
	if err != nil {
		return nil, adminError(err)
	}
	return &adminv1.NarrowResponse{Uri: uri, RevocationId: r.String()}, nil
}

func (a *adminServer) Dump(context.Context, *adminv1.DumpRequest) (*adminv1.DumpResponse, error) {
	var sb strings.Builder
	if err := a.b.Dump(&sb); err != nil {
		return nil, adminError(err)
	}
	return &adminv1.DumpResponse{Text: sb.String()}, nil
}

// snakeCase turns a generated Go field name ("MaxLen") into its proto field
// name ("max_len") for google.rpc.BadRequest.
func snakeCase(s string) string {
	var b strings.Builder
	for i, r := range s {
		if 'A' <= r && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
