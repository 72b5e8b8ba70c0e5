package k8s

import (
	"flag"
	"testing"

	"go.uber.org/goleak"
)

// update rewrites golden files (testdata/inject/out, manifests/) from the
// current code instead of comparing against them.
var update = flag.Bool("update", false, "rewrite golden files")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
