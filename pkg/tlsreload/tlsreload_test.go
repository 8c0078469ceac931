package tlsreload_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/testcerts"
	"github.com/backupd/backupd/pkg/tlsreload"
)

// errorLog collects the errors a server reports.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorLog) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

func (l *errorLog) get() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// serve runs a TLS server on 127.0.0.1 until the test ends. After the
// handshake it greets the client with "hello CN", CN being the common name
// of the client's certificate or "-" without one, and closes the
// connection.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				peer := "-"
				if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
					peer = pc[0].Subject.CommonName
				}
				fmt.Fprintf(c, "hello %s\n", peer)
			})
		}
	})
	return ln.Addr().String()
}

// result is what a client saw of one connection.
type result struct {
	server   *x509.Certificate // the server's certificate
	greeting string
	resumed  bool
}

// dial connects to addr, reads the server's greeting and closes. A server
// that refuses the client's certificate shows as an error: in TLS 1.3 the
// client's handshake ends before the server has checked it, so the refusal
// arrives with the first read.
func dial(addr string, cfg *tls.Config) (result, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return result{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return result{}, fmt.Errorf("read greeting: %w", err)
	}
	cs := c.ConnectionState()
	return result{server: cs.PeerCertificates[0], greeting: strings.TrimSpace(line), resumed: cs.DidResume}, nil
}

func mustDial(t *testing.T, addr string, cfg *tls.Config) result {
	t.Helper()
	r, err := dial(addr, cfg)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return r
}

func newServer(t *testing.T, files tlsreload.ServerFiles) (addr string, errs *errorLog) {
	t.Helper()
	errs = &errorLog{}
	cfg, err := tlsreload.Server(files, errs.add)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, cfg), errs
}

func newClient(t *testing.T, files tlsreload.ClientFiles) *tls.Config {
	t.Helper()
	cfg, err := tlsreload.Client(files)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantNoErrors(t *testing.T, errs *errorLog) {
	t.Helper()
	if e := errs.get(); len(e) > 0 {
		t.Errorf("onError called: %v", e)
	}
}

func TestServerCertificateVerifiedWithCA(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
	cert, key := ca.Issue(t, "server-1", true, dir, "server")
	cfg, err := tlsreload.Server(tlsreload.ServerFiles{Cert: cert, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 || cfg.ClientAuth != tls.NoClientCert {
		t.Errorf("MinVersion %x, ClientAuth %v; want TLS 1.2, NoClientCert", cfg.MinVersion, cfg.ClientAuth)
	}
	addr := serve(t, cfg)

	for _, serverName := range []string{"", "localhost"} {
		client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt"), ServerName: serverName})
		if r := mustDial(t, addr, client); r.server.Subject.CommonName != "server-1" || r.greeting != "hello -" {
			t.Errorf("ServerName %q: served %q, greeting %q; want server-1, hello -", serverName, r.server.Subject.CommonName, r.greeting)
		}
	}

	other := testcerts.NewCA(t, "other")
	other.WriteCert(t, filepath.Join(dir, "other.crt"))
	client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "other.crt")})
	var unknown x509.UnknownAuthorityError
	if _, err := dial(addr, client); !errors.As(err, &unknown) {
		t.Errorf("client trusting another CA: got %v, want x509.UnknownAuthorityError", err)
	}

	client = newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt")})
	client.MaxVersion = tls.VersionTLS11
	if _, err := dial(addr, client); err == nil {
		t.Error("TLS 1.1 client accepted")
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
	cert, key := ca.Issue(t, "server", true, dir, "server")
	addr, errs := newServer(t, tlsreload.ServerFiles{Cert: cert, Key: key, ClientCA: filepath.Join(dir, "ca.crt")})

	clientCert, clientKey := ca.Issue(t, "client-1", false, dir, "client")
	other := testcerts.NewCA(t, "other")
	otherCert, otherKey := other.Issue(t, "intruder", false, dir, "intruder")
	serverAsClient, serverAsClientKey := ca.Issue(t, "server-only", true, dir, "server-only")

	for _, tc := range []struct {
		name          string
		cert, key     string
		wantGreeting  string // empty: refused
		maxTLSVersion uint16
	}{
		{name: "certificate from the CA", cert: clientCert, key: clientKey, wantGreeting: "hello client-1"},
		{name: "certificate from the CA, TLS 1.2", cert: clientCert, key: clientKey, wantGreeting: "hello client-1", maxTLSVersion: tls.VersionTLS12},
		{name: "no certificate"},
		{name: "no certificate, TLS 1.2", maxTLSVersion: tls.VersionTLS12},
		{name: "certificate from another CA", cert: otherCert, key: otherKey},
		{name: "certificate from the CA for server authentication only", cert: serverAsClient, key: serverAsClientKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt"), Cert: tc.cert, Key: tc.key})
			client.MaxVersion = tc.maxTLSVersion
			r, err := dial(addr, client)
			switch {
			case tc.wantGreeting == "" && err == nil:
				t.Errorf("accepted: greeting %q", r.greeting)
			case tc.wantGreeting != "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.wantGreeting != "" && r.greeting != tc.wantGreeting:
				t.Errorf("greeting %q, want %q", r.greeting, tc.wantGreeting)
			}
		})
	}
	wantNoErrors(t, errs)
}

