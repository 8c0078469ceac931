package testservers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// GCSServer is a running fake-gcs-server (a Google Cloud Storage emulator)
// that keeps its objects in memory.
type GCSServer struct {
	// Endpoint is the JSON API endpoint, "http://127.0.0.1:PORT/storage/v1/",
	// for option.WithEndpoint.
	Endpoint string
	// Host is "127.0.0.1:PORT", for STORAGE_EMULATOR_HOST.
	Host string
	// Project is the project ID the buckets are created in.
	Project string
}

// gcsProject is the project of the buckets NewBucket creates.
const gcsProject = "test-project"

var (
	fakeGCSOnce  sync.Once
	fakeGCSSrv   *GCSServer
	fakeGCSErr   error
	gcsBucketSeq atomic.Int64
)

// FakeGCS returns the fake-gcs-server shared by the tests of the binary,
// starting it on first use.
func FakeGCS(t testing.TB) *GCSServer {
	t.Helper()
	bin := filepath.Join(Dir(), "bin", "fake-gcs-server")
	if _, err := os.Stat(bin); err != nil {
		missing(t, "fake-gcs-server")
	}
	fakeGCSOnce.Do(func() { fakeGCSSrv, fakeGCSErr = startFakeGCS(bin) })
	if fakeGCSErr != nil {
		t.Fatalf("fake-gcs-server: %v", fakeGCSErr)
	}
	return fakeGCSSrv
}

// startFakeGCS starts the server on a free port and waits until it is
// ready, trying a few ports in case another process takes the one picked.
func startFakeGCS(bin string) (*GCSServer, error) {
	var err error
	for range 3 {
		var srv *GCSServer
		srv, err = startFakeGCSOnce(bin)
		if err == nil {
			return srv, nil
		}
	}
	return nil, err
}

func startFakeGCSOnce(bin string) (*GCSServer, error) {
	port, err := gcsFreePort()
	if err != nil {
		return nil, err
	}
	host := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	base := "http://" + host
	logDir, err := os.MkdirTemp("", "fake-gcs-server-")
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(logDir, "log"))
	if err != nil {
		os.RemoveAll(logDir)
		return nil, err
	}
	cmd := exec.Command(bin,
		"-scheme", "http",
		"-host", "127.0.0.1",
		"-port", strconv.Itoa(port),
		// Reads go to the XML API at the endpoint's host, so that must
		// be the "public host"; uploads continue at the external URL.
		"-public-host", host,
		"-external-url", base,
		"-backend", "memory",
		"-log-level", "warn",
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		os.RemoveAll(logDir)
		return nil, err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // reaped here; the exit shows through exited
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
		logFile.Close()
		os.RemoveAll(logDir)
	}
	if err := gcsWaitReady(base+"/_internal/healthcheck", exited, 30*time.Second); err != nil {
		stop()
		log, _ := os.ReadFile(logFile.Name())
		return nil, fmt.Errorf("%w; log:\n%s", err, gcsTail(log, 2000))
	}
	registerStop(stop)
	return &GCSServer{Endpoint: base + "/storage/v1/", Host: host, Project: gcsProject}, nil
}

// gcsFreePort returns a port that was free on 127.0.0.1 a moment ago.
func gcsFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// gcsWaitReady polls url until it answers 200, the process exits or timeout
// passes.
func gcsWaitReady(url string, exited <-chan struct{}, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v", timeout, err)
		}
		select {
		case <-exited:
			return errors.New("exited before it was ready")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// gcsTail returns the last n bytes of b.
func gcsTail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// NewBucket creates a fresh, empty bucket and returns its name.
func (s *GCSServer) NewBucket(t testing.TB) string {
	t.Helper()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := fmt.Sprintf("test-%d-%s", gcsBucketSeq.Add(1), hex.EncodeToString(rnd[:]))
	body := fmt.Sprintf(`{"name":%q}`, name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.Endpoint+"b?project="+gcsProject, strings.NewReader(body))
	if err != nil {
		t.Fatalf("fake-gcs-server: create bucket %s: %v", name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("fake-gcs-server: create bucket %s: %v", name, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("fake-gcs-server: create bucket %s: %s: %s", name, resp.Status, bytes.TrimSpace(msg))
	}
	return name
}
