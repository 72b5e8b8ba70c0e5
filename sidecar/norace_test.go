//go:build !race

package sidecar

// raceDetector reports a -race build (see race_test.go).
const raceDetector = false
