package location

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"runtime"
	"strings"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/azure"
	"github.com/backupd/backupd/pkg/storage/gcs"
	"github.com/backupd/backupd/pkg/storage/limit"
	"github.com/backupd/backupd/pkg/storage/local"
	"github.com/backupd/backupd/pkg/storage/minio"
	"github.com/backupd/backupd/pkg/storage/retry"
	"github.com/backupd/backupd/pkg/storage/s3"
)

// Config is the storage section of backupd's config file (and of
// backupctl's --storage-config): where the storage root is, how owners are
// placed in it, each backend's parameters (credentials among them: they
// never come from the URL), and the transfer policy.
type Config struct {
	// URL names the storage root (docs/STORAGE.md); its values override
	// the same parameters in the backend's section.
	URL string `yaml:"url"`
	// Placement is "prefix-per-owner" (default) or "bucket-per-owner".
	Placement string `yaml:"placement"`
	// BucketTemplate names an owner's bucket in bucket-per-owner mode,
	// with {owner} replaced by the owner id (lower-cased).
	BucketTemplate string `yaml:"bucket_template"`

	S3    s3.Config    `yaml:"s3"`
	MinIO minio.Config `yaml:"minio"`
	GCS   gcs.Config   `yaml:"gcs"`
	Azure azure.Config `yaml:"azure"`

	// Connections is the number of concurrent uploads, and separately of
	// downloads, to the storage; 0 means DefaultConnections.
	Connections int `yaml:"connections"`
	// Retry configures retries of transient failures.
	Retry RetryConfig `yaml:"retry"`

	// Wrap, if set, wraps every backend as it is opened, below the retries
	// and connection limits (so it sees each attempt): the daemon meters
	// and throttles storage calls with it.
	Wrap func(storage.Storage) storage.Storage `yaml:"-"`
}

// RetryConfig is the retry policy; zero values mean the defaults of
// retry.DefaultOptions.
type RetryConfig struct {
	Attempts int           `yaml:"attempts"`
	Initial  time.Duration `yaml:"initial"`
	Max      time.Duration `yaml:"max"`
}

// DefaultConnections is the default number of concurrent transfers each
// way. Each upload in flight holds one pack (16 MiB) in memory, so this
// also bounds a backup's memory; see benchmarks/RESULTS.md for the figures
// it was chosen by.
const DefaultConnections = 4

// Placement modes (see pkg/placement).
const (
	PrefixPerOwner = "prefix-per-owner"
	BucketPerOwner = "bucket-per-owner"
)

// Transfers returns how many packs a backup uploads at once and a restore
// fetches at once: Connections if set, else 2 uploads for the local store
// and DefaultConnections for object stores; downloads at least 2 per core
// (restore decodes as it downloads).
func (c Config) Transfers() (uploads, downloads int) {
	uploads = c.Connections
	if uploads == 0 {
		uploads = DefaultConnections
		if strings.HasPrefix(c.URL, "file:") || strings.HasPrefix(c.URL, "/") {
			uploads = 2
		}
	}
	return uploads, max(uploads, 2*runtime.GOMAXPROCS(0))
}

// Validate checks everything that can be checked without opening the
// storage; errors name the parameter.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}

func (c Config) retryOptions() (retry.Options, error) {
	o := retry.DefaultOptions()
	if c.Retry.Attempts != 0 {
		o.Attempts = c.Retry.Attempts
	}
	if c.Retry.Initial != 0 {
		o.Initial = c.Retry.Initial
	}
	if c.Retry.Max != 0 {
		o.Max = c.Retry.Max
	}
	return o, o.Validate()
}

// resolved is a Config after merging the URL into the backend section.
type resolved struct {
	scheme string
	local  string
	s3     s3.Config
	minio  minio.Config
	gcs    gcs.Config
	azure  azure.Config
}

