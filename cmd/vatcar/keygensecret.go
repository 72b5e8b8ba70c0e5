package main

import (
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"github.com/vatcar/vatcar/vat"
)

// keySecretKey is the key of a vat key Secret that holds the PEM key: the
// injector mounts that key (k8s.KeySecretKey; a test keeps them equal, as
// this file is in the sidecar image's build, which links no k8s package).
const keySecretKey = "key.pem"

var (
	// secretNameRE is a Kubernetes object name (DNS subdomain).
	secretNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	// namespaceRE is a Kubernetes namespace name (DNS label).
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// secretFlags are keygen's --k8s-secret and --namespace (-n).
type secretFlags struct {
	name, namespace string
}

func (f *secretFlags) add(set *flag.FlagSet) {
	set.StringVar(&f.name, "k8s-secret", "", "print a Kubernetes Secret `NAME` holding a new key (under "+keySecretKey+") on stdout, its digest on stderr; no file is written")
	set.StringVar(&f.namespace, "namespace", "", "the Secret's `NAMESPACE` (with --k8s-secret; default: none, kubectl's current one)")
	set.StringVar(&f.namespace, "n", "", "short for --namespace")
}

// keygenSecret is `vatcar keygen --k8s-secret NAME [-n NS]`: a new key,
// straight into a Secret manifest on stdout, so that
// `vatcar keygen --k8s-secret greeter-vatcar-key -n shop | kubectl apply -f -`
// gives a workload its key without the key touching the disk. The digest
// (not a secret) goes to stderr, for the user to note.
func keygenSecret(f secretFlags, stdout, stderr io.Writer) error {
	if f.name == "" {
		return fmt.Errorf("%w: keygen: --namespace needs --k8s-secret NAME", errUsage)
	}
	if !secretNameRE.MatchString(f.name) {
		return fmt.Errorf("%w: keygen: --k8s-secret %q is not a Secret name (lower-case letters, digits, '-', '.'; at most 253)", errUsage, f.name)
	}
	if f.namespace != "" && !namespaceRE.MatchString(f.namespace) {
		return fmt.Errorf("%w: keygen: --namespace %q is not a namespace name (lower-case letters, digits, '-'; at most 63)", errUsage, f.namespace)
	}
	key, err := vat.GenerateKey()
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	if _, err := io.WriteString(stdout, secretManifest(f, key)); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	_, err = fmt.Fprintf(stderr, "%s\n", key.Digest())
	return err
}

// secretManifest is the YAML of the Secret holding key. Names are checked
// by the caller, so they need no quoting beyond strconv.Quote's.
func secretManifest(f secretFlags, key *vat.Key) string {
	m := "apiVersion: v1\nkind: Secret\nmetadata:\n  name: " + strconv.Quote(f.name) + "\n"
	if f.namespace != "" {
		m += "  namespace: " + strconv.Quote(f.namespace) + "\n"
	}
	m += "  labels:\n    app.kubernetes.io/component: vatcar-key\n"
	m += "type: Opaque\ndata:\n  " + keySecretKey + ": " + base64.StdEncoding.EncodeToString(key.PEM()) + "\n"
	return m
}
