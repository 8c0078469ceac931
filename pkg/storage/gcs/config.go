package gcs

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/backupd/backupd/pkg/storage"
)

const (
	// DefaultChunkSize is the default ChunkSize: objects up to this size go
	// up in one request, larger ones in a resumable upload of chunks of
	// this size.
	// 32 MiB: backupd's packs (16 MiB of blobs plus a trailer) then stream
	// in one request without a chunk buffer.
	DefaultChunkSize = 32 << 20
	// chunkQuantum is the granularity of resumable upload chunks that
	// Google Cloud Storage requires.
	chunkQuantum = 256 << 10
	// maxChunkSize bounds ChunkSize: every Put of a larger object buffers
	// one chunk in memory.
	maxChunkSize = 1 << 30
	// maxNameLength is the longest object name Google Cloud Storage accepts,
	// in bytes.
	maxNameLength = 1024
	// maxPrefixLength leaves at least this much of maxNameLength to keys.
	maxPrefixLength = maxNameLength - 256
)

// Config holds every parameter of the Google Cloud Storage backend, with
// the YAML tags of the daemon's config file. It holds no secret: a
// credentials file is named by its path, never inlined.
type Config struct {
	// Bucket is the name of the bucket.
	Bucket string `yaml:"bucket"`
	// Prefix is where the objects live in the bucket: the object of key K
	// is named Prefix + "/" + K. Leading and trailing slashes are ignored;
	// empty means the bucket's root.
	Prefix string `yaml:"prefix"`
	// CredentialsFile is the path of a service-account key file (JSON).
	// When empty, application default credentials are used
	// (GOOGLE_APPLICATION_CREDENTIALS, gcloud's user credentials, the
	// metadata server), unless an emulator is used (see Endpoint).
	CredentialsFile string `yaml:"credentialsfile"`
	// Project is the project that owns the buckets New creates; required
	// with CreateBucket, otherwise unused.
	Project string `yaml:"project"`
	// Location is where New creates a bucket (a region such as
	// "europe-west1" or a multi-region such as "EU"); empty leaves the
	// choice to the service (US). Used only with CreateBucket.
	Location string `yaml:"location"`
	// Endpoint overrides the JSON API endpoint, for emulators and private
	// endpoints: "http(s)://HOST[:PORT]", optionally followed by the path
	// "/storage/v1/" (added when missing). With an http:// endpoint no
	// credentials are sent (emulators take none, and a token must not
	// travel in clear text). When Endpoint is empty and the environment
	// variable STORAGE_EMULATOR_HOST is set, the client library talks to
	// that emulator, also without credentials.
	Endpoint string `yaml:"endpoint"`
	// CreateBucket makes New create the bucket if it does not exist, with
	// uniform bucket-level access and public access prevention enforced
	// (bucket-per-owner placement). Without it New never creates a bucket
	// and fails when the bucket is missing.
	CreateBucket bool `yaml:"createbucket"`
	// ChunkSize is the size in bytes of the chunks of a resumable upload:
	// an object of at most ChunkSize bytes is uploaded in one request
	// without buffering, a larger one in chunks of ChunkSize, each buffered
	// in memory. A multiple of 256 KiB, at most 1 GiB; 0 means
	// DefaultChunkSize.
	ChunkSize int `yaml:"chunksize"`
}

// Validate checks the config; an error names the offending parameter.
func (c Config) Validate() error {
	if err := ValidateBucketName(c.Bucket); err != nil {
		return fmt.Errorf("gcs: bucket %w", err)
	}
	if err := validatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("gcs: prefix: %w", err)
	}
	if c.CreateBucket && c.Project == "" {
		return fmt.Errorf("gcs: creating bucket %s needs a project: set project in the gcs section, or ?project= in the URL", c.Bucket)
	}
	if c.Project != "" && !validProject(c.Project) {
		return fmt.Errorf("gcs: project: %q is not a project ID", c.Project)
	}
	if c.Location != "" && !validLocation(c.Location) {
		return fmt.Errorf("gcs: location: %q is not a location such as EU or europe-west1", c.Location)
	}
	if c.Endpoint != "" {
		if _, err := endpointURL(c.Endpoint); err != nil {
			return fmt.Errorf("gcs: endpoint: %w", err)
		}
	}
	switch {
	case c.ChunkSize < 0:
		return fmt.Errorf("gcs: chunksize: %d is negative", c.ChunkSize)
	case c.ChunkSize%chunkQuantum != 0:
		return fmt.Errorf("gcs: chunksize: %d is not a multiple of 256 KiB", c.ChunkSize)
	case c.ChunkSize > maxChunkSize:
		return fmt.Errorf("gcs: chunksize: %d is more than 1 GiB", c.ChunkSize)
	}
	return nil
}