func (c Config) resolve() (*resolved, error) {
	if c.URL == "" {
		return nil, errors.New("no storage URL: give -r URL, url in the storage section, or $" + EnvVar)
	}
	switch c.Placement {
	case "", PrefixPerOwner:
	case BucketPerOwner:
		if !strings.Contains(c.BucketTemplate, "{owner}") {
			return nil, fmt.Errorf("bucket_template %q must contain {owner} with placement %s, as in backupd-{owner}", c.BucketTemplate, BucketPerOwner)
		}
	default:
		return nil, fmt.Errorf("placement %q: want %s or %s", c.Placement, PrefixPerOwner, BucketPerOwner)
	}
	if c.Connections < 0 || c.Connections > 256 {
		return nil, fmt.Errorf("connections %d out of range 0..256 (0 for the default %d)", c.Connections, DefaultConnections)
	}
	if _, err := c.retryOptions(); err != nil {
		return nil, err // "retry: ..."
	}
	r := &resolved{}
	dir, lerr := localPath(c.URL)
	if lerr == nil {
		if c.Placement == BucketPerOwner {
			return nil, fmt.Errorf("placement %s needs an object store (s3, minio, gs, azblob), not the local directory %s", BucketPerOwner, dir)
		}
		r.scheme, r.local = "file", dir
		return r, nil
	}
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme == "" || strings.EqualFold(u.Scheme, "file") {
		return nil, c.urlError(lerr) // a local location, or nothing that parses
	}
	if u.User != nil {
		return nil, c.urlError(errors.New("credentials do not belong in the URL; put them in the storage config file (--storage-config) or the environment"))
	}
	r.scheme = u.Scheme
	var uerr, verr error
	switch u.Scheme {
	case "s3":
		var uc s3.Config
		if uc, uerr = s3.ConfigFromURL(u); uerr == nil {
			r.s3 = overlay(c.S3, uc)
			verr = r.s3.Validate()
		}
	case "minio":
		var uc minio.Config
		if uc, uerr = minio.ConfigFromURL(u); uerr == nil {
			r.minio = overlay(c.MinIO, uc)
			verr = r.minio.Validate()
		}
	case "gs":
		var uc gcs.Config
		if uc, uerr = gcs.ConfigFromURL(u); uerr == nil {
			r.gcs = overlay(c.GCS, uc)
			verr = r.gcs.Validate()
		}
	case "azblob":
		var uc azure.Config
		if uc, uerr = azure.ConfigFromURL(u); uerr == nil {
			r.azure = overlay(c.Azure, uc)
			verr = r.azure.Validate()
		}
	default:
		return nil, c.urlError(fmt.Errorf("unsupported scheme %q (use %s)", u.Scheme, schemeList()))
	}
	if uerr != nil {
		return nil, c.urlError(uerr)
	}
	return r, verr
}

// urlError is the error of a storage URL that does not parse or names
// something invalid.
func (c Config) urlError(err error) error {
	return &URLError{URL: Redact(c.URL), Err: err}
}

// URLError is a storage URL that cannot be used as written: a usage
// error (backupctl and backupd exit with status 2). Its message quotes
// the URL redacted.
type URLError struct {
	URL string // redacted
	Err error
}

func (e *URLError) Error() string { return "storage URL " + e.URL + ": " + e.Err.Error() }

// Unwrap returns the reason.
func (e *URLError) Unwrap() error { return e.Err }

