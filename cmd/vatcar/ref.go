package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vatcar/vatcar/vat"
)

const refUsage = `usage:
  vatcar ref narrow URI|@FILE [--methods M1,M2,...] [--expires DURATION|RFC3339] [--peer sha-256:DIGEST]...
  vatcar ref inspect URI|@FILE

narrow prints a narrowed copy of a sturdy ref (root or narrowed), offline:
each flag given adds a caveat that every call must meet. Methods are
/pkg.Service/Method or /pkg.Service/*; --expires is a duration from now
(1h, 30m) or an RFC 3339 time; --peer binds the ref to importing vats.
inspect prints what a holder may know of a ref, never its secret.
`

// runRef is `vatcar ref narrow|inspect`.
func runRef(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, refUsage)
		if len(args) == 0 {
			return fmt.Errorf("%w: ref needs narrow or inspect", errUsage)
		}
		return nil
	}
	switch args[0] {
	case "narrow":
		return runRefNarrow(args[1:], time.Now(), stdout, stderr)
	case "inspect":
		return runRefInspect(args[1:], time.Now(), stdout)
	}
	fmt.Fprint(stderr, refUsage)
	return fmt.Errorf("%w: unknown ref command %q", errUsage, args[0])
}

// peerList collects repeated --peer flags.
type peerList []vat.Digest

func (p *peerList) String() string { return fmt.Sprint(len(*p)) }
func (p *peerList) Set(s string) error {
	d, err := vat.ParseDigest(s)
	if err != nil {
		return err
	}
	*p = append(*p, d)
	return nil
}

// splitArgs separates the positional argument (the URI) from the flags, so
// it may come first, as in the usage.
func splitArgs(args []string) (pos, flags []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return append(pos, args[i+1:]...), flags
		case strings.HasPrefix(a, "-"):
			flags = append(flags, a)
			if !strings.Contains(a, "=") && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		default:
			pos = append(pos, a)
		}
	}
	return pos, flags
}

// caveatFlags are the caveat flags of `ref narrow` and `ctl narrow`.
type caveatFlags struct {
	methods, expires string
	peers            peerList
}

// register adds the flags to fs.
func (c *caveatFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.methods, "methods", "", "allow only these gRPC methods, `M1,M2,...` (/pkg.Service/Method or /pkg.Service/*)")
	fs.StringVar(&c.expires, "expires", "", "expire after `DURATION` from now, or at an RFC 3339 time")
	fs.Var(&c.peers, "peer", "only the vat with key digest `sha-256:DIGEST` may restore it (repeatable: any of them)")
}

// block checks the flags and returns the block they describe, at now.
func (c *caveatFlags) block(now time.Time) (vat.Block, error) {
	var b vat.Block
	if c.methods != "" {
		for _, m := range strings.Split(c.methods, ",") {
			m = strings.TrimSpace(m)
			if err := vat.CheckMethodPattern(m); err != nil {
				return b, fmt.Errorf("--methods: %w", err)
			}
			b.Methods = append(b.Methods, m)
		}
	}
	if c.expires != "" {
		at, err := parseExpiry(c.expires, now)
		if err != nil {
			return b, fmt.Errorf("--expires: %w", err)
		}
		b.NotAfter = at
	}
	b.Peers = c.peers
	return b, nil
}

func runRefNarrow(args []string, now time.Time, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ref narrow", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf caveatFlags
	cf.register(fs)
	pos, flags := splitArgs(args)
	if err := fs.Parse(flags); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: ref narrow takes one URI or @FILE", errUsage)
	}
	loc, seg, err := readRef(pos[0])
	if err != nil {
		return err
	}
	b, err := cf.block(now)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	out, err := vat.Narrow(seg, b)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	_, err = fmt.Fprintln(stdout, vat.FormatURI(loc, out))
	return err
}

// parseExpiry reads --expires: a positive duration from now or an RFC 3339
// time in the future.
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("duration %q is not in the future", s)
		}
		return now.Add(d).Truncate(time.Second), nil
	}
	at, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither a duration (1h) nor an RFC 3339 time", s)
	}
	if !at.After(now) {
		return time.Time{}, fmt.Errorf("%s is in the past", at.Format(time.RFC3339))
	}
	return at, nil
}

// readRef reads a sturdy ref (URI or @FILE) into its locator and segment.
func readRef(arg string) (vat.Locator, []byte, error) {
	uri, err := vat.ReadURI(arg)
	if err != nil {
		return vat.Locator{}, nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	loc, seg, err := vat.ParseURI(uri)
	if err != nil {
		return vat.Locator{}, nil, fmt.Errorf("%w: not a sturdy ref: %w", errUsage, err)
	}
	if len(seg) == 0 {
		return vat.Locator{}, nil, fmt.Errorf("%w: not a sturdy ref: the URI names no service", errUsage)
	}
	return loc, seg, nil
}

func runRefInspect(args []string, now time.Time, stdout io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: ref inspect takes one URI or @FILE", errUsage)
	}
	loc, seg, err := readRef(args[0])
	if err != nil {
		return err
	}
	w := &strings.Builder{}
	fmt.Fprintf(w, "vat:     %v\naddress: %v\n", loc.Digest, loc.Address)
	tok, err := vat.ParseToken(seg)
	if err != nil {
		fmt.Fprintf(w, "kind:    root (all methods, no expiry, any importer)\nrevocation id: %v\n", vat.ServiceID(seg).RevocationID())
		_, err := io.WriteString(stdout, w.String())
		return err
	}
	fmt.Fprintf(w, "kind:    narrowed, %d block(s)\n", len(tok.Blocks))
	expired := false
	for i, b := range tok.Blocks {
		fmt.Fprintf(w, "block %d:\n", i+1)
		if len(b.Methods) > 0 {
			fmt.Fprintf(w, "  methods: %s\n", strings.Join(b.Methods, ", "))
		}
		if !b.NotAfter.IsZero() {
			fmt.Fprintf(w, "  expires: %s\n", b.NotAfter.UTC().Format(time.RFC3339))
			expired = expired || now.After(b.NotAfter)
		}
		if !b.NotBefore.IsZero() {
			fmt.Fprintf(w, "  not before: %s\n", b.NotBefore.UTC().Format(time.RFC3339))
		}
		for _, p := range b.Peers {
			fmt.Fprintf(w, "  peer: %v\n", p)
		}
	}
	fmt.Fprintf(w, "expired: %v\nrevocation id: %v\n", expired, tok.RevocationID())
	_, err = io.WriteString(stdout, w.String())
	return err
}
