package adminv1_test

import (
	"errors"
	"strings"
	"testing"

	adminv1 "github.com/vatcar/vatcar/proto/vatcar/admin/v1"
)

// validator is what protoc-gen-validate generates for every message.
type validator interface {
	ValidateAll() error
}

// multiError is what ValidateAll returns: one error per violated rule.
type multiError interface {
	AllErrors() []error
}

func TestValidateRejectsEachBadField(t *testing.T) {
	tests := []struct {
		name string
		req  validator
		want []string // fields named by the violations, in order, each once
	}{
		{"export empty name and target", &adminv1.AddExportRequest{}, []string{"Name", "Target"}},
		{"export name with slash", &adminv1.AddExportRequest{Name: "a/b", Target: "localhost:50051"}, []string{"Name"}},
		{"export name too long", &adminv1.AddExportRequest{Name: strings.Repeat("a", 64), Target: "localhost:50051"}, []string{"Name"}},
		{"export name leading dot", &adminv1.AddExportRequest{Name: ".hidden", Target: "localhost:50051"}, []string{"Name"}},
		{"export target without port", &adminv1.AddExportRequest{Name: "echo", Target: "localhost"}, []string{"Target"}},
		{"export target relative unix", &adminv1.AddExportRequest{Name: "echo", Target: "unix:sock"}, []string{"Target"}},
		{"import not capnp", &adminv1.AddImportRequest{Name: "echo", Uri: "http://x@y:1/z"}, []string{"Uri"}},
		{"import bad listen", &adminv1.AddImportRequest{Name: "echo", Uri: "capnp://insecure@h:1/x", Listen: "nowhere"}, []string{"Listen"}},
		{"import everything bad", &adminv1.AddImportRequest{Name: "", Uri: "", Listen: "a b:1"}, []string{"Name", "Uri", "Listen"}},
		{"remove export empty", &adminv1.RemoveExportRequest{}, []string{"Name"}},
		{"remove import bad", &adminv1.RemoveImportRequest{Name: "x y"}, []string{"Name"}},
		{"revoke empty", &adminv1.RevokeRequest{}, []string{"Name"}},
		{"revoke ref not an id", &adminv1.RevokeRefRequest{RevocationId: "capnp://x"}, []string{"RevocationId"}},
		{"narrow bad method", &adminv1.NarrowRequest{Name: "echo", Methods: []string{"/pkg.S/M", "pkg.S/M"}}, []string{"Methods[1]"}},
		{"narrow partial wildcard", &adminv1.NarrowRequest{Name: "echo", Methods: []string{"/pkg.S/M*"}}, []string{"Methods[0]"}},
		{"narrow negative expiry", &adminv1.NarrowRequest{Name: "echo", ExpiresInSeconds: -1}, []string{"ExpiresInSeconds"}},
		{"narrow bad peer", &adminv1.NarrowRequest{Name: "echo", Peers: []string{"sha-256:short"}}, []string{"Peers[0]"}},
		{"narrow everything bad", &adminv1.NarrowRequest{Name: "a b", Methods: []string{"*"}, ExpiresInSeconds: 1 << 40, Peers: []string{"x"}}, []string{"Name", "Methods[0]", "ExpiresInSeconds", "Peers[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.req.ValidateAll()
			if err == nil {
				t.Fatalf("ValidateAll() = nil, want violations of %v", tt.want)
			}
			var multi multiError
			if !errors.As(err, &multi) {
				t.Fatalf("ValidateAll() = %T, want a multi-error", err)
			}
			var got []string
			for _, e := range multi.AllErrors() {
				f, ok := e.(interface{ Field() string })
				if !ok {
					t.Fatalf("violation %v has no Field()", e)
				}
				if len(got) == 0 || got[len(got)-1] != f.Field() {
					got = append(got, f.Field()) // one field may break several rules
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("violated fields = %v, want %v (error: %v)", got, tt.want, err)
			}
		})
	}
}

func TestValidateAcceptsGoodRequests(t *testing.T) {
	good := []validator{
		&adminv1.AddExportRequest{Name: "echo", Target: "127.0.0.1:50051"},
		&adminv1.AddExportRequest{Name: "grpc.health-v1_a", Target: "[::1]:50051"},
		&adminv1.AddExportRequest{Name: "echo", Target: "unix:/run/app.sock"},
		&adminv1.AddImportRequest{Name: "echo", Uri: "capnp://sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s@localhost:7000/bWFpbg"},
		&adminv1.AddImportRequest{Name: "echo", Uri: "capnp://insecure@localhost:7000/bWFpbg", Listen: "127.0.0.1:9000"},
		&adminv1.AddImportRequest{Name: "echo", Uri: "capnp://insecure@localhost:7000/bWFpbg", Listen: ":9000"},
		&adminv1.RemoveExportRequest{Name: "echo"},
		&adminv1.RevokeRequest{Name: "echo"},
		&adminv1.RevokeRefRequest{RevocationId: "rev1:B015wnUJAxb-Wys32ywjHA"},
		&adminv1.NarrowRequest{Name: "echo"},
		&adminv1.NarrowRequest{Name: "echo", Methods: []string{"/helloworld.Greeter/SayHello", "/pkg.Admin/*"}, ExpiresInSeconds: 3600,
			Peers: []string{"sha-256:s16WV4JeGusAL_nTjvICiQOFqm3LqYrDj3K-HXdMi8s"}},
		&adminv1.DumpRequest{},
	}
	for _, req := range good {
		if err := req.ValidateAll(); err != nil {
			t.Errorf("%T%+v: ValidateAll() = %v, want nil", req, req, err)
		}
	}
}
