package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// goRuntime is what a Go proxy's /metrics (client_golang's Go collector) says
// about its runtime at one moment.
type goRuntime struct {
	Mallocs    float64 // go_memstats_mallocs_total: heap objects allocated so far
	Goroutines float64 // go_goroutines
}

// scrapeGo reads go_memstats_mallocs_total and go_goroutines from the
// Prometheus text exposition at http://addr/metrics.
func scrapeGo(ctx context.Context, addr string) (goRuntime, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return goRuntime{}, fmt.Errorf("metrics of %s: %w", addr, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return goRuntime{}, fmt.Errorf("metrics of %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return goRuntime{}, fmt.Errorf("metrics of %s: %s", addr, resp.Status)
	}
	var rt goRuntime
	found := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		var into *float64
		switch {
		case !ok:
			continue
		case name == "go_memstats_mallocs_total":
			into = &rt.Mallocs
		case name == "go_goroutines":
			into = &rt.Goroutines
		default:
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return goRuntime{}, fmt.Errorf("metrics of %s: %s: %w", addr, name, err)
		}
		*into = v
		found++
	}
	if err := sc.Err(); err != nil {
		return goRuntime{}, fmt.Errorf("metrics of %s: %w", addr, err)
	}
	if found != 2 {
		return goRuntime{}, fmt.Errorf("metrics of %s: no go_memstats_mallocs_total or go_goroutines", addr)
	}
	return rt, nil
}

// sampleRuntime scrapes every instance of p that serves /metrics, in the
// order of p.Instances; an instance without metrics, or whose scrape fails,
// gets a zero goRuntime (ok false).
func sampleRuntime(ctx context.Context, p path) []runtimeSample {
	var out []runtimeSample
	for _, in := range p.Instances() {
		if in.Metrics == "" {
			continue
		}
		rt, err := scrapeGo(ctx, in.Metrics)
		out = append(out, runtimeSample{name: in.Name, rt: rt, ok: err == nil})
	}
	return out
}

// runtimeSample is one instance's goRuntime, ok when it was read.
type runtimeSample struct {
	name string
	rt   goRuntime
	ok   bool
}

// instanceRuntime is one Go proxy instance's runtime figures for a
// scenario: heap allocations per operation inside the window, and its
// goroutines at the window's end, while the load ran.
type instanceRuntime struct {
	Scenario      string
	Name          string
	AllocsPerCall float64
	Goroutines    float64
}

// runtimeRows turns the samples at a window's start and end into figures per
// operation; instances not read at both ends are left out.
func runtimeRows(scenarioName string, start, end []runtimeSample, ops int) []instanceRuntime {
	var out []instanceRuntime
	for i := range min(len(start), len(end)) {
		s, e := start[i], end[i]
		if !s.ok || !e.ok || s.name != e.name || ops <= 0 {
			continue
		}
		out = append(out, instanceRuntime{Scenario: scenarioName, Name: s.name,
			AllocsPerCall: round((e.rt.Mallocs-s.rt.Mallocs)/float64(ops), 1), Goroutines: e.rt.Goroutines})
	}
	return out
}

// medianRuntime is, instance by instance, the median of each figure over the
// rounds (each round's rows for one scenario and path); an instance missing
// from a round is left out of that round.
func medianRuntime(rounds [][]instanceRuntime) []instanceRuntime {
	var names []string
	byName := map[string][]instanceRuntime{}
	for _, rows := range rounds {
		for _, r := range rows {
			if _, ok := byName[r.Name]; !ok {
				names = append(names, r.Name)
			}
			byName[r.Name] = append(byName[r.Name], r)
		}
	}
	var out []instanceRuntime
	for _, n := range names {
		rs := byName[n]
		out = append(out, instanceRuntime{Scenario: rs[0].Scenario, Name: n,
			AllocsPerCall: median(rs, func(r instanceRuntime) float64 { return r.AllocsPerCall }),
			Goroutines:    median(rs, func(r instanceRuntime) float64 { return r.Goroutines })})
	}
	return out
}
