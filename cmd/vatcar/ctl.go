package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/vatcar/vatcar/proto/vatcar/admin/v1"
	"github.com/vatcar/vatcar/sidecar"
	"github.com/vatcar/vatcar/vat"
)

const ctlUsage = `usage: vatcar ctl [--admin unix:PATH|HOST:PORT] [--json] [--show-uris] [--timeout D] COMMAND [ARGS]

commands:
  list-exports                           list exports and their sturdy URIs (ids hidden unless --show-uris)
  add-export NAME=TARGET                 export the local gRPC server TARGET as NAME
  remove-export NAME                     stop exporting NAME
  list-imports                           list imports, their endpoints, states and URIs (ids hidden unless --show-uris)
  add-import NAME=URI|@FILE[,listen=HOST:PORT]
                                         import a sturdy ref (a cap file is read here)
  remove-import NAME                     close an import's endpoint
  revoke NAME                            revoke the sturdy ref of export NAME; prints its
                                         revocation id and whether the revocation list has it
  revoke URI|@FILE|REVOCATION-ID         revoke a ref (narrowed: with every ref narrowed from it)
  narrow NAME [--methods M1,M2,...] [--expires DURATION|RFC3339] [--peer sha-256:DIGEST]...
                                         mint a narrowed sturdy ref of export NAME
  dump                                   describe the vat: address, peers, connections
`

