package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// startProfiles fetches a CPU profile of the window's length from each instance of p
// that serves /debug/pprof, and then its allocation, block and mutex profiles
// (cumulative since the process started), into dir. The returned function waits for
// them. Failures are logged, not fatal.
func startProfiles(ctx context.Context, dir, scenarioName string, p path, window time.Duration, logf func(string, ...any)) func() {
	var wg sync.WaitGroup
	secs := int(math.Ceil(window.Seconds()))
	for _, in := range p.Instances() {
		if in.Pprof == "" {
			continue
		}
		base := fmt.Sprintf("%s-%s-%s", p.Name(), strings.ReplaceAll(in.Name, " ", "-"), scenarioName)
		wg.Go(func() {
			for _, prof := range []struct{ url, file string }{
				{fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", in.Pprof, secs), base + ".cpu.pprof"},
				{fmt.Sprintf("http://%s/debug/pprof/allocs", in.Pprof), base + ".allocs.pprof"},
				{fmt.Sprintf("http://%s/debug/pprof/block", in.Pprof), base + ".block.pprof"},
				{fmt.Sprintf("http://%s/debug/pprof/mutex", in.Pprof), base + ".mutex.pprof"},
			} {
				if err := fetchTo(ctx, prof.url, filepath.Join(dir, prof.file)); err != nil {
					logf("profile %s: %v", prof.file, err)
				}
			}
		})
	}
	return wg.Wait
}

func fetchTo(ctx context.Context, url, file string) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return fmt.Errorf("profile dir: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("create %s: %w", file, err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", file, err)
	}
	return f.Close()
}

// snapshotProfiles saves the heap and goroutine profiles of each instance of p that
// serves /debug/pprof, as DIR/PATH-INSTANCE-label.{heap,goroutine}.pprof. Failures are
// logged, not fatal.
func snapshotProfiles(ctx context.Context, dir, label string, p path, logf func(string, ...any)) {
	for _, in := range p.Instances() {
		if in.Pprof == "" {
			continue
		}
		base := fmt.Sprintf("%s-%s-%s", p.Name(), strings.ReplaceAll(in.Name, " ", "-"), label)
		for _, kind := range []string{"heap", "goroutine"} {
			url := fmt.Sprintf("http://%s/debug/pprof/%s", in.Pprof, kind)
			if err := fetchTo(ctx, url, filepath.Join(dir, base+"."+kind+".pprof")); err != nil {
				logf("profile %s %s: %v", base, kind, err)
			}
		}
	}
}
