package k8s

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDockerfileUsesTheCIBuild checks what no Docker engine here can: the
// image builds with the same script CI runs, that script builds a static,
// trimmed binary, and the final stage is distroless static running as a
// numeric non-root user.
func TestDockerfileUsesTheCIBuild(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile("../tools/build.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(script), "CGO_ENABLED=0 go build -trimpath") {
		t.Fatal("tools/build.sh does not run CGO_ENABLED=0 go build -trimpath")
	}
	froms := regexp.MustCompile(`(?m)^FROM\s+(\S+)`).FindAllStringSubmatch(string(df), -1)
	if len(froms) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a multi-stage build", len(froms))
	}
	if final := froms[len(froms)-1][1]; !strings.HasPrefix(final, "gcr.io/distroless/static") || !strings.HasSuffix(final, ":nonroot") {
		t.Fatalf("final stage is %s, want distroless static nonroot", final)
	}
	if !regexp.MustCompile(`(?m)^RUN\b[^\n]*(\\\n[^\n]*)*tools/build\.sh`).Match(df) {
		t.Fatal("Dockerfile does not build with tools/build.sh")
	}
	user := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindAllStringSubmatch(string(df), -1)
	if len(user) == 0 || !regexp.MustCompile(`^[1-9][0-9]*(:[0-9]+)?$`).MatchString(user[len(user)-1][1]) {
		t.Fatalf("Dockerfile USER %v, want a numeric non-root user", user)
	}
	if !strings.Contains(string(df), `ENTRYPOINT ["`+SidecarBinary+`"]`) {
		t.Fatalf("Dockerfile entrypoint is not %s, the path the injector's probes run", SidecarBinary)
	}
}