func TestServerRotationInPlace(t *testing.T) {
	for _, tc := range []struct {
		name string
		// age, when set, is how old the files' modification times are
		// made after each write: old files are told apart by their
		// stat alone, fresh ones also by their content.
		age bool
	}{
		{name: "fresh files"},
		{name: "old files", age: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ca := testcerts.NewCA(t, "ca")
			ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
			age := func(hours int, paths ...string) {
				if !tc.age {
					return
				}
				for _, p := range paths {
					mtime := time.Now().Add(-time.Duration(hours) * time.Hour)
					if err := os.Chtimes(p, mtime, mtime); err != nil {
						t.Fatal(err)
					}
				}
			}
			cert, key := ca.Issue(t, "server-1", true, dir, "server")
			age(2, cert, key)
			addr, errs := newServer(t, tlsreload.ServerFiles{Cert: cert, Key: key})
			client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt")})

			first := mustDial(t, addr, client).server
			if first.Subject.CommonName != "server-1" {
				t.Fatalf("served %q, want server-1", first.Subject.CommonName)
			}
			ca.Issue(t, "server-2", true, dir, "server")
			age(1, cert, key)
			second := mustDial(t, addr, client).server
			if second.Subject.CommonName != "server-2" || second.SerialNumber.Cmp(first.SerialNumber) == 0 {
				t.Errorf("after rotation served %q serial %v, want server-2 with a new serial", second.Subject.CommonName, second.SerialNumber)
			}
			wantNoErrors(t, errs)
		})
	}
}

// TestServerRotationSameStat rewrites the files in place keeping their
// size and modification time, as two writes within one tick of a coarse
// file system clock can: recently modified files are compared by content.
func TestServerRotationSameStat(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
	cert, key := ca.Issue(t, "server-1", true, dir, "server")
	before := map[string]os.FileInfo{}
	for _, p := range []string{cert, key} {
		// Room for the next pair, whose PEM may be a little longer.
		writeFile(t, p, append(readFile(t, p), strings.Repeat("\n", 64)...))
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		before[p] = fi
	}
	addr, errs := newServer(t, tlsreload.ServerFiles{Cert: cert, Key: key})
	client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt")})
	mustDial(t, addr, client)

	ca.Issue(t, "server-2", true, dir, "server")
	for p, old := range before {
		data := readFile(t, p)
		writeFile(t, p, append(data, strings.Repeat("\n", int(old.Size())-len(data))...))
		if err := os.Chtimes(p, old.ModTime(), old.ModTime()); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(fi, old) || fi.Size() != old.Size() || !fi.ModTime().Equal(old.ModTime()) {
			t.Fatalf("%s: stat changed; the test proves nothing", p)
		}
	}
	if r := mustDial(t, addr, client); r.server.Subject.CommonName != "server-2" {
		t.Errorf("after rotation served %q, want server-2", r.server.Subject.CommonName)
	}
	wantNoErrors(t, errs)
}

// secretVolume lays out files as the kubelet does in a secret volume:
// dir/..2026_x/NAME holds the data, dir/..data links to the current
// ..2026_x, and dir/NAME links to ..data/NAME.
type secretVolume struct {
	t    *testing.T
	dir  string
	gen  int
	tsek string // current ..2026_x directory
}

