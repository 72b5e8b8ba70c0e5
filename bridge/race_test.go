//go:build race

package bridge

// raceDetector reports a -race build: tests that push grpc-go through
// megabytes of HPACK size their load down under it (it runs some 40 times
// slower there).
const raceDetector = true
