// Package testservers starts real storage servers on 127.0.0.1 for
// integration tests: MinIO (with a user restricted to the minimal IAM
// policy of docs/STORAGE.md), fake-gcs-server and Azurite.
//
// Binaries are installed at pinned versions by `make test-servers`
// (scripts/install-*.sh) into the user's cache directory,
// ${XDG_CACHE_HOME:-$HOME/.cache}/backupd/test-servers, so a fresh clone on
// the same machine reuses them. BACKUPD_TEST_SERVERS overrides that
// directory.
//
// Each server is started at most once per test binary, on a free port,
// with its data in a temporary directory; Main stops them when the tests
// end, also when they fail, and children die with the test binary
// (Pdeathsig). When a binary is missing the test fails: no integration
// test is ever skipped.
//
// Use from a package's tests:
//
//	func TestMain(m *testing.M) { testservers.Main(m) }
//
//	func TestConformance(t *testing.T) {
//		srv := testservers.MinIO(t)
//		bucket := srv.NewBucket(t) // fresh, empty
//		...
//	}
package testservers

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

var (
	stopMu sync.Mutex
	stops  []func()
)

// registerStop records a function that Main runs after the tests.
func registerStop(f func()) {
	stopMu.Lock()
	defer stopMu.Unlock()
	stops = append(stops, f)
}

// Main runs the tests, then stops every server started, and exits.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run runs the tests, stops every server started and returns the exit
// code, for a TestMain with cleanup of its own.
func Run(m *testing.M) int {
	code := m.Run()
	stopMu.Lock()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
	stops = nil
	stopMu.Unlock()
	return code
}

// Dir is where the server binaries are installed.
func Dir() string {
	if d := os.Getenv("BACKUPD_TEST_SERVERS"); d != "" {
		return d
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	return filepath.Join(cache, "backupd", "test-servers")
}

// missing fails the test when a server binary is not installed: an
// integration test is never skipped.
func missing(t testing.TB, what string) {
	t.Helper()
	t.Fatal(what + " is not installed under " + Dir() + "; run `make test-servers`")
}
