package s3

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/backupd/backupd/pkg/storage"
)

// Part sizes of multipart uploads (chunksize).
const (
	// DefaultChunkSize is the part size used when chunksize is not set.
	DefaultChunkSize = 16 << 20
	// MinChunkSize is the smallest part size S3 accepts (but for the last
	// part).
	MinChunkSize = 5 << 20
	// MaxChunkSize is the largest part size S3 accepts.
	MaxChunkSize = 5 << 30
)

// DefaultUploadConcurrency is how many parts of one object are uploaded
// at once when uploadconcurrency is not set.
const DefaultUploadConcurrency = 4

// storageClasses are the values storageclass accepts.
var storageClasses = []string{
	"STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
}

// Config holds every parameter of the S3 backend: those of the registry's
// S3 storage driver (accesskey, secretkey, region, regionendpoint, bucket,
// encrypt, keyid, secure, v4auth, chunksize, rootdirectory, storageclass)
// and pathstyle, createbucket and uploadconcurrency. The YAML tags match
// the daemon's config file. String and GoString redact the credentials.
type Config struct {
	// AccessKey and SecretKey are static credentials. When both are empty
	// the SDK's default credential chain is used (environment, shared
	// config, web identity / IRSA, EC2 instance role).
	AccessKey string `yaml:"accesskey"`
	SecretKey string `yaml:"secretkey"`
	// Region is the bucket's region, e.g. "us-east-1". Empty takes the
	// SDK's (AWS_REGION, shared config), else "us-east-1" when
	// RegionEndpoint is set.
	Region string `yaml:"region"`
	// RegionEndpoint is the URL of an S3-compatible service (MinIO, ...),
	// e.g. "http://127.0.0.1:9000"; without a scheme, Secure picks one.
	// Empty means Amazon S3.
	RegionEndpoint string `yaml:"regionendpoint"`
	// Bucket is the bucket that holds the objects.
	Bucket string `yaml:"bucket"`
	// Encrypt asks for server-side encryption: SSE-S3 (AES256), or SSE-KMS
	// with KeyID.
	Encrypt bool `yaml:"encrypt"`
	// KeyID is the KMS key for SSE-KMS; it needs Encrypt.
	KeyID string `yaml:"keyid"`
	// Secure selects HTTPS (nil means true). With a RegionEndpoint that
	// has a scheme it must agree with it.
	Secure *bool `yaml:"secure"`
	// V4Auth is accepted for compatibility; aws-sdk-go-v2 signs with
	// Signature Version 4 only, so false is refused.
	V4Auth *bool `yaml:"v4auth"`
	// ChunkSize is the part size of multipart uploads in bytes, at least
	// MinChunkSize; 0 means DefaultChunkSize. Objects up to ChunkSize go
	// up in one PutObject.
	ChunkSize int64 `yaml:"chunksize"`
	// RootDirectory is the prefix under which all keys are stored, e.g.
	// "backups/owner1"; leading and trailing slashes are ignored.
	RootDirectory string `yaml:"rootdirectory"`
	// StorageClass is the storage class of new objects: STANDARD,
	// REDUCED_REDUNDANCY, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING or
	// GLACIER_IR; empty leaves it to the bucket (STANDARD).
	StorageClass string `yaml:"storageclass"`
	// PathStyle addresses the bucket in the path rather than the host
	// name; nil means true when RegionEndpoint is set, false otherwise.
	PathStyle *bool `yaml:"pathstyle"`
	// CreateBucket creates the bucket (private) when it does not exist,
	// for bucket-per-owner placement. Otherwise a missing bucket is an
	// error.
	CreateBucket bool `yaml:"createbucket"`
	// UploadConcurrency is how many parts of one object go up at once;
	// 0 means DefaultUploadConcurrency.
	UploadConcurrency int `yaml:"uploadconcurrency"`
}

// Validate checks the config; an error names the offending parameter.
func (c Config) Validate() error {
	if err := c.validateParams(); err != nil {
		return err
	}
	if (c.AccessKey == "") != (c.SecretKey == "") {
		return errors.New("s3: accesskey and secretkey must be set together (or both left empty for the default credential chain)")
	}
	if c.RegionEndpoint != "" {
		if _, err := endpointURL(c.RegionEndpoint, c.Secure); err != nil {
			return fmt.Errorf("s3: regionendpoint: %w", err)
		}
	}
	if c.KeyID != "" && !c.Encrypt {
		return errors.New("s3: keyid is set but encrypt is false; set encrypt: true to use SSE-KMS with this key")
	}
	return nil
}

