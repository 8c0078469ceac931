package testservers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// minioReadyTimeout bounds how long a starting MinIO server may take to
// answer its health checks.
const minioReadyTimeout = 30 * time.Second

// minioAlias is the mc alias under which the root user reaches a server.
const minioAlias = "backupd"

// MinIOServer is a MinIO server on 127.0.0.1 with one root user and one
// restricted user. NewBucket creates buckets as root and grants the
// restricted user on each exactly the minimal IAM policy of
// docs/STORAGE.md (seeds/000's S3_policy.json) and nothing else.
type MinIOServer struct {
	// Endpoint is "127.0.0.1:PORT", as minio-go wants it.
	Endpoint string
	// URL is "http://127.0.0.1:PORT", as aws-sdk-go-v2 wants it.
	URL string
	// RootUser and RootPassword are the credentials of the root user.
	RootUser, RootPassword string
	// Region is the server's region, "us-east-1".
	Region string
	// UserAccessKey and UserSecretKey are the credentials of the
	// restricted user.
	UserAccessKey, UserSecretKey string

	port, consolePort int
	dataDir           string // the server's drive
	workDir           string // mc config, policies, server log
	mc                string // path of the mc binary
	minio             string // path of the minio binary

	mu       sync.Mutex // guards cmd, exited, buckets, attached and mc calls
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has exited
	buckets  []string      // made by NewBucket
	attached bool          // the restricted user's policy is attached
	// usersAdded: the restricted user exists, so a restart waits for it.
	usersAdded bool
}

var (
	minioShared     *MinIOServer
	minioSharedErr  error
	minioSharedOnce sync.Once
)

// MinIO returns the MinIO server shared by all tests of the test binary,
// starting it on first use. Main stops it after the tests. The test
// fails when MinIO is not installed. Tests must not stop
// the shared server; use StartMinIO for that.
func MinIO(t testing.TB) *MinIOServer {
	t.Helper()
	minioBinaries(t)
	minioSharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "backupd-minio-")
		if err != nil {
			minioSharedErr = err
			return
		}
		srv, err := startMinIO(dir)
		if err != nil {
			_ = os.RemoveAll(dir)
			minioSharedErr = err
			return
		}
		minioShared = srv
		registerStop(func() {
			srv.Stop()
			_ = os.RemoveAll(dir)
		})
	})
	if minioSharedErr != nil {
		t.Fatalf("starting the shared MinIO server: %v", minioSharedErr)
	}
	return minioShared
}

// StartMinIO starts a MinIO server of the test's own, which the test may
// Stop and Start again (outage tests). It is stopped and its data removed
// when the test ends.
func StartMinIO(t testing.TB) *MinIOServer {
	t.Helper()
	minioBinaries(t)
	dir := t.TempDir()
	srv, err := startMinIO(dir)
	if err != nil {
		t.Fatalf("starting a MinIO server: %v", err)
	}
	// Registered after TempDir, so it runs before the directory goes.
	t.Cleanup(srv.Stop)
	return srv
}

// minioBinaries fails t when minio or mc is not installed.
func minioBinaries(t testing.TB) {
	t.Helper()
	for _, name := range []string{"minio", "mc"} {
		if fi, err := os.Stat(filepath.Join(Dir(), "bin", name)); err != nil || fi.IsDir() {
			missing(t, name+" (scripts/install-minio.sh)")
		}
	}
}

