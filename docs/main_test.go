// Package docs tests what the documentation promises an operator: the
// examples of STORAGE.md run as written (storage_test.go), every
// misconfiguration is one clear line with the right exit code
// (errors_test.go), and the commands that only read never create
// anything (readonly_test.go). It holds no code but its tests; they run
// the binaries built from this tree against the test servers.
package docs

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/testservers"
)

// binDir holds backupctl and backupd, built once for the package.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "backupd-docs-test-")
	if err != nil {
		panic(err)
	}
	binDir = dir
	if out, err := exec.Command("go", "build", "-o", dir+"/", "../cmd/backupctl", "../cmd/backupd").CombinedOutput(); err != nil {
		panic("build backupctl and backupd: " + err.Error() + "\n" + string(out))
	}
	code := testservers.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is what a command did.
type result struct {
	stdout, stderr string
	code           int
}

// runIn runs name (a binary of binDir, or a program on the system's PATH)
// in dir with only env, PATH and HOME set (as in a fresh shell), killing
// its whole process group after timeout.
func runIn(t *testing.T, dir string, env []string, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if p := filepath.Join(binDir, name); fileExists(p) {
		name = p
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	home := filepath.Join(t.TempDir(), "home")
	os.MkdirAll(home, 0o700)
	cmd.Env = append([]string{"PATH=" + binDir + ":/usr/local/bin:/usr/bin:/bin", "HOME=" + home}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %v: still running after %v\nstdout: %s\nstderr: %s", name, args, timeout, out.String(), errb.String())
	}
	return result{out.String(), errb.String(), code}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// servers starts (once per binary) the three test servers and returns
// the environment the examples and cases see them through.
type servers struct {
	minio   *testservers.MinIOServer
	gcs     *testservers.GCSServer
	azurite *testservers.AzuriteServer
}

func startServers(t *testing.T) servers {
	t.Helper()
	return servers{minio: testservers.MinIO(t), gcs: testservers.FakeGCS(t), azurite: testservers.Azurite(t)}
}

// azuriteAddr is Azurite's HOST:PORT.
func (s servers) azuriteAddr() string {
	u := s.azurite.BlobEndpoint[len("http://"):]
	return u[:len(u)-len("/"+s.azurite.AccountName)]
}

// env is what STORAGE.md's examples read: the servers' addresses and
// MinIO's root credentials.
func (s servers) env() []string {
	return []string{
		"MINIO_ADDR=" + s.minio.Endpoint, "MINIO_ROOT_USER=" + s.minio.RootUser, "MINIO_ROOT_PASSWORD=" + s.minio.RootPassword,
		"GCS_ADDR=" + s.gcs.Host, "AZURITE_ADDR=" + s.azuriteAddr(),
	}
}