// validateParams checks each parameter on its own, not how they combine.
func (c Config) validateParams() error {
	if err := ValidateBucketName(c.Bucket); err != nil {
		return fmt.Errorf("s3: %w", err)
	}
	if c.Region != "" && !validRegion(c.Region) {
		return fmt.Errorf("s3: region %q is not a region name such as us-east-1", c.Region)
	}
	if c.RegionEndpoint != "" {
		if _, err := endpointURL(c.RegionEndpoint, nil); err != nil {
			return fmt.Errorf("s3: regionendpoint: %w", err)
		}
	}
	if c.V4Auth != nil && !*c.V4Auth {
		return errors.New("s3: v4auth: false is not supported: aws-sdk-go-v2 signs requests with Signature Version 4 only; remove v4auth or set it to true")
	}
	if c.ChunkSize != 0 && (c.ChunkSize < MinChunkSize || c.ChunkSize > MaxChunkSize) {
		return fmt.Errorf("s3: chunksize %d out of range: S3 parts are %d (5 MiB) to %d (5 GiB) bytes",
			c.ChunkSize, MinChunkSize, MaxChunkSize)
	}
	if _, err := rootPrefix(c.RootDirectory); err != nil {
		return fmt.Errorf("s3: rootdirectory: %w", err)
	}
	if c.StorageClass != "" && !slices.Contains(storageClasses, c.StorageClass) {
		return fmt.Errorf("s3: storageclass %q unknown (one of %s)", c.StorageClass, strings.Join(storageClasses, ", "))
	}
	if c.UploadConcurrency < 0 || c.UploadConcurrency > 64 {
		return fmt.Errorf("s3: uploadconcurrency %d out of range 1..64 (0 for the default %d)",
			c.UploadConcurrency, DefaultUploadConcurrency)
	}
	return nil
}

// String describes the config with the credentials redacted.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "s3 bucket=%s", c.Bucket)
	add := func(name, value string) {
		if value != "" {
			fmt.Fprintf(&b, " %s=%s", name, value)
		}
	}
	add("rootdirectory", c.RootDirectory)
	add("region", c.Region)
	add("regionendpoint", redactURL(c.RegionEndpoint))
	if c.AccessKey != "" {
		add("accesskey", "REDACTED")
	}
	if c.SecretKey != "" {
		add("secretkey", "REDACTED")
	}
	if c.Encrypt {
		add("encrypt", "true")
	}
	add("keyid", c.KeyID)
	if c.Secure != nil {
		add("secure", strconv.FormatBool(*c.Secure))
	}
	if c.V4Auth != nil {
		add("v4auth", strconv.FormatBool(*c.V4Auth))
	}
	if c.ChunkSize != 0 {
		add("chunksize", strconv.FormatInt(c.ChunkSize, 10))
	}
	add("storageclass", c.StorageClass)
	if c.PathStyle != nil {
		add("pathstyle", strconv.FormatBool(*c.PathStyle))
	}
	if c.CreateBucket {
		add("createbucket", "true")
	}
	if c.UploadConcurrency != 0 {
		add("uploadconcurrency", strconv.Itoa(c.UploadConcurrency))
	}
	return b.String()
}

// GoString is String, so that %#v does not print the credentials either.
func (c Config) GoString() string { return c.String() }

// Redacted returns a copy of c with the credentials replaced by
// "REDACTED", fit for printing in full or serialising.
func (c Config) Redacted() Config {
	if c.AccessKey != "" {
		c.AccessKey = "REDACTED"
	}
	if c.SecretKey != "" {
		c.SecretKey = "REDACTED"
	}
	c.RegionEndpoint = redactURL(c.RegionEndpoint)
	return c
}

// urlParams are the query parameters ConfigFromURL accepts.
var urlParams = []string{"region", "endpoint", "secure", "storageclass", "chunksize", "encrypt", "keyid", "pathstyle"}

// ConfigFromURL fills a Config from a location URL of the form
// s3://BUCKET/PREFIX?region=R&endpoint=URL, with the optional query
// parameters region, endpoint (= regionendpoint), secure, storageclass,
// chunksize, encrypt, keyid and pathstyle. Credentials never come from the
// URL: user information, or a parameter that looks like a secret, is
// refused, and so is any other unknown parameter. Each parameter is
// checked on its own; how they combine (keyid needs encrypt, secure must
// agree with the endpoint's scheme) the caller checks with Validate once
// it has added the config file's settings, such as AccessKey and
// SecretKey (or left them empty for the SDK's default credential chain).
func ConfigFromURL(u *url.URL) (Config, error) {
	var c Config
	if u.Scheme != "s3" {
		return c, fmt.Errorf("scheme %q is not s3", u.Scheme)
	}
	switch {
	case u.User != nil:
		return c, errors.New("credentials never come from the URL: remove the user information and set accesskey/secretkey in the config file or use the default credential chain")
	case u.Opaque != "" || u.Host == "":
		return c, errors.New("want s3://BUCKET/PREFIX?region=REGION")
	case u.Fragment != "":
		return c, errors.New("a fragment is not allowed")
	case u.Port() != "":
		return c, fmt.Errorf("bucket %q has a port; give the service as ?endpoint=URL", u.Host)
	}
	c.Bucket = u.Host
	c.RootDirectory = strings.Trim(u.Path, "/")
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return c, fmt.Errorf("query: %w", err)
	}
	for name, values := range q {
		if !slices.Contains(urlParams, name) {
			if secretLike(name) {
				return c, fmt.Errorf("query parameter %q refused: credentials never come from the URL", name)
			}
			return c, fmt.Errorf("unknown query parameter %q (accepted: %s)", name, strings.Join(urlParams, ", "))
		}
		if len(values) != 1 {
			return c, fmt.Errorf("query parameter %q given %d times", name, len(values))
		}
		v := values[0]
		switch name {
		case "region":
			c.Region = v
		case "endpoint":
			c.RegionEndpoint = v
		case "storageclass":
			c.StorageClass = v
		case "keyid":
			c.KeyID = v
		case "chunksize":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return c, fmt.Errorf("chunksize %q is not a number of bytes", v)
			}
			c.ChunkSize = n
		case "secure", "encrypt", "pathstyle":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return c, fmt.Errorf("%s %q is not a boolean", name, v)
			}
			switch name {
			case "secure":
				c.Secure = &b
			case "encrypt":
				c.Encrypt = b
			case "pathstyle":
				c.PathStyle = &b
			}
		}
	}
	if err := c.validateParams(); err != nil {
		return c, err
	}
	return c, nil
}