// String describes the config for logs. The config holds no secrets; the
// credentials file is shown by path only.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "gs://%s", c.Bucket)
	if p := strings.Trim(c.Prefix, "/"); p != "" {
		b.WriteString("/" + p)
	}
	fields := []struct{ name, value string }{
		{"endpoint", c.Endpoint},
		{"project", c.Project},
		{"location", c.Location},
		{"credentialsfile", c.CredentialsFile},
	}
	for _, f := range fields {
		if f.value != "" {
			fmt.Fprintf(&b, " %s=%s", f.name, f.value)
		}
	}
	if c.CreateBucket {
		b.WriteString(" createbucket=true")
	}
	if c.ChunkSize != 0 {
		fmt.Fprintf(&b, " chunksize=%d", c.ChunkSize)
	}
	return b.String()
}

// Redacted returns c as it may be logged. Config holds no secrets (the
// credentials file is a path), so it is c itself; it exists so that every
// backend's config can be treated alike.
func (c Config) Redacted() Config { return c }

// chunkSize returns the configured chunk size or the default.
func (c Config) chunkSize() int {
	if c.ChunkSize == 0 {
		return DefaultChunkSize
	}
	return c.ChunkSize
}

// normalPrefix returns the prefix to put before keys: "" or "a/b/".
func (c Config) normalPrefix() string {
	if p := strings.Trim(c.Prefix, "/"); p != "" {
		return p + "/"
	}
	return ""
}

// URL query parameters that ConfigFromURL accepts.
var urlParams = map[string]bool{"endpoint": true, "project": true, "chunksize": true}

