//go:build race

package repo

// raceEnabled says the tests run under the race detector, which makes the
// single-goroutine decodes of the largest objects too slow to be worth it.
const raceEnabled = true
