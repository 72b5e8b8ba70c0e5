//go:build race

package sidecar

// raceDetector reports a -race build: tests that copy megabytes per call
// skip under it (it runs them some 40 times slower; CI runs this package
// again without -race).
const raceDetector = true
