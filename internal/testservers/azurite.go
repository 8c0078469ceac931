package testservers

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// Azurite's fixed development account. The key is public (it is printed in
// Azurite's documentation); it protects nothing.
const (
	azuriteAccountName = "devstoreaccount1"
	azuriteAccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// AzuriteServer is a running Azurite blob service (scripts/install-azurite.sh).
type AzuriteServer struct {
	// BlobEndpoint is the service URL, http://127.0.0.1:PORT/devstoreaccount1.
	BlobEndpoint string
	// AccountName is Azurite's development account, devstoreaccount1.
	AccountName string
	// AccountKey is the well-known key of the development account.
	AccountKey string
	// ConnectionString holds the account, its key and BlobEndpoint.
	ConnectionString string

	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited
	dataDir string
	out     *azuriteOutput
}

var (
	azuriteOnce   sync.Once
	azuriteServer *AzuriteServer
	azuriteErr    error
)

// Azurite returns the Azurite blob service of this test binary, starting it
// on first use. It fails t when Azurite is not installed.
func Azurite(t testing.TB) *AzuriteServer {
	t.Helper()
	bin := filepath.Join(Dir(), "bin", "azurite-blob")
	if _, err := os.Stat(bin); err != nil {
		missing(t, "azurite-blob (scripts/install-azurite.sh)")
	}
	azuriteOnce.Do(func() { azuriteServer, azuriteErr = startAzurite(bin) })
	if azuriteErr != nil {
		t.Fatalf("testservers: %v", azuriteErr)
	}
	return azuriteServer
}

func startAzurite(bin string) (*AzuriteServer, error) {
	port, err := azuriteFreePort()
	if err != nil {
		return nil, fmt.Errorf("azurite: pick a port: %w", err)
	}
	dataDir, err := os.MkdirTemp("", "backupd-azurite-")
	if err != nil {
		return nil, fmt.Errorf("azurite: %w", err)
	}
	out := &azuriteOutput{}
	cmd := exec.Command(bin,
		"--blobHost", "127.0.0.1",
		"--blobPort", strconv.Itoa(port),
		"--location", dataDir,
		"--silent",
		"--disableTelemetry",
		"--skipApiVersionCheck",
		"--loose",
	)
	cmd.Dir = dataDir
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = os.RemoveAll(dataDir)
		return nil, fmt.Errorf("azurite: start %s: %w", bin, err)
	}
	endpoint := "http://127.0.0.1:" + strconv.Itoa(port) + "/" + azuriteAccountName
	s := &AzuriteServer{
		BlobEndpoint: endpoint,
		AccountName:  azuriteAccountName,
		AccountKey:   azuriteAccountKey,
		ConnectionString: "DefaultEndpointsProtocol=http;AccountName=" + azuriteAccountName +
			";AccountKey=" + azuriteAccountKey + ";BlobEndpoint=" + endpoint + ";",
		cmd:     cmd,
		exited:  make(chan struct{}),
		dataDir: dataDir,
		out:     out,
	}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	registerStop(s.stop)
	if err := s.waitReady(30 * time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

// waitReady polls the blob endpoint until it answers HTTP (any status: an
// unauthenticated request is refused, which proves the server is up).
func (s *AzuriteServer) waitReady(timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(s.BlobEndpoint + "?comp=list")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("azurite exited before it was ready: %s", s.out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("azurite not ready at %s after %v: %v; output: %s", s.BlobEndpoint, timeout, err, s.out.String())
		}
	}
}

// stop terminates the server and removes its data.
func (s *AzuriteServer) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	_ = os.RemoveAll(s.dataDir)
}

// NewContainer creates a fresh, empty, private container and returns its
// name; it is deleted when t ends.
func (s *AzuriteServer) NewContainer(t testing.TB) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := "test-" + hex.EncodeToString(b[:])
	c, err := s.containerClient(name)
	if err != nil {
		t.Fatalf("azurite: container client: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Create(ctx, nil); err != nil {
		t.Fatalf("azurite: create container %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.Delete(ctx, nil); err != nil {
			t.Logf("azurite: delete container %s: %v", name, err)
		}
	})
	return name
}

func (s *AzuriteServer) containerClient(name string) (*container.Client, error) {
	cred, err := container.NewSharedKeyCredential(s.AccountName, s.AccountKey)
	if err != nil {
		return nil, err
	}
	opts := &container.ClientOptions{}
	opts.Retry = policy.RetryOptions{MaxRetries: -1}
	return container.NewClientWithSharedKeyCredential(s.BlobEndpoint+"/"+name, cred, opts)
}

// azuriteFreePort asks the kernel for a free port on 127.0.0.1.
func azuriteFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok {
		return 0, errors.New("not a TCP address")
	}
	return addr.Port, nil
}

// azuriteOutput keeps the last 16 KiB of the server's output for error
// messages.
type azuriteOutput struct {
	mu  sync.Mutex
	buf []byte
}

func (o *azuriteOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, p...)
	if n := len(o.buf) - 16<<10; n > 0 {
		o.buf = append(o.buf[:0], o.buf[n:]...)
	}
	return len(p), nil
}

func (o *azuriteOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return string(o.buf)
}
