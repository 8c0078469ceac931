package azure

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/backupd/backupd/pkg/storage"
)

// Defaults and limits of the upload parameters.
const (
	// DefaultBlockSize is the default Config.BlockSize: 8 MiB.
	DefaultBlockSize = 8 << 20
	// MinBlockSize and MaxBlockSize bound Config.BlockSize. Above 256 MiB
	// a single Put Blob request is refused by older service versions, and
	// a block is held in memory for bodies that are not io.ReaderAt.
	MinBlockSize = 1 << 20
	MaxBlockSize = 256 << 20
	// DefaultConcurrency is the default Config.Concurrency.
	DefaultConcurrency = 4
	// MaxConcurrency bounds Config.Concurrency.
	MaxConcurrency = 64
)

// Environment variables read by New when the Config holds no credentials.
const (
	EnvAccount          = "AZURE_STORAGE_ACCOUNT"
	EnvKey              = "AZURE_STORAGE_KEY"
	EnvConnectionString = "AZURE_STORAGE_CONNECTION_STRING"
)

// Config holds every parameter of the Azure Blob backend, with the YAML
// tags of the daemon's config file. String redacts AccountKey and
// ConnectionString.
//
// Credentials are taken from the first of: ConnectionString; AccountKey
// (with AccountName, else $AZURE_STORAGE_ACCOUNT);
// $AZURE_STORAGE_CONNECTION_STRING; $AZURE_STORAGE_KEY (with AccountName,
// else $AZURE_STORAGE_ACCOUNT); otherwise the default Azure credential
// chain of azidentity (environment service principal, workload identity,
// managed identity, Azure CLI), which needs an https endpoint.
type Config struct {
	// Container is the container that holds the objects.
	Container string `yaml:"container"`
	// Prefix is prepended, with a slash, to every key; empty for none.
	Prefix string `yaml:"prefix"`
	// Endpoint is the blob service URL, e.g.
	// https://ACCOUNT.blob.core.windows.net or Azurite's
	// http://127.0.0.1:10000/devstoreaccount1. Empty means the one of the
	// connection string, else https://ACCOUNTNAME.blob.core.windows.net.
	Endpoint string `yaml:"endpoint"`
	// AccountName is the storage account, for shared-key authentication
	// and the default endpoint.
	AccountName string `yaml:"accountname"`
	// AccountKey is the account's shared key (base64). Secret.
	AccountKey string `yaml:"accountkey"`
	// ConnectionString is an Azure storage connection string
	// (AccountName/AccountKey, or SharedAccessSignature, with BlobEndpoint
	// or EndpointSuffix; or UseDevelopmentStorage=true). Secret.
	ConnectionString string `yaml:"connectionstring"`
	// CreateContainer makes New create the container, private, if it does
	// not exist (bucket-per-owner placement). Otherwise the container
	// must exist.
	CreateContainer bool `yaml:"createcontainer"`
	// BlockSize is the size in bytes of the blocks a large object is
	// uploaded in; objects up to BlockSize go up in one request. 0 means
	// DefaultBlockSize.
	BlockSize int64 `yaml:"blocksize"`
	// Concurrency is how many blocks of one object are uploaded at once.
	// 0 means DefaultConcurrency.
	Concurrency int `yaml:"concurrency"`
}

