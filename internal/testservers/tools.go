package testservers

import (
	"os"
	"path/filepath"
	"testing"
)

// Tool returns the path of a client tool that `make tools` installs into
// the tools cache (${XDG_CACHE_HOME:-~/.cache}/backupd/tools), such as
// grpcurl. Like a missing server, a missing tool fails the test.
func Tool(t testing.TB, name string) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	p := filepath.Join(cache, "backupd", "tools", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(name + " is not installed at " + p + "; run `make tools`")
	}
	return p
}