func newSecretVolume(t *testing.T, names ...string) *secretVolume {
	v := &secretVolume{t: t, dir: t.TempDir()}
	for _, name := range names {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(v.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// update writes a new generation of files with write(genDir) and swaps
// ..data to it atomically, removing the previous one.
func (v *secretVolume) update(write func(genDir string)) {
	t := v.t
	v.gen++
	tsek := fmt.Sprintf("..2026_01_02_15_04_05.%d", v.gen)
	if err := os.Mkdir(filepath.Join(v.dir, tsek), 0o755); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(v.dir, tsek))
	if err := os.Symlink(tsek, filepath.Join(v.dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(v.dir, "..data_tmp"), filepath.Join(v.dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if v.tsek != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, v.tsek)); err != nil {
			t.Fatal(err)
		}
	}
	v.tsek = tsek
}

func (v *secretVolume) path(name string) string { return filepath.Join(v.dir, name) }

func TestServerRotationSymlinkSwap(t *testing.T) {
	// The server's secret: tls.crt, tls.key and the client CA, ca.crt.
	vol := newSecretVolume(t, "tls.crt", "tls.key", "ca.crt")
	clientDir := t.TempDir()
	ca1 := testcerts.NewCA(t, "ca-1")
	ca1.WriteCert(t, filepath.Join(clientDir, "ca-1.crt"))
	client1Cert, client1Key := ca1.Issue(t, "client-1", false, clientDir, "client-1")
	ca2 := testcerts.NewCA(t, "ca-2")
	ca2.WriteCert(t, filepath.Join(clientDir, "ca-2.crt"))
	client2Cert, client2Key := ca2.Issue(t, "client-2", false, clientDir, "client-2")

	vol.update(func(dir string) {
		ca1.Issue(t, "server-1", true, dir, "tls")
		ca1.WriteCert(t, filepath.Join(dir, "ca.crt"))
	})
	addr, errs := newServer(t, tlsreload.ServerFiles{Cert: vol.path("tls.crt"), Key: vol.path("tls.key"), ClientCA: vol.path("ca.crt")})
	client1 := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(clientDir, "ca-1.crt"), Cert: client1Cert, Key: client1Key})
	client2 := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(clientDir, "ca-1.crt"), Cert: client2Cert, Key: client2Key})

	if r := mustDial(t, addr, client1); r.server.Subject.CommonName != "server-1" || r.greeting != "hello client-1" {
		t.Fatalf("served %q, greeting %q; want server-1, hello client-1", r.server.Subject.CommonName, r.greeting)
	}
	if _, err := dial(addr, client2); err == nil {
		t.Fatal("client of ca-2 accepted before the CA was rotated")
	}

	// Rotate the server certificate and the client CA in one swap.
	vol.update(func(dir string) {
		ca1.Issue(t, "server-2", true, dir, "tls")
		ca2.WriteCert(t, filepath.Join(dir, "ca.crt"))
	})
	if r := mustDial(t, addr, client2); r.server.Subject.CommonName != "server-2" || r.greeting != "hello client-2" {
		t.Errorf("after rotation served %q, greeting %q; want server-2, hello client-2", r.server.Subject.CommonName, r.greeting)
	}
	if _, err := dial(addr, client1); err == nil {
		t.Error("client of ca-1 accepted after the CA was rotated")
	}
	wantNoErrors(t, errs)
}

// TestClientCARotationEndsResumption checks that a client whose CA was
// removed from the server's bundle cannot resume a session begun before.
func TestClientCARotationEndsResumption(t *testing.T) {
	dir := t.TempDir()
	ca1 := testcerts.NewCA(t, "ca-1")
	ca1.WriteCert(t, filepath.Join(dir, "ca.crt"))
	ca1.WriteCert(t, filepath.Join(dir, "client-ca.crt"))
	cert, key := ca1.Issue(t, "server", true, dir, "server")
	clientCert, clientKey := ca1.Issue(t, "client-1", false, dir, "client")
	addr, errs := newServer(t, tlsreload.ServerFiles{Cert: cert, Key: key, ClientCA: filepath.Join(dir, "client-ca.crt")})
	client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt"), Cert: clientCert, Key: clientKey})
	client.ClientSessionCache = tls.NewLRUClientSessionCache(4)

	mustDial(t, addr, client)
	if r := mustDial(t, addr, client); !r.resumed {
		t.Fatal("second connection did not resume the session; the test proves nothing")
	}
	testcerts.NewCA(t, "ca-2").WriteCert(t, filepath.Join(dir, "client-ca.crt"))
	if r, err := dial(addr, client); err == nil {
		t.Errorf("client of the removed CA accepted (resumed %v)", r.resumed)
	}
	wantNoErrors(t, errs)
}

