package testservers

import (
	"os"
	"path/filepath"
	"testing"
)

// Tool returns the path of a client tool that `make tools` installs into
// the tools cache (${XDG_CACHE_HOME:-~/.cache}/backupd/tools), such as
// grpcurl. Like a missing server, a missing tool skips the test locally
// and fails it in CI.
func Tool(t testing.TB, name string) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	p := filepath.Join(cache, "backupd", "tools", name)
	if _, err := os.Stat(p); err != nil {
		msg := name + " is not installed at " + p + "; run `make tools`"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}