// startMinIO starts a server with its drive and work files under dir,
// creates the mc alias and the restricted user. A port that another
// process takes between choosing and binding it makes the server exit;
// then it tries again with other ports.
func startMinIO(dir string) (*MinIOServer, error) {
	var lastErr error
	for attempt := range 3 {
		srv := &MinIOServer{
			RootUser:      "backupd-root",
			RootPassword:  minioRandomHex(16),
			Region:        "us-east-1",
			UserAccessKey: "backupd-user",
			UserSecretKey: minioRandomHex(16),
			dataDir:       filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			workDir:       filepath.Join(dir, fmt.Sprintf("work%d", attempt)),
			mc:            filepath.Join(Dir(), "bin", "mc"),
			minio:         filepath.Join(Dir(), "bin", "minio"),
		}
		for _, d := range []string{srv.dataDir, srv.workDir} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, err
			}
		}
		ports, err := minioFreePorts(2)
		if err != nil {
			return nil, err
		}
		srv.port, srv.consolePort = ports[0], ports[1]
		srv.Endpoint = net.JoinHostPort("127.0.0.1", strconv.Itoa(srv.port))
		srv.URL = "http://" + srv.Endpoint
		if lastErr = srv.Start(); lastErr != nil {
			srv.Stop()
			continue
		}
		if lastErr = srv.setUp(); lastErr != nil {
			srv.Stop()
			return nil, lastErr
		}
		return srv, nil
	}
	return nil, lastErr
}

// setUp points mc at the server as root and creates the restricted user,
// which has no rights until NewBucket grants some.
func (s *MinIOServer) setUp() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A server that answers its health check may still say "Server not
	// initialized yet" to its first admin call: try again for a while.
	deadline := time.Now().Add(minioReadyTimeout)
	for {
		err := s.mcRun("alias", "set", minioAlias, s.URL, s.RootUser, s.RootPassword)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "not initialized") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond) // polling a server's start, not synchronising tests
	}
	if err := s.mcRun("admin", "user", "add", minioAlias, s.UserAccessKey, s.UserSecretKey); err != nil {
		return err
	}
	s.usersAdded = true
	return nil
}

