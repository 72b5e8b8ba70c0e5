package k8s

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vatcar/vatcar/sidecar"
	corev1 "k8s.io/api/core/v1"
)

// FuzzParseImports checks the imports annotation parser never panics and
// only returns entries it validated.
func FuzzParseImports(f *testing.F) {
	f.Add("g=secret:caps/g.cap,port=9001")
	f.Add("g=capnp://insecure@h:1/AA,port=1;h=secret:a/b,port=2")
	f.Fuzz(func(t *testing.T, s string) {
		ims, err := parseImports(s)
		if err != nil {
			if !errors.Is(err, ErrBadAnnotation) {
				t.Fatalf("error %v is not ErrBadAnnotation", err)
			}
			return
		}
		for _, im := range ims {
			if err := sidecar.CheckName(im.Name); err != nil {
				t.Fatalf("parseImports(%q) accepted name %q that vatcar run rejects: %v", s, im.Name, err)
			}
			if !nameRE.MatchString(im.Name) || im.Port < 1 || im.Port > 65535 || (im.URI == "") == (im.Secret == "") {
				t.Fatalf("parseImports(%q) returned an invalid import %+v", s, im)
			}
		}
	})
}

// FuzzParseExports checks the exports annotation parser.
func FuzzParseExports(f *testing.F) {
	f.Add("a=1,b=grpc")
	spec := &corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 5}}}}}
	f.Fuzz(func(t *testing.T, s string) {
		exs, err := parseExports(s, spec)
		if err != nil && !errors.Is(err, ErrBadAnnotation) {
			t.Fatalf("error %v is not ErrBadAnnotation", err)
		}
		for _, ex := range exs {
			if err := sidecar.CheckName(ex.Name); err != nil {
				t.Fatalf("parseExports(%q) accepted name %q that vatcar run rejects: %v", s, ex.Name, err)
			}
			if ex.Port < 1 || !nameRE.MatchString(ex.Name) {
				t.Fatalf("invalid export %+v", ex)
			}
		}
	})
}

// FuzzInjectManifests feeds arbitrary YAML to `vatcar inject -f`: it must
// not panic, and whatever it outputs must be a fixed point (idempotency).
func FuzzInjectManifests(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/inject/in/*.yaml")
	for _, in := range inputs {
		if b, err := os.ReadFile(in); err == nil {
			f.Add(b)
		}
	}
	inj, err := NewInjector(Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		if _, err := InjectManifests(inj, bytes.NewReader(in), &out); err != nil {
			return
		}
		var again bytes.Buffer
		if _, err := InjectManifests(inj, bytes.NewReader(out.Bytes()), &again); err != nil {
			t.Fatalf("re-injecting the output failed: %v\n%s", err, out.Bytes())
		}
		if !bytes.Equal(out.Bytes(), again.Bytes()) {
			t.Fatalf("not idempotent\n--- once\n%s\n--- twice\n%s", out.Bytes(), again.Bytes())
		}
	})
}

// FuzzCheck feeds arbitrary YAML to `vatcar check`: it must not panic, an
// error is ErrBadManifest, and every finding names its object and says
// something.
func FuzzCheck(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/check/in/*.yaml")
	for _, in := range inputs {
		if b, err := os.ReadFile(in); err == nil {
			f.Add(b)
		}
	}
	inj, err := NewInjector(Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		findings, err := inj.Check(bytes.NewReader(in), CheckConfig{})
		if err != nil {
			if !errors.Is(err, ErrBadManifest) {
				t.Fatalf("error %v is not ErrBadManifest", err)
			}
			return
		}
		for _, f := range findings {
			if f.Object == "" || f.Message == "" || (f.Severity != SeverityError && f.Severity != SeverityWarning) {
				t.Fatalf("finding %+v lacks an object, a message or a severity", f)
			}
		}
	})
}
