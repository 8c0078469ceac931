package minio

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7/pkg/s3utils"

	"github.com/backupd/backupd/pkg/storage"
)

// Part sizes of multipart uploads (partsize).
const (
	// DefaultPartSize is the part size used when partsize is not set.
	DefaultPartSize = 16 << 20
	// MinPartSize is the smallest part size S3 accepts (but for the last
	// part).
	MinPartSize = 5 << 20
	// MaxPartSize is the largest part size S3 accepts.
	MaxPartSize = 5 << 30
)

// DefaultUploadConcurrency is how many parts of one object are uploaded
// at once when uploadconcurrency is not set.
const DefaultUploadConcurrency = 4

// Config holds every parameter of the MinIO backend, which talks to any
// S3-compatible endpoint through minio-go. The YAML tags match the
// daemon's config file. String and GoString redact the credentials.
type Config struct {
	// Endpoint is the service's HOST:PORT (or HOST), without a scheme.
	Endpoint string `yaml:"endpoint"`
	// Bucket is the bucket that holds the objects.
	Bucket string `yaml:"bucket"`
	// Prefix is the prefix under which all keys are stored, e.g.
	// "backups/owner1"; leading and trailing slashes are ignored.
	Prefix string `yaml:"prefix"`
	// Secure selects HTTPS; nil means true.
	Secure *bool `yaml:"secure"`
	// Region is the bucket's region; empty asks the service
	// (GetBucketLocation).
	Region string `yaml:"region"`
	// AccessKey and SecretKey are the credentials. When both are empty,
	// New takes MINIO_ACCESS_KEY and MINIO_SECRET_KEY from the
	// environment, else AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and
	// AWS_SESSION_TOKEN).
	AccessKey string `yaml:"accesskey"`
	SecretKey string `yaml:"secretkey"`
	// PartSize is the part size of multipart uploads in bytes, at least
	// MinPartSize; 0 means DefaultPartSize. Objects up to PartSize go up
	// in one PutObject.
	PartSize int64 `yaml:"partsize"`
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
	if err := validEndpoint(c.Endpoint); err != nil {
		return fmt.Errorf("minio: endpoint: %w", err)
	}
	if err := ValidateBucketName(c.Bucket); err != nil {
		return fmt.Errorf("minio: bucket %w", err)
	}
	if _, err := keyPrefix(c.Prefix); err != nil {
		return fmt.Errorf("minio: prefix: %w", err)
	}
	if (c.AccessKey == "") != (c.SecretKey == "") {
		return errors.New("minio: accesskey and secretkey must be set together (or both left empty to take them from the environment)")
	}
	if c.Region != "" && !validRegion(c.Region) {
		return fmt.Errorf("minio: region %q is not a region name such as us-east-1", c.Region)
	}
	if c.PartSize != 0 && (c.PartSize < MinPartSize || c.PartSize > MaxPartSize) {
		return fmt.Errorf("minio: partsize %d out of range: S3 parts are %d (5 MiB) to %d (5 GiB) bytes",
			c.PartSize, MinPartSize, MaxPartSize)
	}
	if c.UploadConcurrency < 0 || c.UploadConcurrency > 64 {
		return fmt.Errorf("minio: uploadconcurrency %d out of range 1..64 (0 for the default %d)",
			c.UploadConcurrency, DefaultUploadConcurrency)
	}
	return nil
}

// String describes the config with the credentials redacted.
func (c Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "minio endpoint=%s bucket=%s", c.Endpoint, c.Bucket)
	add := func(name, value string) {
		if value != "" {
			fmt.Fprintf(&b, " %s=%s", name, value)
		}
	}
	add("prefix", c.Prefix)
	if c.Secure != nil {
		add("secure", strconv.FormatBool(*c.Secure))
	}
	add("region", c.Region)
	if c.AccessKey != "" {
		add("accesskey", "REDACTED")
	}
	if c.SecretKey != "" {
		add("secretkey", "REDACTED")
	}
	if c.PartSize != 0 {
		add("partsize", strconv.FormatInt(c.PartSize, 10))
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
	return c
}

// urlParams are the query parameters ConfigFromURL accepts.
var urlParams = []string{"secure", "region", "partsize"}

