package k8s

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// dockerStage is one FROM ... [AS name] stage of the Dockerfile.
type dockerStage struct {
	from, name, body string
}

func dockerStages(df string) []dockerStage {
	from := regexp.MustCompile(`(?mi)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$`)
	idx := from.FindAllStringSubmatchIndex(df, -1)
	var stages []dockerStage
	for i, m := range idx {
		end := len(df)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		s := dockerStage{from: df[m[2]:m[3]], body: df[m[1]:end]}
		if m[4] >= 0 {
			s.name = df[m[4]:m[5]]
		}
		stages = append(stages, s)
	}
	return stages
}

// TestDockerfileUsesTheCIBuild checks what no Docker engine here can: the
// images build with the same script CI runs, that script builds a static,
// trimmed binary (the sidecar's without the Kubernetes packages), and the two
// final stages, injector and sidecar (the default, last), are distroless
// static running as a numeric non-root user with the binary at the path the
// injector's probes run.
func TestDockerfileUsesTheCIBuild(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	script, err := os.ReadFile("../tools/build.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CGO_ENABLED=0 go build -trimpath", "tags=(-tags nok8s)"} {
		if !strings.Contains(string(script), want) {
			t.Fatalf("tools/build.sh lacks %q", want)
		}
	}
	stages := dockerStages(df)
	if len(stages) < 3 {
		t.Fatalf("Dockerfile has %d stages, want a build stage, injector and sidecar", len(stages))
	}
	byName := map[string]dockerStage{}
	for _, s := range stages {
		byName[s.name] = s
	}
	build := byName["build"]
	// The build stage's binaries: output path -> built with --sidecar. RUN
	// lines are read with their continuation lines.
	outputs := map[string]bool{}
	run := regexp.MustCompile(`(?m)^RUN\b(?:[^\n]*\\\n)*[^\n]*`).FindAllString(build.body, -1)
	for _, m := range regexp.MustCompile(`tools/build\.sh\s+(--sidecar\s+)?(\S+)`).FindAllStringSubmatch(strings.Join(run, "\n"), -1) {
		outputs[m[2]] = m[1] != ""
	}
	if len(outputs) != 2 {
		t.Fatalf("the build stage's RUN lines build %v with tools/build.sh, want the full binary and --sidecar's", outputs)
	}
	for name, sidecar := range map[string]bool{"injector": false, "sidecar": true} {
		s, ok := byName[name]
		if !ok {
			t.Fatalf("Dockerfile has no stage named %s", name)
		}
		if !strings.HasPrefix(s.from, "gcr.io/distroless/static") || !strings.HasSuffix(s.from, ":nonroot") {
			t.Errorf("stage %s is FROM %s, want distroless static nonroot", name, s.from)
		}
		copyFrom := regexp.MustCompile(`(?m)^COPY\s+--from=build\s+(\S+)\s+` + regexp.QuoteMeta(SidecarBinary) + `\s*$`).FindStringSubmatch(s.body)
		if copyFrom == nil {
			t.Errorf("stage %s does not copy a binary from the build stage to %s", name, SidecarBinary)
		} else if built, ok := outputs[copyFrom[1]]; !ok || built != sidecar {
			t.Errorf("stage %s copies %s, built by tools/build.sh with --sidecar=%v (known: %t), want --sidecar=%v", name, copyFrom[1], built, ok, sidecar)
		}
		user := regexp.MustCompile(`(?m)^USER\s+(\S+)`).FindAllStringSubmatch(s.body, -1)
		if len(user) == 0 || !regexp.MustCompile(`^[1-9][0-9]*(:[0-9]+)?$`).MatchString(user[len(user)-1][1]) {
			t.Errorf("stage %s USER %v, want a numeric non-root user", name, user)
		}
		if !strings.Contains(s.body, `ENTRYPOINT ["`+SidecarBinary+`"]`) {
			t.Errorf("stage %s entrypoint is not %s, the path the injector's probes run", name, SidecarBinary)
		}
	}
	if last := stages[len(stages)-1].name; last != "sidecar" {
		t.Fatalf("the last stage (what docker build . gives) is %q, want sidecar", last)
	}
}
