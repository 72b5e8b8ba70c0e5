// Package adminv1 is the generated Go code of the vatcar admin API
// (admin.proto), with protoc-gen-validate rules. Regenerate with
// `make generate`.
package adminv1