// ConfigFromURL fills a Config from a location gs://BUCKET/PREFIX with the
// optional query parameters endpoint, project and chunksize. Credentials
// never come from the URL: a user in the URL, or a parameter that names
// credentials, is refused. Errors never quote the URL.
func ConfigFromURL(u *url.URL) (Config, error) {
	if u.Scheme != "gs" {
		return Config{}, fmt.Errorf("scheme %q is not gs", u.Scheme)
	}
	if u.User != nil {
		return Config{}, errors.New("credentials in the URL are refused; use credentialsfile in the config file or application default credentials")
	}
	if u.Opaque != "" || u.Host == "" {
		return Config{}, errors.New("want gs://BUCKET/PREFIX")
	}
	if u.Fragment != "" {
		return Config{}, errors.New("a fragment is not allowed (escape '#' as %23)")
	}
	if u.Port() != "" || strings.HasSuffix(u.Host, ":") {
		return Config{}, errors.New("a bucket name has no port; give an emulator as ?endpoint=http://HOST:PORT")
	}
	cfg := Config{Bucket: u.Hostname(), Prefix: strings.Trim(u.Path, "/")}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, errors.New("malformed query")
	}
	for name, values := range q {
		if looksSecret(name) {
			return Config{}, fmt.Errorf("parameter %q looks like a credential; credentials never come from the URL", name)
		}
		if !urlParams[name] {
			return Config{}, fmt.Errorf("unknown parameter %q (accepted: chunksize, endpoint, project)", name)
		}
		if len(values) != 1 {
			return Config{}, fmt.Errorf("parameter %q given %d times", name, len(values))
		}
		v := values[0]
		switch name {
		case "endpoint":
			cfg.Endpoint = v
		case "project":
			cfg.Project = v
		case "chunksize":
			n, err := strconv.Atoi(v)
			if err != nil {
				return Config{}, fmt.Errorf("chunksize: %q is not a number of bytes", v)
			}
			cfg.ChunkSize = n
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// looksSecret reports whether a query parameter's name suggests that it
// carries a credential.
func looksSecret(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"key", "secret", "token", "password", "passwd", "credential", "signature", "sig", "auth"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// ValidateBucketName checks name against Google Cloud Storage's bucket
// naming rules: 3 to 63 characters (up to 222 with dots, each dot-separated
// part at most 63), lower-case letters, digits, '-', '_' and '.', starting
// and ending with a letter or digit, not an IP address, not starting with
// "goog" and not containing "google".
func ValidateBucketName(name string) error {
	if name == "" {
		return errors.New("empty")
	}
	maxLen := 63
	if strings.Contains(name, ".") {
		maxLen = 222
	}
	if len(name) < 3 || len(name) > maxLen {
		return fmt.Errorf("%q: must be 3 to %d characters", name, maxLen)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%q: only lower-case letters, digits, '-', '_' and '.' are allowed", name)
		}
	}
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return fmt.Errorf("%q: must start and end with a letter or digit", name)
	}
	for _, part := range strings.Split(name, ".") {
		if part == "" || len(part) > 63 {
			return fmt.Errorf("%q: each dot-separated part must be 1 to 63 characters", name)
		}
	}
	if net.ParseIP(name) != nil {
		return fmt.Errorf("%q: must not be an IP address", name)
	}
	if strings.HasPrefix(name, "goog") || strings.Contains(name, "google") {
		return fmt.Errorf("%q: must not start with \"goog\" or contain \"google\"", name)
	}
	return nil
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// validatePrefix checks a prefix: after trimming slashes, empty or a valid
// key short enough to leave room for keys.
func validatePrefix(prefix string) error {
	p := strings.Trim(prefix, "/")
	if p == "" {
		return nil
	}
	if len(p) > maxPrefixLength {
		return fmt.Errorf("longer than %d bytes", maxPrefixLength)
	}
	if err := storage.ValidateKey(p); err != nil || !utf8.ValidString(p) {
		return fmt.Errorf("%q: empty, \".\" or \"..\" component, control character, backslash or invalid UTF-8", prefix)
	}
	return nil
}

// validProject reports whether id looks like a project ID (6 to 30
// lower-case letters, digits and hyphens, starting with a letter) or a
// domain-scoped one ("example.com:my-project").
func validProject(id string) bool {
	if i := strings.LastIndexByte(id, ':'); i >= 0 {
		if i == 0 || strings.ContainsAny(id[:i], "/ ") {
			return false
		}
		id = id[i+1:]
	}
	if len(id) < 6 || len(id) > 30 || id[0] < 'a' || id[0] > 'z' || id[len(id)-1] == '-' {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !alnum(c) && c != '-' {
			return false
		}
	}
	return true
}

// validLocation reports whether loc looks like a location name such as
// "US", "europe-west1" or "nam4".
func validLocation(loc string) bool {
	if len(loc) > 64 {
		return false
	}
	for _, r := range loc {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// endpointURL checks an endpoint and returns the JSON API base URL the
// client wants: scheme://host[:port]/storage/v1/ (or the path given).
func endpointURL(endpoint string) (*url.URL, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme %q: want http:// or https://", u.Scheme)
	case u.Host == "" || u.Hostname() == "":
		return nil, errors.New("no host")
	case u.User != nil:
		return nil, errors.New("credentials in the URL are refused")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, errors.New("query or fragment not allowed")
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/storage/v1/"
	} else if !strings.HasSuffix(u.Path, "/") {
		u.Path += "/"
	}
	u.RawPath = ""
	return u, nil
}

// ConfigHint says what an unknown key in the gcs section probably meant.
func (Config) ConfigHint(key string) string {
	switch key {
	case "credentials", "keyfile", "credentials_file":
		return "the gcs section calls it credentialsfile (the path of a service-account key)"
	case "projectid", "project_id":
		return "the gcs section calls it project"
	}
	return ""
}
