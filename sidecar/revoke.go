package sidecar

import (
	"context"
	"fmt"
	"io"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vatcar/vatcar/vat"
)

// Revocation. Removing an export's id from the restorer table breaks the
// capabilities restored from it, so no new call gets through; the calls
// already running on the export's server (above all long-lived streams)
// would go on. Each export's client therefore runs every call under the
// export's cut context: Revoke (and removal) cancels it, and the calls in
// flight end with NOT_FOUND naming the revocation, the status a new call
// on the revoked ref gets.

// revokedReason and errorDomain mark the status of a call cut off by its
// export's revocation with an ErrorInfo detail: the importing sidecar
// recognises it by this typed detail (never by message text) and restores
// its capability again (revokedByExporter).
const (
	revokedReason = "REVOKED"
	errorDomain   = "vatcar.io"
)

// errRevokedCall is the status of a call cut off by its export's
// revocation.
func errRevokedCall() error {
	st, err := status.New(codes.NotFound, fmt.Sprintf("vatcar: %v by its exporter", vat.ErrRevoked)).
		WithDetails(&errdetails.ErrorInfo{Reason: revokedReason, Domain: errorDomain})
	if err != nil {
		return status.Error(codes.NotFound, fmt.Sprintf("vatcar: %v by its exporter", vat.ErrRevoked))
	}
	return st.Err()
}

// revokedByExporter reports whether err is errRevokedCall's status, as it
// reached the importer.
func revokedByExporter(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.NotFound {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain && info.GetReason() == revokedReason {
			return true
		}
	}
	return false
}

// revocable reports the calls of an export's client that cut ended as
// revoked. The calls themselves end with cut because the egress derives
// their contexts from it (bridge.EgressConfig.Context): one context per
// call, not one more here.
type revocable struct{ cut context.Context }

// cutOff returns the revocation status in place of err once the export is
// cut off; err otherwise (also a clean io.EOF).
func (r revocable) cutOff(err error) error {
	if err != nil && err != io.EOF && r.cut.Err() != nil {
		return errRevokedCall()
	}
	return err
}