// schemeList is "file, s3, minio, gs or azblob".
func schemeList() string {
	s := Schemes()
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// overlay returns base with every non-zero field of over copied onto it.
func overlay[T any](base, over T) T {
	b := reflect.ValueOf(&base).Elem()
	o := reflect.ValueOf(over)
	for i := range o.NumField() {
		if f := o.Field(i); b.Field(i).CanSet() && !f.IsZero() {
			b.Field(i).Set(f)
		}
	}
	return base
}

// OpenRoot opens the storage root of cfg (the bucket and prefix of its
// URL), wrapped with retries and the connection limit. With create (a
// command that writes: a backup, init), what is missing is created: a
// local directory always, a bucket only when the backend's createbucket
// (azure: createcontainer) is set. Without create nothing is ever
// created, whatever the config says: a missing bucket or directory is an
// error wrapping storage.ErrNoBucket.
func OpenRoot(ctx context.Context, cfg Config, create bool) (storage.Storage, error) {
	return cfg.open(ctx, "", create)
}

// OpenBucket opens the named bucket of cfg's backend, with the URL's
// prefix, for bucket-per-owner placement. With create (an owner's first
// backup) a missing bucket is created, private; without, it is an error
// wrapping storage.ErrNoBucket.
func OpenBucket(ctx context.Context, cfg Config, bucket string, create bool) (storage.Storage, error) {
	return cfg.open(ctx, bucket, create)
}

func (c Config) open(ctx context.Context, bucket string, create bool) (storage.Storage, error) {
	r, err := c.resolve()
	if err != nil {
		return nil, err
	}
	// Whether a missing bucket is created: a named (owner's) bucket when
	// the caller creates; the root only when the config asks for it too.
	createBucket := func(configured bool) bool {
		if bucket != "" {
			return create
		}
		return create && configured
	}
	var st storage.Storage
	switch r.scheme {
	case "file":
		st, err = local.Open(local.Config{Dir: r.local, MustExist: !create})
	case "s3":
		sc := r.s3
		if bucket != "" {
			sc.Bucket = bucket
		}
		sc.CreateBucket = createBucket(sc.CreateBucket)
		st, err = s3.New(ctx, sc)
	case "minio":
		mc := r.minio
		if bucket != "" {
			mc.Bucket = bucket
		}
		mc.CreateBucket = createBucket(mc.CreateBucket)
		st, err = minio.New(ctx, mc)
	case "gs":
		gc := r.gcs
		if bucket != "" {
			gc.Bucket = bucket
		}
		gc.CreateBucket = createBucket(gc.CreateBucket)
		st, err = gcs.New(ctx, gc)
	case "azblob":
		ac := r.azure
		if bucket != "" {
			ac.Container = bucket
		}
		ac.CreateContainer = createBucket(ac.CreateContainer)
		st, err = azure.New(ctx, ac)
	}
	if err != nil {
		return nil, err // the backends' errors name the backend and the bucket
	}
	if c.Wrap != nil {
		st = c.Wrap(st)
	}
	if r.scheme == "file" {
		return st, nil // local errors are never transient, and disks need no connection limit
	}
	ro, _ := c.retryOptions()
	n := c.Connections
	if n == 0 {
		n = DefaultConnections
	}
	return limit.New(retry.New(st, ro), limit.Options{Uploads: n, Downloads: n, Metadata: 2 * n}), nil
}

// CreatesRoot reports whether a backup creates the storage root when it
// is missing: a local directory always, a bucket (container) when the
// backend's createbucket (azure: createcontainer) is set. Read-only
// commands never create it; they find no backups in it.
func (c Config) CreatesRoot() bool {
	r, err := c.resolve()
	if err != nil {
		return false
	}
	switch r.scheme {
	case "file":
		return true
	case "s3":
		return r.s3.CreateBucket
	case "minio":
		return r.minio.CreateBucket
	case "gs":
		return r.gcs.CreateBucket
	case "azblob":
		return r.azure.CreateContainer
	}
	return false
}

// ConfigHint says what someone who wrote an unknown key in the storage
// section probably meant (configyaml.Hinter).
func (Config) ConfigHint(key string) string {
	switch key {
	case "azblob":
		return "the Azure section is called azure (azblob is the URL scheme)"
	case "gs", "google":
		return "the Google Cloud Storage section is called gcs (gs is the URL scheme)"
	case "aws":
		return "the S3 section is called s3"
	case "file", "local":
		return "a local directory has no section: set url: file:///abs/path"
	case "createbucket", "createcontainer", "endpoint", "region", "bucket", "prefix", "accesskey", "secretkey",
		"credentialsfile", "accountname", "accountkey", "connectionstring":
		return key + " belongs in the backend's section (s3, minio, gcs or azure)"
	case "bucket-per-owner", "prefix-per-owner":
		return "it is a value: placement: " + key
	case "storage":
		return "the storage section is not nested: write its keys at this level"
	}
	return ""
}
