package main_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/vatcar/vatcar/k8s"
	"github.com/vatcar/vatcar/vat"
)

// keygenSecret runs `vatcar keygen args...` in an empty directory and
// returns its stdout, stderr and exit status, failing the test if it wrote
// any file.
func keygenSecret(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(binary, append([]string{"keygen"}, args...)...)
	cmd.Dir = dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if files, _ := os.ReadDir(dir); len(files) > 0 {
		t.Errorf("keygen %q wrote %d files in its directory, want none", args, len(files))
	}
	return out.String(), errOut.String(), code
}

// TestKeygenK8sSecret: `vatcar keygen --k8s-secret NAME -n NS` prints a
// Secret that decodes strictly as a core/v1 Secret, holding under the key
// the injector mounts a vat key whose digest is what stderr says; nothing is
// written to disk, and two runs make two keys.
func TestKeygenK8sSecret(t *testing.T) {
	for _, args := range [][]string{
		{"--k8s-secret", "greeter-vatcar-key", "-n", "shop"},
		{"--k8s-secret", "greeter-vatcar-key", "--namespace", "shop"},
		{"--k8s-secret", "greeter-vatcar-key"},
	} {
		stdout, stderr, code := keygenSecret(t, args...)
		if code != 0 {
			t.Fatalf("keygen %q: exit %d: %s", args, code, stderr)
		}
		var sec corev1.Secret
		if err := yaml.UnmarshalStrict([]byte(stdout), &sec); err != nil {
			t.Fatalf("keygen %q: output is not a strict Secret: %v\n%s", args, err, stdout)
		}
		wantNS := ""
		if len(args) == 4 {
			wantNS = "shop"
		}
		if sec.APIVersion != "v1" || sec.Kind != "Secret" || sec.Name != "greeter-vatcar-key" || sec.Namespace != wantNS ||
			sec.Type != corev1.SecretTypeOpaque || len(sec.Data) != 1 || len(sec.StringData) != 0 {
			t.Errorf("keygen %q: got %s %s %s/%s type %s with %d data keys, want v1 Secret %s/greeter-vatcar-key, Opaque, one key",
				args, sec.APIVersion, sec.Kind, sec.Namespace, sec.Name, sec.Type, len(sec.Data), wantNS)
		}
		pem, ok := sec.Data[k8s.KeySecretKey]
		if !ok {
			t.Fatalf("keygen %q: no data key %q (the one the injector mounts): %v", args, k8s.KeySecretKey, stdout)
		}
		key, err := vat.ParseKey(pem)
		if err != nil {
			t.Fatalf("keygen %q: %s is not a vat key: %v", args, k8s.KeySecretKey, err)
		}
		if got := strings.TrimSpace(stderr); got != key.Digest().String() {
			t.Errorf("keygen %q: stderr %q, want the key's digest %s", args, got, key.Digest())
		}
		if strings.Contains(stderr, "PRIVATE KEY") || strings.Contains(stdout, key.Digest().String()) {
			t.Errorf("keygen %q: key on stderr or digest on stdout", args)
		}
	}
	a, _, _ := keygenSecret(t, "--k8s-secret", "a")
	b, _, _ := keygenSecret(t, "--k8s-secret", "a")
	if a == b {
		t.Error("two runs printed the same key")
	}
}

// TestKeygenK8sSecretUsage: bad names and mixed modes are usage errors (exit
// 2) that print no manifest.
func TestKeygenK8sSecretUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--k8s-secret", "Greeter_Key"},
		{"--k8s-secret", "ok", "-n", "Shop"},
		{"--k8s-secret", "ok", "-n", "a.b"},
		{"-n", "shop"},
		{"--k8s-secret", "ok", "--secret-key-file", "vat.pem"},
		{"--k8s-secret", "ok", "vat.pem"},
	} {
		stdout, stderr, code := keygenSecret(t, args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, "keygen") {
			t.Errorf("keygen %q: exit %d, stdout %q, stderr %q; want exit 2, nothing on stdout, an error naming keygen", args, code, stdout, stderr)
		}
	}
}
