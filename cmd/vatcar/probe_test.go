package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
)

// This tests `vatcar inject probe`'s command line in-process; it is in every
// build. internal/probe tests the client itself;
// nok8s_test.go runs the sidecar image's binary against a real sidecar.

func TestInjectProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := runInject(context.Background(), []string{"probe", srv.URL + "/readyz"}, nil, &out, &out); err != nil {
		t.Fatalf("probe of a ready endpoint: %v", err)
	}
	err := runInject(context.Background(), []string{"probe", "--timeout=1s", srv.URL + "/healthz"}, nil, &out, &out)
	if !errors.Is(err, errProbe) || errors.Is(err, errUsage) {
		t.Fatalf("probe of a 503 = %v, want errProbe (exit 1)", err)
	}
	for _, args := range [][]string{{"probe"}, {"probe", srv.URL, srv.URL}, {"probe", "--wait=soon", srv.URL}} {
		if err := runInject(context.Background(), args, nil, &out, &out); !errors.Is(err, errUsage) {
			t.Errorf("vatcar inject %q: err = %v, want a usage error (exit 2)", args, err)
		}
	}
}
