package location

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backupd/backupd/pkg/storage/local"
)

func TestOpenLocal(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		raw, want string
	}{
		{"file://" + dir + "/repo", dir + "/repo"},
		{"FILE://" + dir + "/repo", dir + "/repo"},
		{"file://localhost" + dir + "/repo", dir + "/repo"},
		{"file:" + dir + "/repo", dir + "/repo"},
		{dir + "/plain", dir + "/plain"},
		{dir + "/plain/", dir + "/plain"},
		{"file://" + dir + "/a/../b/./c/", dir + "/b/c"},
		{"file://" + dir + "/with%20space", dir + "/with space"},
		{"file://" + dir + "/hash%23sign", dir + "/hash#sign"},
	} {
		s, err := Open(t.Context(), tc.raw)
		if err != nil {
			t.Errorf("Open(%q): %v", tc.raw, err)
			continue
		}
		ls, ok := s.(*local.Storage)
		if !ok {
			t.Errorf("Open(%q) = %T, want *local.Storage", tc.raw, s)
		} else if ls.Dir() != tc.want {
			t.Errorf("Open(%q) opened %q, want %q", tc.raw, ls.Dir(), tc.want)
		}
		if fi, err := os.Stat(tc.want); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("Open(%q) did not create %s with mode 0700: %v, %v", tc.raw, tc.want, fi, err)
		}
		s.Close()
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range []struct {
		raw     string
		wantErr string // a substring of the error
	}{
		{"", "no storage URL"},
		{"relative/path", "relative path refused"},
		{"./repo", "relative path refused"},
		{"repo", "relative path refused"},
		{"file:relative/path", "relative file URL"},
		{"file://", "absolute path"},
		{"file://host.example/srv/repo", `names host "host.example"`},
		{"file://me:hunter2@/srv/repo", "must not contain a user"},
		{"file:///srv/repo?sync=0", "no query parameters"},
		{"file:///srv/repo?", "no query parameters"},
		{"file:///srv/repo#frag", "no fragment"},
		{"file:///srv/%zz", "not a valid URL"},
		// Object stores without credentials or region fail with the
		// backend's own explanation (nothing is dialled to find out).
		{"s3://bucket/prefix", "region"},
		{"minio://host/bucket", "credentials"},
		{"azblob://container", "endpoint"},
		{"https://example.com/x", `unsupported scheme "https"`},
		{"s3://AKIAXXX:hunter2@bucket/p?secret_key=hunter2&region=eu", "credentials do not belong in the URL"},
		{"s3://AKIAXXX:hun/ter2@bucket/p", "not a valid URL"},
	} {
		s, err := Open(t.Context(), tc.raw)
		if err == nil {
			s.Close()
			t.Errorf("Open(%q) succeeded, want error containing %q", tc.raw, tc.wantErr)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("Open(%q) error %q, want it to contain %q", tc.raw, err, tc.wantErr)
		}
		for _, secret := range []string{"hunter2", "ter2", "AKIAXXX"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("Open(%q) error %q leaks %q", tc.raw, err, secret)
			}
		}
	}
}

func TestOpenCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := Open(ctx, t.TempDir()); err == nil {
		t.Error("Open with a cancelled context succeeded")
	}
}

func TestDefault(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, tc := range []struct{ xdg, want string }{
		{"/data/home", "file:///data/home/backupd/repository"},
		{"/data/with space", "file:///data/with%20space/backupd/repository"},
		{"", "file://" + home + "/.local/share/backupd/repository"},
		{"relative/ignored", "file://" + home + "/.local/share/backupd/repository"},
	} {
		t.Setenv("XDG_DATA_HOME", tc.xdg)
		got, err := Default()
		if err != nil || got != tc.want {
			t.Errorf("Default() with XDG_DATA_HOME=%q = %q, %v; want %q", tc.xdg, got, err, tc.want)
		}
	}

	// The default location opens.
	t.Setenv("XDG_DATA_HOME", filepath.Join(home, "x d g"))
	loc, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(t.Context(), loc)
	if err != nil {
		t.Fatalf("Open(Default() = %q): %v", loc, err)
	}
	defer s.Close()
	if got, want := s.(*local.Storage).Dir(), filepath.Join(home, "x d g", "backupd", "repository"); got != want {
		t.Errorf("Open(Default()) opened %q, want %q", got, want)
	}
}

func TestFromEnv(t *testing.T) {
	t.Setenv(EnvVar, "file:///srv/backupd")
	if got := FromEnv(); got != "file:///srv/backupd" {
		t.Errorf("FromEnv() = %q", got)
	}
	t.Setenv(EnvVar, "")
	if got := FromEnv(); got != "" {
		t.Errorf("FromEnv() = %q, want empty", got)
	}
}

func TestRedact(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"/srv/backupd", "/srv/backupd"},
		{"file:///srv/backupd", "file:///srv/backupd"},
		{"s3://bucket/prefix?region=eu-west-1", "s3://bucket/prefix?region=eu-west-1"},
		{"s3://AKIA123:s3cr3t@bucket/prefix", "s3://bucket/prefix"},
		{"minio://user@host:9000/bucket", "minio://host:9000/bucket"},
		{"s3://bucket/p?access_key=AKIA&secret_key=s3cr3t&region=eu", "s3://bucket/p?region=eu"},
		{"gs://bucket?credentials_file=/x.json&project=p", "gs://bucket?project=p"},
		{"azblob://c?sv=2020&sig=abc%2Fdef&se=2030", "azblob://c?sv=2020&se=2030"},
		{"https://h/o?X-Amz-Signature=abc&X-Amz-Credential=AK&X-Amz-Security-Token=t&X-Amz-Date=d", "https://h/o?X-Amz-Date=d"},
		{"s3://b?Password=x&TOKEN=y&apiKey=z&Authorization=w", "s3://b"},
		{"s3://b?%73ecret=x&a=1", "s3://b?a=1"}, // escaped name
		{"s3://b?secret", "s3://b"},
		{"s3:user:pass@bucket", "s3:bucket"},
		// Unparseable: cut by hand.
		{"s3://AKIA:hun/ter2@bucket/p?secret=x", "s3://bucket/p"},
		{"s3://u:p@ss%zz@bucket/p", "s3://bucket/p"},
		{"s3://bucket/%zz?token=x", "s3://bucket/%zz"},
	} {
		if got := Redact(tc.raw); got != tc.want {
			t.Errorf("Redact(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestSchemes(t *testing.T) {
	if got := Schemes(); len(got) != 5 || got[0] != "file" {
		t.Errorf("Schemes() = %q", got)
	}
}

func TestLocalDir(t *testing.T) {
	for _, c := range []struct {
		url, dir string
		ok       bool
	}{
		{"/var/lib/backupd/repo", "/var/lib/backupd/repo", true},
		{"file:///var/lib/backupd/repo/", "/var/lib/backupd/repo", true},
		{"file://localhost/srv/r", "/srv/r", true},
		{"s3://bucket/prefix", "", false},
		{"gs://bucket", "", false},
		{"relative/dir", "", false},
		{"file://host/srv/r", "", false},
		{"", "", false},
	} {
		dir, ok := LocalDir(c.url)
		if dir != c.dir && c.ok || ok != c.ok {
			t.Errorf("LocalDir(%q) = %q, %v; want %q, %v", c.url, dir, ok, c.dir, c.ok)
		}
	}
}