// Start starts the server (again), on the same port and drive as before,
// and waits until it answers its health checks. It fails if the server is
// running.
func (s *MinIOServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		select {
		case <-s.exited: // it died on its own; start it again
			s.cmd, s.exited = nil, nil
		default:
			return errors.New("minio: already running")
		}
	}
	logFile, err := os.OpenFile(filepath.Join(s.workDir, "minio.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(s.minio, "server", s.dataDir,
		"--address", s.Endpoint,
		"--console-address", net.JoinHostPort("127.0.0.1", strconv.Itoa(s.consolePort)),
		"--quiet", "--anonymous")
	cmd.Env = append(minioBaseEnv(),
		"MINIO_ROOT_USER="+s.RootUser,
		"MINIO_ROOT_PASSWORD="+s.RootPassword,
		"MINIO_REGION="+s.Region,
		"MINIO_BROWSER=off",
		"MINIO_CI_CD=1",
		"MINIO_UPDATE=off",
		"MINIO_SCANNER_SPEED=slowest",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("minio: start: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	s.cmd, s.exited = cmd, exited
	if err := s.waitReady(exited); err != nil {
		return fmt.Errorf("minio on %s: %w\n%s", s.Endpoint, err, s.logTail())
	}
	if s.usersAdded {
		if err := s.waitIAM(exited); err != nil {
			return fmt.Errorf("minio on %s: %w\n%s", s.Endpoint, err, s.logTail())
		}
	}
	return nil
}

// waitIAM waits, after a restart, until the server answers the restricted
// user's requests: its health endpoints turn ready before its IAM
// subsystem has loaded the users, and until then S3 calls fail with
// XMinioServerNotInitialized. Any other answer (AccessDenied included)
// means the user is known.
func (s *MinIOServer) waitIAM(exited <-chan struct{}) error {
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.UserAccessKey, s.UserSecretKey, ""), Region: s.Region})
	if err != nil {
		return err
	}
	deadline := time.Now().Add(minioReadyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.BucketExists(ctx, "backupd-readiness-probe")
		cancel()
		if err == nil || (minio.ToErrorResponse(err).Code != "" && minio.ToErrorResponse(err).Code != "XMinioServerNotInitialized") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("IAM not ready after %v: %v", minioReadyTimeout, err)
		}
		select {
		case <-exited:
			return errors.New("server exited while starting")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitReady polls the liveness and readiness endpoints until both answer
// 200, the server exits, or minioReadyTimeout passes.
func (s *MinIOServer) waitReady(exited <-chan struct{}) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(minioReadyTimeout)
	for _, path := range []string{"/minio/health/live", "/minio/health/ready"} {
		for {
			resp, err := client.Get(s.URL + path)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not ready after %v", path, minioReadyTimeout)
			}
			select {
			case <-exited:
				return errors.New("server exited while starting")
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for
// it to exit. Stopping a stopped server does nothing.
func (s *MinIOServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd, s.exited = nil, nil
}

// NewBucket creates a fresh, empty bucket as root and grants the
// restricted user exactly the policy of seeds/000 on it: ListBucket,
// GetBucketLocation and ListBucketMultipartUploads on the bucket;
// PutObject, GetObject, DeleteObject, ListMultipartUploadParts and
// AbortMultipartUpload on its objects. (The user has one policy, which
// lists every bucket NewBucket made: replacing a policy is much quicker
// than attaching one.)
func (s *MinIOServer) NewBucket(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	bucket := fmt.Sprintf("backupd-%d-%s", len(s.buckets)+1, minioRandomHex(4))
	if err := s.mcRun("mb", minioAlias+"/"+bucket); err != nil {
		t.Fatalf("creating bucket %s: %v", bucket, err)
	}
	s.buckets = append(s.buckets, bucket)
	const policy = "backupd-restricted"
	file := filepath.Join(s.workDir, policy+".json")
	if err := os.WriteFile(file, MinIOPolicy(s.buckets...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.mcRun("admin", "policy", "create", minioAlias, policy, file); err != nil {
		t.Fatalf("creating policy %s: %v", policy, err)
	}
	if !s.attached {
		if err := s.mcRun("admin", "policy", "attach", minioAlias, policy, "--user", s.UserAccessKey); err != nil {
			t.Fatalf("attaching policy %s: %v", policy, err)
		}
		s.attached = true
	}
	return bucket
}

// MinIOPolicy returns the IAM policy that NewBucket grants the restricted
// user on buckets: the S3_policy.json of seeds/000, verbatim but for the
// bucket names.
func MinIOPolicy(buckets ...string) []byte {
	type statement struct {
		Action   []string
		Effect   string
		Resource []string
		Sid      string
	}
	var onBuckets, onObjects []string
	for _, b := range buckets {
		onBuckets = append(onBuckets, "arn:aws:s3:::"+b)
		onObjects = append(onObjects, "arn:aws:s3:::"+b+"/*")
	}
	doc := struct {
		Statement []statement
		Version   string
	}{
		Statement: []statement{
			{
				Action:   []string{"s3:ListBucketMultipartUploads", "s3:ListBucket", "s3:GetBucketLocation"},
				Effect:   "Allow",
				Resource: onBuckets,
			},
			{
				Action: []string{"s3:PutObject", "s3:ListMultipartUploadParts", "s3:GetObject",
					"s3:DeleteObject", "s3:AbortMultipartUpload"},
				Effect:   "Allow",
				Resource: onObjects,
			},
		},
		Version: "2012-10-17",
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		panic(err) // cannot happen for this type
	}
	return b
}

// mcRun runs mc with the server's alias configured; s.mu must be held.
func (s *MinIOServer) mcRun(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.mc, append([]string{"--no-color", "--quiet", "--disable-pager"}, args...)...)
	cmd.Env = append(minioBaseEnv(), "MC_CONFIG_DIR="+filepath.Join(s.workDir, "mc"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		// Never show the arguments: "alias set" carries the root password.
		return fmt.Errorf("mc %s: %w: %s", args[0], err, strings.ReplaceAll(out.String(), s.RootPassword, "REDACTED"))
	}
	return nil
}

// logTail returns the end of the server's log, for error messages.
func (s *MinIOServer) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.workDir, "minio.log"))
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// minioBaseEnv returns the environment for minio and mc: the test's,
// without any MINIO_, MC_ or AWS_ variables, which would change what the
// server or client does (tests set such variables to check backends'
// fallbacks).
func minioBaseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "MINIO_") || strings.HasPrefix(kv, "MC_") || strings.HasPrefix(kv, "AWS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// minioFreePorts returns n distinct ports that were free on 127.0.0.1 a
// moment ago.
func minioFreePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// minioRandomHex returns 2n random hex digits.
func minioRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
