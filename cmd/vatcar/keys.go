package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/vatcar/vatcar/sidecar"
	"github.com/vatcar/vatcar/vat"
)

// runKeygen is `vatcar keygen`: it creates a key file (mode 0600) and prints
// the vat's digest. It refuses to overwrite an existing file. With
// --k8s-secret it prints a Secret manifest holding the key instead
// (keygensecret.go).
func runKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	set := flag.NewFlagSet("vatcar keygen", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprint(stderr, "usage: vatcar keygen --secret-key-file PATH      create a key file, print its digest\n"+
			"       vatcar keygen --k8s-secret NAME [-n NS]    print a Secret manifest holding a new key, its digest on stderr\n")
		set.PrintDefaults()
	}
	keyFile := set.String("secret-key-file", "", "create the PEM key at `PATH`")
	var sec secretFlags
	sec.add(set)
	if err := set.Parse(args); err != nil {
		return usageErr(err)
	}
	if sec.name != "" || sec.namespace != "" {
		if *keyFile != "" || set.NArg() > 0 {
			return fmt.Errorf("%w: keygen: --k8s-secret takes no --secret-key-file or PATH: the key is never written to disk", errUsage)
		}
		return keygenSecret(sec, stdout, stderr)
	}
	if *keyFile == "" && set.NArg() == 1 {
		*keyFile = set.Arg(0)
	} else if set.NArg() > 0 {
		return fmt.Errorf("%w: keygen: unexpected argument %q", errUsage, set.Arg(0))
	}
	if *keyFile == "" {
		return fmt.Errorf("%w: keygen: --secret-key-file (or --k8s-secret) is required", errUsage)
	}
	if _, err := os.Stat(*keyFile); !errors.Is(err, fs.ErrNotExist) {
		if err == nil {
			return fmt.Errorf("keygen: %s already exists", *keyFile)
		}
		return fmt.Errorf("keygen: %w", err)
	}
	key, err := vat.LoadOrCreateKey(*keyFile)
	if err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	_, err = fmt.Fprintln(stdout, key.Digest())
	return err
}

// runURI is `vatcar uri`: it prints the sturdy URI that `vatcar run` with the
// same key and public address serves for export NAME, or with
// --revocation-id that export's revocation id (or that of a URI given in
// place of NAME).
func runURI(_ context.Context, args []string, stdout, stderr io.Writer) error {
	set := flag.NewFlagSet("vatcar uri", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprintln(stderr, "usage: vatcar uri --secret-key-file PATH --public-address ADDR [--insecure] NAME\n"+
			"       vatcar uri --revocation-id --secret-key-file PATH NAME\n"+
			"       vatcar uri --revocation-id URI|@FILE")
		set.PrintDefaults()
	}
	keyFile := set.String("secret-key-file", "", "the vat's PEM key `PATH` (must exist)")
	public := set.String("public-address", "", "the vat's public `ADDR`: tcp:HOST:PORT, tcp:[V6]:PORT or unix:PATH")
	insecure := set.Bool("insecure", false, "print a capnp://insecure@... URI")
	revocationID := set.Bool("revocation-id", false, "print the ref's revocation id (not secret; an entry for --revocations) instead of its URI")
	if err := set.Parse(args); err != nil {
		return usageErr(err) // -h, --help: the usage, exit 0
	}
	if set.NArg() != 1 {
		set.Usage()
		return fmt.Errorf("%w: uri: want one NAME", errUsage)
	}
	name := set.Arg(0)
	if *revocationID && (strings.HasPrefix(name, "@") || strings.Contains(name, "://")) {
		uri, err := vat.ReadURI(name)
		if err != nil {
			return fmt.Errorf("%w: uri: %w", errUsage, err)
		}
		r, err := vat.URIRevocationID(uri)
		if err != nil {
			return fmt.Errorf("%w: uri: %w", errUsage, err)
		}
		_, err = fmt.Fprintln(stdout, r)
		return err
	}
	if err := sidecar.CheckName(name); err != nil {
		return fmt.Errorf("%w: uri: bad NAME %q: %w", errUsage, name, err)
	}
	var addr vat.Address
	if !*revocationID || *public != "" {
		var err error
		if addr, err = vat.ParseAddress(*public); err != nil {
			return fmt.Errorf("%w: uri: bad --public-address %q: %w", errUsage, *public, err)
		}
	}
	if *keyFile == "" {
		return fmt.Errorf("%w: uri: --secret-key-file is required", errUsage)
	}
	pem, err := os.ReadFile(*keyFile)
	if err != nil {
		return fmt.Errorf("%w: uri: unreadable key %q: %w", errUsage, *keyFile, err)
	}
	key, err := vat.ParseKey(pem)
	if err != nil {
		return fmt.Errorf("%w: uri: bad key %q: %w", errUsage, *keyFile, err)
	}
	if *revocationID {
		_, err = fmt.Fprintln(stdout, key.DeriveID(name).RevocationID())
		return err
	}
	loc := vat.Locator{Address: addr}
	if !*insecure {
		loc.Digest = key.Digest()
	}
	_, err = fmt.Fprintln(stdout, vat.FormatURI(loc, key.DeriveID(name)))
	return err
}
