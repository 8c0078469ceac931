package tlsreload_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/backupd/backupd/internal/testcerts"
	"github.com/backupd/backupd/pkg/tlsreload"
)

// TestGRPC checks the configurations as backupd and backupctl use them,
// through grpc/credentials (which clones them and adds "h2" to
// NextProtos), with mutual TLS and a rotation of the server certificate.
func TestGRPC(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
	cert, key := ca.Issue(t, "server-1", true, dir, "server")
	clientCert, clientKey := ca.Issue(t, "client", false, dir, "client")

	errs := &errorLog{}
	serverTLS, err := tlsreload.Server(tlsreload.ServerFiles{Cert: cert, Key: key, ClientCA: filepath.Join(dir, "ca.crt")}, errs.add)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS)))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})

	// check makes a new connection and returns the server certificate's
	// common name.
	check := func(files tlsreload.ClientFiles) (string, error) {
		clientTLS, err := tlsreload.Client(files)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var p peer.Peer
		if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
			return "", err
		}
		info, ok := p.AuthInfo.(credentials.TLSInfo)
		if !ok {
			t.Fatalf("AuthInfo %T, want credentials.TLSInfo", p.AuthInfo)
		}
		return info.State.PeerCertificates[0].Subject.CommonName, nil
	}

	withCert := tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt"), Cert: clientCert, Key: clientKey}
	if cn, err := check(withCert); err != nil || cn != "server-1" {
		t.Fatalf("Check: server %q, error %v; want server-1, no error", cn, err)
	}
	if _, err := check(tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt")}); err == nil {
		t.Error("Check without a client certificate succeeded")
	}
	ca.Issue(t, "server-2", true, dir, "server")
	if cn, err := check(withCert); err != nil || cn != "server-2" {
		t.Errorf("Check after rotation: server %q, error %v; want server-2, no error", cn, err)
	}
	wantNoErrors(t, errs)
}