// secretLike reports whether a query parameter name looks like it carries
// a credential.
func secretLike(name string) bool {
	name = strings.ToLower(name)
	for _, w := range []string{"key", "secret", "password", "passwd", "token", "sig", "credential", "auth"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// ValidateBucketName checks name against Amazon S3's rules for general
// purpose bucket names: 3 to 63 lower-case letters, digits, dots and
// hyphens, beginning and ending with a letter or digit, no two adjacent
// dots, not an IP address, and none of the reserved prefixes and
// suffixes.
func ValidateBucketName(name string) error {
	if name == "" {
		return errors.New("bucket name is empty")
	}
	if len(name) < 3 || len(name) > 63 {
		return fmt.Errorf("bucket name %q must be 3 to 63 characters long", name)
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '.' && r != '-' {
			return fmt.Errorf("bucket name %q may hold only lower-case letters, digits, '.' and '-'", name)
		}
	}
	alnum := func(b byte) bool { return (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') }
	if !alnum(name[0]) || !alnum(name[len(name)-1]) {
		return fmt.Errorf("bucket name %q must begin and end with a letter or digit", name)
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("bucket name %q must not hold two adjacent dots", name)
	}
	if net.ParseIP(name) != nil {
		return fmt.Errorf("bucket name %q must not be an IP address", name)
	}
	for _, p := range []string{"xn--", "sthree-", "amzn-s3-demo-"} {
		if strings.HasPrefix(name, p) {
			return fmt.Errorf("bucket name %q must not begin with %q", name, p)
		}
	}
	for _, s := range []string{"-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"} {
		if strings.HasSuffix(name, s) {
			return fmt.Errorf("bucket name %q must not end with %q", name, s)
		}
	}
	return nil
}

// validRegion reports whether r looks like a region name.
func validRegion(r string) bool {
	if len(r) > 64 {
		return false
	}
	for _, c := range r {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// endpointURL parses a regionendpoint: a URL with scheme http or https, or
// a bare HOST[:PORT] to which secure (default true) adds one. Explicit
// secure must agree with an explicit scheme.
func endpointURL(endpoint string, secure *bool) (string, error) {
	if !strings.Contains(endpoint, "://") {
		scheme := "https"
		if secure != nil && !*secure {
			scheme = "http"
		}
		endpoint = scheme + "://" + endpoint
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // url.Error quotes the whole URL, which may hold secrets
		}
		return "", fmt.Errorf("not a URL: %w", err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("scheme %q: want http or https", u.Scheme)
	case u.User != nil:
		return "", errors.New("credentials never come from the URL: remove the user information")
	case u.Host == "":
		return "", errors.New("no host")
	case u.RawQuery != "" || u.Fragment != "":
		return "", errors.New("a query or fragment is not allowed")
	case secure != nil && *secure != (u.Scheme == "https"):
		return "", fmt.Errorf("scheme %s contradicts secure: %t", u.Scheme, *secure)
	}
	return u.String(), nil
}

// redactURL removes user information from an endpoint for display.
func redactURL(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		rest := s[i+3:]
		host := rest
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			host = rest[:j]
		}
		if at := strings.LastIndexByte(host, '@'); at >= 0 {
			return s[:i+3] + rest[at+1:]
		}
	}
	return s
}

// rootPrefix turns a rootdirectory into the prefix of every object key:
// "" or a valid key plus "/".
func rootPrefix(dir string) (string, error) {
	dir = strings.Trim(dir, "/")
	if dir == "" {
		return "", nil
	}
	if err := storage.ValidateKey(dir); err != nil {
		return "", err
	}
	if len(dir) > 512 {
		return "", fmt.Errorf("%q is longer than 512 bytes", dir)
	}
	return dir + "/", nil
}

// ConfigHint says what an unknown key in the s3 section probably meant.
func (Config) ConfigHint(key string) string {
	switch key {
	case "endpoint":
		return "the s3 section calls it regionendpoint (or give ?endpoint= in the URL)"
	case "prefix":
		return "the s3 section calls it rootdirectory (or give it as the URL's path)"
	case "partsize":
		return "the s3 section calls it chunksize"
	}
	return ""
}
