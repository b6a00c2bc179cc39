//go:build race

package e2e

// raceEnabled: these tests run under the race detector, so ssebridge is
// built with -race too.
const raceEnabled = true