// withDefaults fills in the zero upload parameters.
func (c Config) withDefaults() Config {
	if c.BlockSize == 0 {
		c.BlockSize = DefaultBlockSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	return c
}

// Validate checks the config; an error names the offending parameter and
// never contains a secret.
func (c Config) Validate() error {
	if err := validContainerName(c.Container); err != nil {
		return fmt.Errorf("azure: container %w", err)
	}
	if c.Prefix != "" {
		if err := storage.ValidateKey(c.Prefix); err != nil {
			return fmt.Errorf("azure: prefix: %w", err)
		}
		if name := encodeName(c.Prefix); len(name) >= maxNameLength || strings.Count(name, "/")+1 >= maxSegments {
			return fmt.Errorf("azure: prefix %q: too long to leave room for keys", c.Prefix)
		}
	}
	if c.Endpoint != "" {
		if _, err := parseEndpoint(c.Endpoint); err != nil {
			return fmt.Errorf("azure: endpoint: %w", err)
		}
	}
	if c.AccountName != "" {
		if err := validAccountName(c.AccountName); err != nil {
			return fmt.Errorf("azure: accountname: %w", err)
		}
	}
	if c.AccountKey != "" {
		if c.ConnectionString != "" {
			return errors.New("azure: accountkey and connectionstring are exclusive; set one")
		}
		if _, err := base64.StdEncoding.DecodeString(c.AccountKey); err != nil {
			return errors.New("azure: accountkey: not valid base64")
		}
	}
	if c.ConnectionString != "" {
		if _, err := parseConnectionString(c.ConnectionString); err != nil {
			return fmt.Errorf("azure: connectionstring: %w", err)
		}
	}
	if c.BlockSize != 0 && (c.BlockSize < MinBlockSize || c.BlockSize > MaxBlockSize) {
		return fmt.Errorf("azure: blocksize %d out of range %d..%d", c.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		return fmt.Errorf("azure: concurrency %d out of range 1..%d (0 for the default)", c.Concurrency, MaxConcurrency)
	}
	return nil
}

// String describes the config with its secrets redacted.
func (c Config) String() string {
	r := c.Redacted()
	return fmt.Sprintf("azure.Config{container=%q prefix=%q endpoint=%q accountname=%q accountkey=%q connectionstring=%q createcontainer=%t blocksize=%d concurrency=%d}",
		r.Container, r.Prefix, r.Endpoint, r.AccountName, r.AccountKey, r.ConnectionString, r.CreateContainer, r.BlockSize, r.Concurrency)
}

// GoString is String, so that %#v redacts too.
func (c Config) GoString() string { return c.String() }

// Redacted returns a copy of c with its secrets replaced by "REDACTED".
func (c Config) Redacted() Config {
	if c.AccountKey != "" {
		c.AccountKey = "REDACTED"
	}
	if c.ConnectionString != "" {
		c.ConnectionString = "REDACTED"
	}
	return c
}

// urlParams are the query parameters ConfigFromURL accepts.
var urlParams = map[string]bool{"endpoint": true, "accountname": true, "blocksize": true, "concurrency": true}

// ConfigFromURL fills a Config from a location URL of the form
// azblob://CONTAINER/PREFIX?endpoint=URL. Accepted query parameters:
// endpoint, accountname, blocksize, concurrency. Credentials never come
// from the URL: userinfo or a parameter that looks like a secret is
// refused.
func ConfigFromURL(u *url.URL) (Config, error) {
	if u.Scheme != "azblob" {
		return Config{}, fmt.Errorf("scheme %q, want azblob", u.Scheme)
	}
	if u.User != nil {
		return Config{}, errors.New("credentials in the URL are refused; use the config file or the environment")
	}
	if u.Opaque != "" || u.Host == "" {
		return Config{}, errors.New("want azblob://CONTAINER/PREFIX")
	}
	if u.Fragment != "" {
		return Config{}, errors.New("a fragment is not allowed")
	}
	if u.Port() != "" {
		return Config{}, fmt.Errorf("container %q: a port is not allowed; the endpoint goes in ?endpoint=", u.Host)
	}
	c := Config{Container: u.Host, Prefix: strings.Trim(u.Path, "/")}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, fmt.Errorf("malformed query: %w", err)
	}
	for name, vals := range q {
		if looksSecret(name) {
			return Config{}, fmt.Errorf("query parameter %q looks like a credential; credentials never come from the URL", name)
		}
		if !urlParams[name] {
			return Config{}, fmt.Errorf("unknown query parameter %q (accepted: endpoint, accountname, blocksize, concurrency)", name)
		}
		if len(vals) != 1 {
			return Config{}, fmt.Errorf("query parameter %q given %d times", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "endpoint":
			c.Endpoint = v
		case "accountname":
			c.AccountName = v
		case "blocksize":
			if c.BlockSize, err = strconv.ParseInt(v, 10, 64); err != nil {
				return Config{}, fmt.Errorf("blocksize %q: not an integer", v)
			}
		case "concurrency":
			if c.Concurrency, err = strconv.Atoi(v); err != nil {
				return Config{}, fmt.Errorf("concurrency %q: not an integer", v)
			}
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// looksSecret reports whether a query parameter name suggests a credential.
func looksSecret(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"key", "secret", "password", "token", "sig", "sas", "connectionstring", "credential"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// validContainerName checks Azure's container naming rules: 3 to 63
// characters, lower-case letters, digits and single hyphens, starting and
// ending with a letter or digit.
func validContainerName(name string) error {
	if name == "" {
		return errors.New("missing")
	}
	if len(name) < 3 || len(name) > 63 {
		return fmt.Errorf("%q: must be 3 to 63 characters long", name)
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		switch {
		case ch >= 'a' && ch <= 'z', ch >= '0' && ch <= '9':
		case ch == '-':
			if i == 0 || i == len(name)-1 || name[i-1] == '-' {
				return fmt.Errorf("%q: a hyphen must sit between letters or digits", name)
			}
		default:
			return fmt.Errorf("%q: only lower-case letters, digits and hyphens are allowed", name)
		}
	}
	return nil
}

// validAccountName checks Azure's storage account naming rules: 3 to 24
// lower-case letters and digits.
func validAccountName(name string) error {
	if len(name) < 3 || len(name) > 24 {
		return fmt.Errorf("%q: must be 3 to 24 characters long", name)
	}
	for i := 0; i < len(name); i++ {
		if ch := name[i]; !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9') {
			return fmt.Errorf("%q: only lower-case letters and digits are allowed", name)
		}
	}
	return nil
}

// parseEndpoint checks a service URL and returns it without a trailing
// slash. It must not carry credentials: no userinfo, no query (a SAS token
// belongs in the connection string).
func parseEndpoint(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("not a URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q, want http or https", u.Scheme)
	}
	if u.Host == "" {
		return "", errors.New("no host")
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", errors.New("userinfo, query and fragment are not allowed (credentials, such as a SAS token, go in the connection string)")
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// Azurite's development account, which UseDevelopmentStorage=true names.
// The key is public.
const (
	devAccountName = "devstoreaccount1"
	devAccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	devEndpoint    = "http://127.0.0.1:10000/devstoreaccount1"
)

// connString is what a connection string says about the blob service.
type connString struct {
	endpoint    string // service URL, no trailing slash
	accountName string
	accountKey  string
	sas         string // query string without "?"
}

// parseConnectionString parses an Azure storage connection string. Its
// errors never quote the string, which holds secrets.
func parseConnectionString(s string) (connString, error) {
	fields := map[string]string{}
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok || k == "" {
			return connString{}, errors.New("malformed: want Name=value pairs separated by ';'")
		}
		fields[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	if strings.EqualFold(fields["UseDevelopmentStorage"], "true") {
		return connString{endpoint: devEndpoint, accountName: devAccountName, accountKey: devAccountKey}, nil
	}
	cs := connString{
		accountName: fields["AccountName"],
		accountKey:  fields["AccountKey"],
		sas:         strings.TrimPrefix(fields["SharedAccessSignature"], "?"),
	}
	if cs.accountName != "" {
		if err := validAccountName(cs.accountName); err != nil {
			return connString{}, fmt.Errorf("AccountName: %w", err)
		}
	}
	switch {
	case cs.accountKey != "" && cs.sas != "":
		return connString{}, errors.New("both AccountKey and SharedAccessSignature; set one")
	case cs.accountKey != "":
		if cs.accountName == "" {
			return connString{}, errors.New("AccountKey without AccountName")
		}
		if _, err := base64.StdEncoding.DecodeString(cs.accountKey); err != nil {
			return connString{}, errors.New("AccountKey: not valid base64")
		}
	case cs.sas != "":
	default:
		return connString{}, errors.New("no credentials: want AccountName and AccountKey, or SharedAccessSignature")
	}
	if ep := fields["BlobEndpoint"]; ep != "" {
		e, err := parseEndpoint(ep)
		if err != nil {
			return connString{}, fmt.Errorf("BlobEndpoint: %w", err)
		}
		cs.endpoint = e
	} else if cs.accountName != "" {
		proto := fields["DefaultEndpointsProtocol"]
		if proto == "" {
			proto = "https"
		}
		if proto != "http" && proto != "https" {
			return connString{}, fmt.Errorf("DefaultEndpointsProtocol %q, want http or https", proto)
		}
		suffix := fields["EndpointSuffix"]
		if suffix == "" {
			suffix = "core.windows.net"
		}
		e, err := parseEndpoint(proto + "://" + cs.accountName + ".blob." + suffix)
		if err != nil {
			return connString{}, fmt.Errorf("EndpointSuffix: %w", err)
		}
		cs.endpoint = e
	}
	return cs, nil
}

// credentials is how New authenticates, resolved from Config and the
// environment.
type credentials struct {
	endpoint    string // service URL, no trailing slash
	accountName string // with accountKey: shared key
	accountKey  string
	sas         string // else a SAS token
	// neither: the default Azure credential
	source string // where they came from, for errors
}

// resolveCredentials applies the order documented on Config.
func (c Config) resolveCredentials() (credentials, error) {
	fromConnString := func(s, source string) (credentials, error) {
		cs, err := parseConnectionString(s)
		if err != nil {
			return credentials{}, fmt.Errorf("%s: %w", source, err)
		}
		cr := credentials{endpoint: cs.endpoint, accountName: cs.accountName, accountKey: cs.accountKey, sas: cs.sas, source: source}
		return cr, nil
	}
	name := c.AccountName
	if name == "" {
		name = os.Getenv(EnvAccount)
	}
	var cr credentials
	var err error
	switch {
	case c.ConnectionString != "":
		cr, err = fromConnString(c.ConnectionString, "connectionstring")
	case c.AccountKey != "":
		cr = credentials{accountName: name, accountKey: c.AccountKey, source: "accountkey"}
	case os.Getenv(EnvConnectionString) != "":
		cr, err = fromConnString(os.Getenv(EnvConnectionString), "$"+EnvConnectionString)
	case os.Getenv(EnvKey) != "":
		cr = credentials{accountName: name, accountKey: os.Getenv(EnvKey), source: "$" + EnvKey}
		if _, err := base64.StdEncoding.DecodeString(cr.accountKey); err != nil {
			return credentials{}, fmt.Errorf("$%s: not valid base64", EnvKey)
		}
	default:
		cr = credentials{accountName: name, source: "default Azure credential"}
		if c.Endpoint == "" && name == "" {
			return credentials{}, fmt.Errorf("%s, and no account: set endpoint (?endpoint=https://ACCOUNT.blob.core.windows.net) or accountname", errNoCredentials.Error())
		}
	}
	if err != nil {
		return credentials{}, err
	}
	if cr.accountKey != "" && cr.accountName == "" {
		return credentials{}, fmt.Errorf("%s needs accountname (or $%s)", cr.source, EnvAccount)
	}
	if cr.accountName != "" {
		if err := validAccountName(cr.accountName); err != nil {
			return credentials{}, fmt.Errorf("account name: %w", err)
		}
	}
	if c.Endpoint != "" {
		if cr.endpoint, err = parseEndpoint(c.Endpoint); err != nil {
			return credentials{}, fmt.Errorf("endpoint: %w", err)
		}
	}
	if cr.endpoint == "" {
		if cr.accountName == "" {
			return credentials{}, fmt.Errorf("endpoint: unknown; set endpoint or accountname (or $%s)", EnvAccount)
		}
		cr.endpoint = "https://" + cr.accountName + ".blob.core.windows.net"
	}
	if cr.accountKey == "" && cr.sas == "" && strings.HasPrefix(cr.endpoint, "http:") {
		return credentials{}, fmt.Errorf("%w; the default Azure credential needs an https endpoint, so with %s (an emulator?) set accountkey or a connection string", errNoCredentials, cr.endpoint)
	}
	return cr, nil
}

// lookedFor lists the credentials New looks for, in order.
const lookedFor = "connectionstring and accountkey in the azure section, $" + EnvConnectionString + ", $" + EnvKey +
	" (with accountname or $" + EnvAccount + "), and the default Azure credential (workload identity, a service principal in $AZURE_CLIENT_ID, managed identity, Azure CLI)"

// errNoCredentials says that no credential was found, and where New
// looked.
var errNoCredentials = errors.New("no credentials found: looked for " + lookedFor)

// defaultCredentialConfigured reports whether the environment configures
// a credential of the default chain explicitly (a service principal or
// workload identity), whose own error is then worth showing.
func defaultCredentialConfigured() bool {
	for _, v := range []string{"AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH"} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// ConfigHint says what an unknown key in the azure section probably
// meant.
func (Config) ConfigHint(key string) string {
	switch key {
	case "createbucket":
		return "the azure section calls it createcontainer"
	case "bucket":
		return "the azure section calls it container"
	case "account", "account_name":
		return "the azure section calls it accountname"
	case "key", "account_key", "sharedkey":
		return "the azure section calls it accountkey"
	case "connection_string":
		return "the azure section calls it connectionstring"
	}
	return ""
}
