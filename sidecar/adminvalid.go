package sidecar

import (
	"errors"
	"slices"
	"strings"
)

// fieldRules says in words what each field the admin API validates
// accepts: the protoc-gen-validate rules of admin.proto, whose own messages
// quote regular expressions ("value does not match regex pattern ...").
// TestFieldRulesCoverAdminProto keeps it complete.
var fieldRules = map[string]string{
	"name":               "want 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
	"target":             "want the local gRPC server as HOST:PORT or unix:/ABSOLUTE/PATH",
	"uri":                "want a capnp:// sturdy URI (at most 4096 bytes)",
	"listen":             "want HOST:PORT, or nothing for a free port on 127.0.0.1",
	"methods":            "want full method names, /pkg.Service/Method or /pkg.Service/* (at most 32, each at most 256 bytes)",
	"expires_in_seconds": "want 0 (no expiry) to 315360000 seconds (ten years)",
	"peers":              "want vat key digests, sha-256: and 43 base64url characters (at most 16)",
	"revocation_id":      "want a revocation id, rev1: and 22 base64url characters (vatcar ref inspect prints it)",
}

// humanViolation returns the field of a validation error (snake_case, as
// in the proto) and what it accepts, in words; a field without words gets
// protoc-gen-validate's reason.
func humanViolation(err error) (field, rule string) {
	var fv fieldViolation
	if !errors.As(err, &fv) {
		return "", err.Error()
	}
	field = snakeCase(fv.Field()) // "methods[2]" for an item of a list
	base, _, _ := strings.Cut(field, "[")
	if rule, ok := fieldRules[base]; ok {
		return field, rule
	}
	return field, fv.Reason()
}

// violationMessage is the status message for validation errors: one
// "FIELD: RULE" per field, in order, each field once (a field that breaks
// two rules, say an empty name, is one problem to its user). Values are
// not repeated: a URI is a bearer secret.
func violationMessage(errs []error) string {
	var fields, parts []string
	for _, e := range errs {
		field, rule := humanViolation(e)
		if field != "" && slices.Contains(fields, field) {
			continue
		}
		fields = append(fields, field)
		if field == "" {
			parts = append(parts, rule)
		} else {
			parts = append(parts, field+": "+rule)
		}
	}
	msg := "invalid request: "
	for i, p := range parts {
		if i > 0 {
			msg += "; "
		}
		msg += p
	}
	return msg
}
