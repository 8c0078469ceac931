package gcs

import (
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// checkCredentialsFile reads a credentials file before the client library
// does, so that a missing or malformed one is reported in one line that
// names the file (the library's errors name neither the file nor the
// field, and a bad private key comes out as an ASN.1 dump). With
// serviceAccount the file must be a service-account key; otherwise any
// application default credentials file with a type.
func checkCredentialsFile(what, path string, serviceAccount bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is named once, below
		}
		return fmt.Errorf("%s %s: %w", what, path, err)
	}
	var key struct {
		Type        string `json:"type"`
		ClientEmail string `json:"client_email"`
		PrivateKey  string `json:"private_key"`
	}
	if err := json.Unmarshal(b, &key); err != nil {
		return fmt.Errorf("%s %s: not a JSON credentials file (want the key file of `gcloud iam service-accounts keys create`)", what, path)
	}
	if key.Type == "" {
		return fmt.Errorf("%s %s: no \"type\" field: not a Google credentials file", what, path)
	}
	if key.Type != "service_account" {
		if serviceAccount {
			return fmt.Errorf("%s %s: type %q, want a service-account key (type service_account)", what, path, key.Type)
		}
		return nil
	}
	if key.ClientEmail == "" {
		return fmt.Errorf("%s %s: service-account key without client_email", what, path)
	}
	if err := checkPrivateKey(key.PrivateKey); err != nil {
		return fmt.Errorf("%s %s: private_key %v", what, path, err)
	}
	return nil
}

// checkPrivateKey checks that a service-account key's private_key is a
// PEM-encoded RSA key, without saying anything about its bytes.
func checkPrivateKey(s string) error {
	if s == "" {
		return errors.New("is missing")
	}
	block, _ := pem.Decode([]byte(s))
	if block == nil || !strings.Contains(block.Type, "PRIVATE KEY") {
		return errors.New("is not a PEM private key")
	}
	if _, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		return nil
	}
	if _, err := x509.ParsePKCS1PrivateKey(block.Bytes); err == nil {
		return nil
	}
	return errors.New("does not decode as an RSA private key (damaged or cut off?)")
}

// lookedFor lists where application default credentials are found.
const lookedFor = "credentialsfile in the gcs section, $GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials (gcloud auth application-default login) and the metadata server (GKE workload identity, a GCE service account)"

// errNoCredentials replaces the library's "could not find default
// credentials" and its link.
var errNoCredentials = errors.New("no credentials found: looked for " + lookedFor + "; for an emulator set ?endpoint=http://HOST:PORT or $STORAGE_EMULATOR_HOST")
