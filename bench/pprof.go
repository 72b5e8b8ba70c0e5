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
// that has an admin listener, and then its allocation profile, into dir. The returned
// function waits for them. Failures are logged, not fatal: a sidecar without
// /debug/pprof simply has no profile.
func startProfiles(ctx context.Context, dir, scenarioName string, p path, window time.Duration, logf func(string, ...any)) func() {
	var wg sync.WaitGroup
	secs := int(math.Ceil(window.Seconds()))
	for _, in := range p.Instances() {
		if in.Admin == "" {
			continue
		}
		base := fmt.Sprintf("%s-%s-%s", p.Name(), strings.ReplaceAll(in.Name, " ", "-"), scenarioName)
		wg.Go(func() {
			for _, prof := range []struct{ url, file string }{
				{fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", in.Admin, secs), base + ".cpu.pprof"},
				{fmt.Sprintf("http://%s/debug/pprof/allocs", in.Admin), base + ".allocs.pprof"},
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