// runCtl is `vatcar ctl`: a client of the admin API.
func runCtl(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("vatcar ctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, ctlUsage); fs.PrintDefaults() }
	admin := fs.String("admin", defaultCtlAdmin(), "the sidecar's admin API: `unix:PATH` or HOST:PORT (default: $VATCAR_ADMIN, else the sidecar's default socket)")
	asJSON := fs.Bool("json", false, "print responses as JSON")
	showURIs := fs.Bool("show-uris", false, "print full sturdy URIs (bearer secrets) in list-exports and list-imports; without it their service ids are hidden")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after `D`")
	if err := fs.Parse(args); err != nil {
		return usageErr(err) // -h, --help: the usage, exit 0
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return fmt.Errorf("%w: ctl: no command", errUsage)
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	req, call, err := ctlRequest(cmd, rest)
	if err != nil {
		return fmt.Errorf("%w: ctl %s: %w", errUsage, cmd, err)
	}
	cc, err := grpc.NewClient(*admin, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("ctl: dial %s: %w", *admin, err)
	}
	if !*showURIs {
		call = redacting(call)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, err := call(ctx, adminv1.NewAdminServiceClient(cc), req)
	if err != nil {
		if status.Code(err) == codes.InvalidArgument {
			return fmt.Errorf("%w: ctl %s: %s", errUsage, cmd, status.Convert(err).Message())
		}
		if status.Code(err) == codes.Unavailable {
			return fmt.Errorf("ctl %s: cannot reach the admin API at %s (is the sidecar running? --admin names another): %s", cmd, *admin, status.Convert(err).Message())
		}
		return fmt.Errorf("ctl %s: %s: %s", cmd, status.Code(err), status.Convert(err).Message())
	}
	if *asJSON {
		b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(resp)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	return printCtl(stdout, resp)
}

// defaultCtlAdmin is where ctl finds the admin API unless --admin says:
// $VATCAR_ADMIN (the injector sets it in the sidecar container, so `kubectl
// exec -c vatcar -- /vatcar ctl ...` needs no flag), else the socket `vatcar
// run` listens on by default.
func defaultCtlAdmin() string {
	if a := os.Getenv("VATCAR_ADMIN"); a != "" {
		return a
	}
	return sidecar.DefaultAdminListen()
}

// redacting wraps call so that the sturdy URIs of list-exports and
// list-imports come back with their service ids hidden.
func redacting(call ctlCall) ctlCall {
	return func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
		resp, err := call(ctx, c, r)
		switch m := resp.(type) {
		case *adminv1.ListExportsResponse:
			for _, e := range m.GetExports() {
				e.Uri = redactURI(e.GetUri())
			}
		case *adminv1.ListImportsResponse:
			for _, i := range m.GetImports() {
				i.Uri = redactURI(i.GetUri())
			}
		}
		return resp, err
	}
}

// redactURI hides the service id of a sturdy URI, keeping the vat's digest
// and address: capnp://sha-256:DIGEST@HOST:PORT/...
func redactURI(uri string) string {
	if i := strings.LastIndex(uri, "/"); i >= len("capnp://") && strings.HasPrefix(uri, "capnp://") {
		return uri[:i+1] + "..."
	}
	if uri == "" {
		return ""
	}
	return "..."
}

type ctlCall func(context.Context, adminv1.AdminServiceClient, proto.Message) (proto.Message, error)

// ctlRequest builds the request of one ctl command and the call that sends it.
func ctlRequest(cmd string, args []string) (proto.Message, ctlCall, error) {
	want := func(n int, what string) error {
		if len(args) != n {
			return fmt.Errorf("want %s", what)
		}
		return nil
	}
	switch cmd {
	case "list-exports":
		return &adminv1.ListExportsRequest{}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.ListExports(ctx, r.(*adminv1.ListExportsRequest))
		}, want(0, "no arguments")
	case "add-export":
		if err := want(1, "NAME=TARGET"); err != nil {
			return nil, nil, err
		}
		e, err := sidecar.ParseExport(args[0])
		if err != nil {
			return nil, nil, err
		}
		return &adminv1.AddExportRequest{Name: e.Name, Target: e.Target}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.AddExport(ctx, r.(*adminv1.AddExportRequest))
		}, nil
	case "remove-export":
		return &adminv1.RemoveExportRequest{Name: first(args)}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.RemoveExport(ctx, r.(*adminv1.RemoveExportRequest))
		}, want(1, "NAME")
	case "list-imports":
		return &adminv1.ListImportsRequest{}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.ListImports(ctx, r.(*adminv1.ListImportsRequest))
		}, want(0, "no arguments")
	case "add-import":
		if err := want(1, "NAME=URI|@FILE[,listen=HOST:PORT]"); err != nil {
			return nil, nil, err
		}
		im, err := sidecar.ParseImport(args[0])
		if err != nil {
			return nil, nil, err
		}
		uri, err := vat.ReadURI(im.URI)
		if err != nil {
			return nil, nil, err
		}
		if path, ok := strings.CutPrefix(im.URI, "@"); ok {
			// The server sees only the URI: name the file here.
			if _, _, err := vat.ParseURI(uri); err != nil {
				return nil, nil, fmt.Errorf("malformed URI in cap file %q: %w", path, err)
			}
		}
		return &adminv1.AddImportRequest{Name: im.Name, Uri: uri, Listen: im.Listen}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.AddImport(ctx, r.(*adminv1.AddImportRequest))
		}, nil
	case "remove-import":
		return &adminv1.RemoveImportRequest{Name: first(args)}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.RemoveImport(ctx, r.(*adminv1.RemoveImportRequest))
		}, want(1, "NAME")
	case "revoke":
		if err := want(1, "NAME, URI, @FILE or REVOCATION-ID"); err != nil {
			return nil, nil, err
		}
		if rev, ok, err := refRevocationID(args[0]); ok || err != nil {
			// A ref (narrowed or root) or its revocation id: revoked as a
			// revocation list entry would.
			return &adminv1.RevokeRefRequest{RevocationId: rev.String()}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
				return c.RevokeRef(ctx, r.(*adminv1.RevokeRefRequest))
			}, err
		}
		return &adminv1.RevokeRequest{Name: args[0]}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.Revoke(ctx, r.(*adminv1.RevokeRequest))
		}, nil
	case "narrow":
		req, err := narrowRequest(args)
		return req, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.Narrow(ctx, r.(*adminv1.NarrowRequest))
		}, err
	case "dump":
		return &adminv1.DumpRequest{}, func(ctx context.Context, c adminv1.AdminServiceClient, r proto.Message) (proto.Message, error) {
			return c.Dump(ctx, r.(*adminv1.DumpRequest))
		}, want(0, "no arguments")
	}
	return nil, nil, fmt.Errorf("unknown command %q", cmd)
}