func TestServerKeepsLastGoodCertificate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(t *testing.T, dir, cert, key string)
		wantErr string // in the reported error
	}{
		{
			name: "garbage in the certificate",
			breakIt: func(t *testing.T, dir, cert, key string) {
				writeFile(t, cert, []byte("garbage\n"))
			},
			wantErr: "server.crt",
		},
		{
			name: "half-written certificate",
			breakIt: func(t *testing.T, dir, cert, key string) {
				data := readFile(t, cert)
				writeFile(t, cert, data[:len(data)/2])
			},
			wantErr: "server.crt",
		},
		{
			name: "new certificate, old key",
			breakIt: func(t *testing.T, dir, cert, key string) {
				old := readFile(t, key)
				testcerts.NewCA(t, "ca").Issue(t, "server-x", true, dir, "server")
				writeFile(t, key, old)
			},
			wantErr: "private key does not match",
		},
		{
			name: "key removed",
			breakIt: func(t *testing.T, dir, cert, key string) {
				if err := os.Remove(key); err != nil {
					t.Fatal(err)
				}
			},
			wantErr: "server.key",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ca := testcerts.NewCA(t, "ca")
			ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
			cert, key := ca.Issue(t, "server-1", true, dir, "server")
			addr, errs := newServer(t, tlsreload.ServerFiles{Cert: cert, Key: key})
			client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt")})
			mustDial(t, addr, client)

			tc.breakIt(t, dir, cert, key)
			for range 2 {
				if r := mustDial(t, addr, client); r.server.Subject.CommonName != "server-1" {
					t.Errorf("with broken files served %q, want the last good server-1", r.server.Subject.CommonName)
				}
			}
			e := errs.get()
			if len(e) != 1 || !strings.Contains(e[0].Error(), tc.wantErr) {
				t.Errorf("reported %v; want one error mentioning %q", e, tc.wantErr)
			}

			ca.Issue(t, "server-2", true, dir, "server")
			if r := mustDial(t, addr, client); r.server.Subject.CommonName != "server-2" {
				t.Errorf("after the files were fixed served %q, want server-2", r.server.Subject.CommonName)
			}
			if e := errs.get(); len(e) != 1 {
				t.Errorf("reported %v after the files were fixed; want only the earlier error", e)
			}
		})
	}
}

func TestServerKeepsLastGoodClientCA(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
	cert, key := ca.Issue(t, "server", true, dir, "server")
	clientCert, clientKey := ca.Issue(t, "client-1", false, dir, "client")
	addr, errs := newServer(t, tlsreload.ServerFiles{Cert: cert, Key: key, ClientCA: filepath.Join(dir, "ca.crt")})
	client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt"), Cert: clientCert, Key: clientKey})

	// Half a bundle: the first certificate whole, the second cut short.
	bundle := append(ca.CertPEM(), testcerts.NewCA(t, "ca-2").CertPEM()...)
	writeFile(t, filepath.Join(dir, "ca.crt"), bundle[:len(bundle)-40])
	if r := mustDial(t, addr, client); r.greeting != "hello client-1" {
		t.Errorf("greeting %q, want hello client-1", r.greeting)
	}
	if e := errs.get(); len(e) != 1 || !strings.Contains(e[0].Error(), "ca.crt") {
		t.Errorf("reported %v; want one error naming ca.crt", e)
	}
}

