package deploy

import (
	"context"
	"crypto/tls"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/backupd/backupd/internal/testcerts"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// In tls mode the rendered daemon serves mutual TLS on its gRPC port with
// the files of the Certificate's Secret, mounted where its config says: a
// manager that dials the pod with the Service's name as server name and a
// client certificate of the CA is served; one without a certificate is
// refused.
func TestRenderedDaemonMutualTLS(t *testing.T) {
	srv, bucket := minioBucket(t)
	ca := testcerts.NewCA(t, "backupd test CA")
	dir := t.TempDir()
	srvCert, srvKey := ca.Issue(t, "backupd", true, dir, "server", "backupd.backupd.svc", "*.backupd.backupd.svc")
	cliCert, cliKey := ca.Issue(t, "ws-manager", false, dir, "client")
	read := func(p string) string { b, _ := os.ReadFile(p); return string(b) }
	overrides := minioOverrides(srv, bucket)
	overrides["grpc"] = map[string]any{"mode": "tls"}
	d := runRendered(t, valueCase{overrides: overrides}, map[string]map[string]string{
		"backupd-storage": {"accesskey": srv.UserAccessKey, "secretkey": srv.UserSecretKey},
		// What cert-manager writes into the Certificate's Secret.
		"backupd-tls": {"tls.crt": read(srvCert), "tls.key": read(srvKey), "ca.crt": string(ca.CertPEM())},
	})
	addr := d.ports[d.byName["grpc"]]
	if addr == "" {
		t.Fatal("no grpc port")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pair, err := tls.LoadX509KeyPair(cliCert, cliKey)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(certs []tls.Certificate) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: ca.Pool(), Certificates: certs, ServerName: "backupd.backupd.svc", MinVersion: tls.VersionTLS12})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	conn := dial([]tls.Certificate{pair})
	d.waitServing(ctx, conn)
	d.probe()
	if _, err := pb.NewBackupServiceClient(conn).ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: "alice"}); err != nil {
		t.Fatalf("ListSnapshots over mutual TLS: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 10*time.Second)
	defer cancelShort()
	if _, err := healthpb.NewHealthClient(dial(nil)).Check(short, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("a client without a certificate was served")
	}
}