// ConfigFromURL fills a Config from a location URL of the form
// minio://HOST:PORT/BUCKET/PREFIX, with the optional query parameters
// secure, region and partsize. Credentials never come from the URL: user
// information, or a parameter that looks like a secret, is refused, and
// so is any other unknown parameter. The caller sets AccessKey and
// SecretKey (from its config file), or leaves them to the environment,
// and checks the complete Config with Validate.
func ConfigFromURL(u *url.URL) (Config, error) {
	var c Config
	if u.Scheme != "minio" {
		return c, fmt.Errorf("scheme %q is not minio", u.Scheme)
	}
	switch {
	case u.User != nil:
		return c, errors.New("credentials never come from the URL: remove the user information and set accesskey/secretkey in the config file or the environment")
	case u.Opaque != "" || u.Host == "":
		return c, errors.New("want minio://HOST:PORT/BUCKET/PREFIX")
	case u.Fragment != "":
		return c, errors.New("a fragment is not allowed")
	}
	c.Endpoint = u.Host
	c.Bucket, c.Prefix, _ = strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	c.Prefix = strings.Trim(c.Prefix, "/")
	if c.Bucket == "" {
		return c, errors.New("no bucket: want minio://HOST:PORT/BUCKET/PREFIX")
	}
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
		case "secure":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return c, fmt.Errorf("secure %q is not a boolean", v)
			}
			c.Secure = &b
		case "region":
			c.Region = v
		case "partsize":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return c, fmt.Errorf("partsize %q is not a number of bytes", v)
			}
			c.PartSize = n
		}
	}
	if err := c.Validate(); err != nil {
		return c, err
	}
	return c, nil
}

// credentials returns the access key, secret key and session token to
// use: the config's, else MINIO_ACCESS_KEY/MINIO_SECRET_KEY, else
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN.
func (c Config) credentials() (accessKey, secretKey, token string, err error) {
	if c.AccessKey != "" {
		return c.AccessKey, c.SecretKey, "", nil
	}
	for _, pair := range [][3]string{
		{"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", ""},
		{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"},
	} {
		ak, sk := os.Getenv(pair[0]), os.Getenv(pair[1])
		switch {
		case ak != "" && sk != "":
			if pair[2] != "" {
				token = os.Getenv(pair[2])
			}
			return ak, sk, token, nil
		case ak != "" || sk != "":
			return "", "", "", fmt.Errorf("minio: credentials: %s and %s must be set together", pair[0], pair[1])
		}
	}
	return "", "", "", errors.New("minio: no credentials: set accesskey and secretkey, or MINIO_ACCESS_KEY and MINIO_SECRET_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
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

// ValidateBucketName checks name against the S3 rules for bucket names
// (minio-go's strict check): 3 to 63 lower-case letters, digits, dots and
// hyphens, beginning and ending with a letter or digit, not an IP address.
func ValidateBucketName(name string) error {
	if name == "" {
		return errors.New("bucket name is empty")
	}
	if err := s3utils.CheckValidBucketNameStrict(name); err != nil {
		return fmt.Errorf("%q: %w", name, err)
	}
	return nil
}

// validEndpoint checks a HOST[:PORT] endpoint.
func validEndpoint(endpoint string) error {
	if endpoint == "" {
		return errors.New("endpoint is empty: want HOST:PORT")
	}
	if strings.Contains(endpoint, "://") {
		return fmt.Errorf("%q has a scheme: want HOST:PORT, and secure to choose HTTPS", endpoint)
	}
	if strings.ContainsAny(endpoint, "/@?#") {
		return fmt.Errorf("%q: want HOST:PORT, nothing else", endpoint)
	}
	host := endpoint
	if h, port, err := net.SplitHostPort(endpoint); err == nil {
		n, perr := strconv.Atoi(port)
		if perr != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%q: bad port", endpoint)
		}
		host = h
	}
	if host == "" {
		return fmt.Errorf("%q: no host", endpoint)
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

// keyPrefix turns a prefix parameter into the prefix of every object key:
// "" or a valid key plus "/".
func keyPrefix(p string) (string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return "", nil
	}
	if err := storage.ValidateKey(p); err != nil {
		return "", err
	}
	if len(p) > 512 {
		return "", fmt.Errorf("%q is longer than 512 bytes", p)
	}
	return p + "/", nil
}

// ConfigHint says what an unknown key in the minio section probably
// meant.
func (Config) ConfigHint(key string) string {
	switch key {
	case "chunksize":
		return "the minio section calls it partsize"
	case "regionendpoint":
		return "the minio section calls it endpoint (HOST:PORT)"
	case "rootdirectory":
		return "the minio section calls it prefix"
	}
	return ""
}
