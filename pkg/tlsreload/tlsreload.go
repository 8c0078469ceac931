// Package tlsreload builds TLS configurations from PEM files that are read
// again when the files change, so that certificates rotated on disk (by
// cert-manager through a Kubernetes secret volume, or by hand) take effect
// on the next handshake without a restart.
//
// # Reloading
//
// On every handshake the files are stat'ed (os.Stat, following symlinks)
// and their modification time, size, device and inode compared with those
// seen at the last load. That catches both ways files are rotated: written
// in place, and a Kubernetes secret volume's atomic swap of its ..data
// symlink (tls.crt -> ..data/tls.crt -> ..2026_01_02_.../tls.crt), which
// changes the inode. A file changed less than two seconds before it was
// last looked at may change again without its stat changing (file system
// clocks are coarse), so until it is older its content is compared too.
// A stat costs about a microsecond, far less than the handshake; nothing
// is polled between handshakes, and no goroutine is started.
//
// When the changed files do not load (a half-written file, a certificate
// whose new key has not been written yet, garbage), the last good
// certificate and CA bundle go on being used and the error is reported,
// once per change, to the server's onError; the next change is tried
// again. Files found changing while they were read are looked at again
// before an error is reported, so an ordinary rotation reports nothing.
// A failing first load is an error of [Server] or [Client], naming the
// file.
//
// Connections already established are not affected by a reload; only new
// handshakes see the new files.
package tlsreload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// ServerFiles names the PEM files of a TLS server, for example those of a
// cert-manager secret mounted at /etc/backupd/tls: tls.crt, tls.key and
// ca.crt.
type ServerFiles struct {
	// Cert is the server certificate, followed by any intermediates.
	// Required.
	Cert string
	// Key is the certificate's private key. Required.
	Key string
	// ClientCA, when set, is a bundle of CA certificates, and clients
	// must present a certificate for client authentication that one of
	// them signed (mutual TLS). Empty means clients are not asked for
	// certificates.
	ClientCA string
}

// Server returns a configuration for a TLS server (TLS 1.2 or later)
// serving the certificate in o.Cert and o.Key and, with o.ClientCA set,
// requiring and verifying client certificates against that bundle. All
// three files are reloaded as the package documentation describes;
// onError, which may be nil, receives the errors of failed reloads and
// must be safe for concurrent use.
//
// The configuration may be cloned (as gRPC's credentials.NewTLS does) and
// its other fields set as usual. Client certificates are verified against
// the current bundle in VerifyConnection, also when a session is resumed,
// so a client whose CA has been removed from the bundle cannot resume an
// earlier session; callers must not replace VerifyConnection or ClientAuth,
// which carry that verification. As ClientAuth is tls.RequireAnyClientCert,
// ConnectionState.VerifiedChains stays empty; PeerCertificates[0] is the
// verified client certificate.
func Server(o ServerFiles, onError func(error)) (*tls.Config, error) {
	if o.Cert == "" || o.Key == "" {
		return nil, errors.New("tlsreload: server certificate and key files are both required")
	}
	if onError == nil {
		onError = func(error) {}
	}
	pair, err := watch([]string{o.Cert, o.Key}, parseKeyPair(o.Cert, o.Key), onError)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, _ := pair.current()
			return cert, nil
		},
	}
	if o.ClientCA != "" {
		cas, err := watch([]string{o.ClientCA}, parseCABundle(o.ClientCA), onError)
		if err != nil {
			return nil, err
		}
		// The CAs are not given to crypto/tls as ClientCAs, which a
		// handshake could only see through GetConfigForClient: the
		// Config that returns replaces the caller's, so whatever the
		// caller sets on its copy (NextProtos, cipher suites,
		// KeyLogWriter...) would be silently ignored.
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			roots, _ := cas.current()
			return verifyClient(roots, cs.PeerCertificates)
		}
	}
	return cfg, nil
}

// verifyClient verifies a client's chain as crypto/tls does with
// tls.RequireAndVerifyClientCert.
func verifyClient(roots *x509.CertPool, chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("tlsreload: client did not present a certificate")
	}
	opts := x509.VerifyOptions{
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, c := range chain[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := chain[0].Verify(opts); err != nil {
		return fmt.Errorf("tlsreload: client certificate %q: %w", chain[0].Subject.CommonName, err)
	}
	return nil
}

// ClientFiles names the PEM files of a TLS client such as
// backupctl --daemon.
type ClientFiles struct {
	// CA is a bundle of CA certificates the server's certificate is
	// verified against; empty means the system's roots. It is read once.
	CA string
	// Cert and Key are the client certificate (with any intermediates)
	// and its key, presented when the server asks for one (mutual TLS).
	// Both or neither.
	Cert string
	Key  string
	// ServerName is the name the server's certificate must hold; empty
	// means the host of the address dialled.
	ServerName string
}

// Client returns a configuration for a TLS client (TLS 1.2 or later). The
// client certificate is reloaded when its files change, as the package
// documentation describes; as a client has no one to report to, a failed
// reload keeps the last good certificate until it expires, and after that
// fails the handshake with the reload's error.
func Client(o ClientFiles) (*tls.Config, error) {
	if (o.Cert == "") != (o.Key == "") {
		return nil, errors.New("tlsreload: client certificate and key files must be given together")
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: o.ServerName,
	}
	if o.CA != "" {
		data, err := os.ReadFile(o.CA)
		if err != nil {
			return nil, fmt.Errorf("tlsreload: %w", err)
		}
		if cfg.RootCAs, err = parseCABundle(o.CA)([][]byte{data}); err != nil {
			return nil, err
		}
	}
	if o.Cert != "" {
		pair, err := watch([]string{o.Cert, o.Key}, parseKeyPair(o.Cert, o.Key), func(error) {})
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := pair.current()
			if err != nil && time.Now().After(cert.Leaf.NotAfter) {
				return nil, err
			}
			return cert, nil
		}
	}
	return cfg, nil
}