func first(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

// printCtl prints a response for people: tables for lists, text for dump.
func printCtl(w io.Writer, resp proto.Message) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch r := resp.(type) {
	case *adminv1.ListExportsResponse:
		fmt.Fprintln(tw, "NAME\tTARGET\tREVOKED\tURI")
		for _, e := range r.GetExports() {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", e.GetName(), e.GetTarget(), e.GetRevoked(), e.GetUri())
		}
	case *adminv1.NarrowResponse:
		fmt.Fprintln(tw, r.GetUri())
	case *adminv1.AddExportResponse:
		fmt.Fprintln(tw, r.GetExport().GetUri())
	case *adminv1.ListImportsResponse:
		fmt.Fprintln(tw, "NAME\tLISTEN\tSTATE\tURI")
		for _, i := range r.GetImports() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", i.GetName(), i.GetListen(), i.GetState(), i.GetUri())
		}
	case *adminv1.RevokeResponse:
		fmt.Fprintln(tw, r.GetRevocationId())
		if r.GetRevocationList() != "" {
			fmt.Fprintf(tw, "added to the revocation list %s: every sidecar reading it refuses the ref\n", r.GetRevocationList())
		} else {
			fmt.Fprintf(tw, "revoked on this sidecar only (%s): the revocation is local until %s is added to the revocation list (--revocations) of every replica; a restart undoes it\n", r.GetLocalReason(), r.GetRevocationId())
		}
	case *adminv1.AddImportResponse:
		fmt.Fprintln(tw, r.GetImport().GetListen())
	case *adminv1.DumpResponse:
		fmt.Fprint(tw, r.GetText())
		if !strings.HasSuffix(r.GetText(), "\n") {
			fmt.Fprintln(tw)
		}
	}
	return tw.Flush()
}

// refRevocationID returns the revocation id that arg, given to ctl revoke,
// names when it is a sturdy ref (URI or @FILE) or a revocation id; ok is
// false for an export name.
func refRevocationID(arg string) (vat.RevocationID, bool, error) {
	switch {
	case strings.HasPrefix(arg, vat.RevocationIDPrefix):
		r, err := vat.ParseRevocationID(arg)
		return r, true, err
	case strings.HasPrefix(arg, "capnp://"), strings.HasPrefix(arg, "@"):
		uri, err := vat.ReadURI(arg)
		if err != nil {
			return "", true, err
		}
		r, err := vat.URIRevocationID(uri)
		if err != nil {
			return "", true, fmt.Errorf("not a sturdy ref: %w", err)
		}
		return r, true, nil
	}
	return "", false, nil
}

// narrowRequest parses `ctl narrow NAME [--methods M1,...] [--expires
// DURATION|RFC3339] [--peer sha-256:DIGEST]...`.
func narrowRequest(args []string) (*adminv1.NarrowRequest, error) {
	fs := flag.NewFlagSet("ctl narrow", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf caveatFlags
	cf.register(fs)
	pos, flags := splitArgs(args)
	if err := fs.Parse(flags); err != nil {
		return nil, err
	}
	if len(pos) != 1 {
		return nil, errors.New("narrow takes NAME and flags: --methods M1,M2 --expires DURATION|RFC3339 --peer sha-256:DIGEST")
	}
	now := time.Now()
	b, err := cf.block(now)
	if err != nil {
		return nil, err
	}
	req := &adminv1.NarrowRequest{Name: pos[0], Methods: b.Methods}
	if !b.NotAfter.IsZero() {
		req.ExpiresInSeconds = int64(b.NotAfter.Sub(now).Round(time.Second) / time.Second)
	}
	for _, p := range b.Peers {
		req.Peers = append(req.Peers, p.String())
	}
	return req, nil
}
