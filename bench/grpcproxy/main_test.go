package main

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/vatcar/vatcar/sidecar"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestRuntimeDefaultsAreVatcars checks that the proxy runs with `vatcar run`'s
// runtime defaults, which it copies rather than link the sidecar package.
func TestRuntimeDefaultsAreVatcars(t *testing.T) {
	if defaultCPUs != sidecar.DefaultCPUs || defaultGCPercent != sidecar.DefaultGCPercent || defaultMemoryLimit != sidecar.DefaultMemoryLimit {
		t.Errorf("grpcproxy runs with GOMAXPROCS %d, GOGC %d, GOMEMLIMIT %d; vatcar run with %d, %d, %d",
			defaultCPUs, defaultGCPercent, defaultMemoryLimit, sidecar.DefaultCPUs, sidecar.DefaultGCPercent, sidecar.DefaultMemoryLimit)
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		ok   bool
	}{
		{"h2c", []string{"--listen", "a:1", "--target", "b:2"}, true},
		{"tls", []string{"--listen", "a:1", "--target", "b:2", "--tls-cert", "c", "--tls-key", "k", "--target-tls"}, true},
		{"pprof", []string{"--listen", "a:1", "--target", "b:2", "--admin-listen", "c:3", "--pprof"}, true},
		{"no target", []string{"--listen", "a:1"}, false},
		{"cert without key", []string{"--listen", "a:1", "--target", "b:2", "--tls-cert", "c"}, false},
		{"pprof without admin", []string{"--listen", "a:1", "--target", "b:2", "--pprof"}, false},
		{"zero max", []string{"--listen", "a:1", "--target", "b:2", "--max-message-size", "0"}, false},
		{"argument", []string{"--listen", "a:1", "--target", "b:2", "x"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseFlags(tc.args); (err == nil) != tc.ok {
				t.Errorf("parseFlags(%q): got %v, want ok=%v", tc.args, err, tc.ok)
			}
		})
	}
}