func TestServerInitialLoadErrors(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	cert, key := ca.Issue(t, "server", true, dir, "server")
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("not PEM\n"))
	missing := filepath.Join(dir, "missing.pem")
	_, otherKey := ca.Issue(t, "other", true, dir, "other")

	for _, tc := range []struct {
		name    string
		files   tlsreload.ServerFiles
		wantErr string
	}{
		{"no certificate", tlsreload.ServerFiles{Key: key}, "required"},
		{"no key", tlsreload.ServerFiles{Cert: cert}, "required"},
		{"missing certificate", tlsreload.ServerFiles{Cert: missing, Key: key}, missing},
		{"missing key", tlsreload.ServerFiles{Cert: cert, Key: missing}, missing},
		{"garbage certificate", tlsreload.ServerFiles{Cert: garbage, Key: key}, garbage},
		{"garbage key", tlsreload.ServerFiles{Cert: cert, Key: garbage}, garbage},
		{"mismatched key", tlsreload.ServerFiles{Cert: cert, Key: otherKey}, "does not match"},
		{"missing client CA", tlsreload.ServerFiles{Cert: cert, Key: key, ClientCA: missing}, missing},
		{"garbage client CA", tlsreload.ServerFiles{Cert: cert, Key: key, ClientCA: garbage}, garbage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tlsreload.Server(tc.files, nil)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	cert, key := ca.Issue(t, "client", false, dir, "client")
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name    string
		files   tlsreload.ClientFiles
		wantErr string
	}{
		{"certificate without key", tlsreload.ClientFiles{Cert: cert}, "together"},
		{"key without certificate", tlsreload.ClientFiles{Key: key}, "together"},
		{"missing CA", tlsreload.ClientFiles{CA: missing}, missing},
		{"missing key", tlsreload.ClientFiles{Cert: cert, Key: missing}, missing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tlsreload.Client(tc.files)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("got error %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
}

func TestClientSystemRoots(t *testing.T) {
	cfg := newClient(t, tlsreload.ClientFiles{ServerName: "backupd.example"})
	if cfg.RootCAs != nil || cfg.GetClientCertificate != nil || cfg.ServerName != "backupd.example" || cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("got RootCAs %v, GetClientCertificate set %v, ServerName %q, MinVersion %x; want system roots, no client certificate, backupd.example, TLS 1.2",
			cfg.RootCAs, cfg.GetClientCertificate != nil, cfg.ServerName, cfg.MinVersion)
	}
}

func TestClientCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	ca.WriteCert(t, filepath.Join(dir, "ca.crt"))
	cert, key := ca.Issue(t, "server", true, dir, "server")
	addr, _ := newServer(t, tlsreload.ServerFiles{Cert: cert, Key: key, ClientCA: filepath.Join(dir, "ca.crt")})
	clientCert, clientKey := ca.Issue(t, "client-1", false, dir, "client")
	client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(dir, "ca.crt"), Cert: clientCert, Key: clientKey})

	if r := mustDial(t, addr, client); r.greeting != "hello client-1" {
		t.Fatalf("greeting %q, want hello client-1", r.greeting)
	}
	ca.Issue(t, "client-2", false, dir, "client")
	if r := mustDial(t, addr, client); r.greeting != "hello client-2" {
		t.Errorf("after rotation greeting %q, want hello client-2", r.greeting)
	}
	// A broken rewrite: the last good certificate, still valid, is used.
	writeFile(t, clientCert, []byte("garbage\n"))
	if r := mustDial(t, addr, client); r.greeting != "hello client-2" {
		t.Errorf("with a broken certificate file greeting %q, want hello client-2", r.greeting)
	}
}

// TestServerRotationUnderLoad swaps the server's secret volume while
// clients keep connecting: every handshake gets a whole certificate, old
// or new, and no error is reported.
func TestServerRotationUnderLoad(t *testing.T) {
	vol := newSecretVolume(t, "tls.crt", "tls.key")
	caDir := t.TempDir()
	ca := testcerts.NewCA(t, "ca")
	ca.WriteCert(t, filepath.Join(caDir, "ca.crt"))
	vol.update(func(dir string) { ca.Issue(t, "server-0", true, dir, "tls") })
	addr, errs := newServer(t, tlsreload.ServerFiles{Cert: vol.path("tls.crt"), Key: vol.path("tls.key")})
	client := newClient(t, tlsreload.ClientFiles{CA: filepath.Join(caDir, "ca.crt")})

	const rotations = 20
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := dial(addr, client); err != nil {
					t.Errorf("dial during rotation: %v", err)
					return
				}
			}
		})
	}
	for i := 1; i <= rotations; i++ {
		vol.update(func(dir string) { ca.Issue(t, fmt.Sprintf("server-%d", i), true, dir, "tls") })
	}
	close(done)
	wg.Wait()
	want := fmt.Sprintf("server-%d", rotations)
	if r := mustDial(t, addr, client); r.server.Subject.CommonName != want {
		t.Errorf("after rotations served %q, want %s", r.server.Subject.CommonName, want)
	}
	wantNoErrors(t, errs)
}
