package daemon

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/backupd/backupd/internal/testcerts"
	"github.com/backupd/backupd/pkg/tlsreload"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "backupd test CA")
	other := testcerts.NewCA(t, "someone else's CA")
	caFile := filepath.Join(dir, "ca.crt")
	ca.WriteCert(t, caFile)
	srvCert, srvKey := ca.Issue(t, "backupd", true, dir, "server")
	goodCert, goodKey := ca.Issue(t, "ws-manager", false, dir, "client")
	badCert, badKey := other.Issue(t, "intruder", false, dir, "intruder")

	e := newEnvTLS(t, func(c *Config) {
		c.Listen = "127.0.0.1:0"
		c.TLS = TLS{Cert: srvCert, Key: srvKey, ClientCA: caFile}
	})
	call := func(files tlsreload.ClientFiles) error {
		tc, err := tlsreload.Client(files)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = pb.NewBackupServiceClient(conn).ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "o"})
		return err
	}
	if err := call(tlsreload.ClientFiles{CA: caFile, Cert: goodCert, Key: goodKey}); err != nil {
		t.Fatalf("client with a certificate from the CA: %v", err)
	}
	if err := call(tlsreload.ClientFiles{CA: caFile}); status.Code(err) != codes.Unavailable {
		t.Fatalf("client without a certificate: %v", err)
	}
	if err := call(tlsreload.ClientFiles{CA: caFile, Cert: badCert, Key: badKey}); status.Code(err) != codes.Unavailable {
		t.Fatalf("client with a certificate from another CA: %v", err)
	}
	// Plaintext is refused too.
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext client: %v", err)
	}

	// cert-manager rotates the server certificate in place: the next
	// connection gets the new one, without a restart.
	served := func() string {
		c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", NextProtos: []string{"h2"},
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				cert, err := tls.LoadX509KeyPair(goodCert, goodKey)
				return &cert, err
			}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if cn := served(); cn != "backupd" {
		t.Fatalf("served %q", cn)
	}
	ca.Issue(t, "backupd-rotated", true, dir, "server")
	if cn := served(); cn != "backupd-rotated" {
		t.Fatalf("after rotation the daemon serves %q", cn)
	}
	if err := call(tlsreload.ClientFiles{CA: caFile, Cert: goodCert, Key: goodKey}); err != nil {
		t.Fatalf("gRPC after rotation: %v", err)
	}
}

// tlsEnv is a daemon serving TLS on loopback.
type tlsEnv struct{ addr string }

func newEnvTLS(t *testing.T, mutate func(*Config)) *tlsEnv {
	t.Helper()
	cfg := Config{WorkspaceRoots: []string{t.TempDir()}, CacheDir: "none"}
	cfg.Storage.URL = "file://" + t.TempDir()
	mutate(&cfg)
	srv, err := New(context.Background(), cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return &tlsEnv{addr: lis.Addr().String()}
}

func TestConfigRefusesPlaintextOffLoopback(t *testing.T) {
	cfg := Config{Listen: "0.0.0.0:7070", WorkspaceRoots: []string{"/workspaces"}}
	cfg.Storage.URL = "file:///tmp/x"
	cfg.SetDefaults()
	if err := cfg.Validate(); err == nil {
		t.Fatal("plaintext on 0.0.0.0 accepted")
	}
	cfg.AllowInsecure = true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("with allow_insecure: %v", err)
	}
	for _, l := range []string{"127.0.0.1:7070", "[::1]:7070", "localhost:7070", "unix:///run/backupd.sock"} {
		cfg := Config{Listen: l, WorkspaceRoots: []string{"/workspaces"}}
		cfg.Storage.URL = "file:///tmp/x"
		cfg.SetDefaults()
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: %v", l, err)
		}
	}
}
