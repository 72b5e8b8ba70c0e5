package sidecar

import (
	"strings"
	"testing"

	"github.com/envoyproxy/protoc-gen-validate/validate"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/vatcar/vatcar/proto/vatcar/admin/v1"
)

// TestFieldRulesCoverAdminProto: every field admin.proto validates has
// words in fieldRules, so no client sees a raw pattern.
func TestFieldRulesCoverAdminProto(t *testing.T) {
	msgs := adminv1.File_vatcar_admin_v1_admin_proto.Messages()
	checked := 0
	for i := range msgs.Len() {
		fields := msgs.Get(i).Fields()
		for j := range fields.Len() {
			f := fields.Get(j)
			if !proto.HasExtension(f.Options(), validate.E_Rules) {
				continue
			}
			checked++
			if _, ok := fieldRules[string(f.Name())]; !ok {
				t.Errorf("%s has validation rules but fieldRules has no words for %q", f.FullName(), f.Name())
			}
		}
	}
	if checked < 5 {
		t.Fatalf("found %d validated fields in admin.proto, want at least 5", checked)
	}
}

// TestViolationMessage: one entry per field, words from fieldRules, and the
// uri's value never echoed.
func TestViolationMessage(t *testing.T) {
	req := &adminv1.AddImportRequest{Name: "", Uri: "http://secret-id", Listen: "x"}
	err := req.ValidateAll()
	if err == nil {
		t.Fatal("no validation error")
	}
	all := err.(interface{ AllErrors() []error }).AllErrors()
	got := violationMessage(all)
	want := "invalid request: name: " + fieldRules["name"] + "; uri: " + fieldRules["uri"] + "; listen: " + fieldRules["listen"]
	if got != want {
		t.Errorf("violationMessage = %q\nwant %q", got, want)
	}
	if strings.Contains(got, "secret-id") {
		t.Errorf("message repeats the uri: %q", got)
	}
}

// TestViolationMessageListItems: an item of a list names its index and
// gets the list's words.
func TestViolationMessageListItems(t *testing.T) {
	req := &adminv1.NarrowRequest{Name: "a", Methods: []string{"/ok.S/M", "nope"}, ExpiresInSeconds: -1}
	all := req.ValidateAll().(interface{ AllErrors() []error }).AllErrors()
	got := violationMessage(all)
	want := "invalid request: methods[1]: " + fieldRules["methods"] + "; expires_in_seconds: " + fieldRules["expires_in_seconds"]
	if got != want {
		t.Errorf("violationMessage = %q\nwant %q", got, want)
	}
}
