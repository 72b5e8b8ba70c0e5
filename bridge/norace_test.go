//go:build !race

package bridge

// raceDetector reports a -race build (see race_test.go).
const raceDetector = false
