package location

import (
	"context"
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
		return nil, fmt.Errorf("storage: url is required")
	}
	switch c.Placement {
	case "", PrefixPerOwner:
	case BucketPerOwner:
		if !strings.Contains(c.BucketTemplate, "{owner}") {
			return nil, fmt.Errorf("storage: bucket_template %q must contain {owner} with placement %s", c.BucketTemplate, BucketPerOwner)
		}
	default:
		return nil, fmt.Errorf("storage: placement %q: want %s or %s", c.Placement, PrefixPerOwner, BucketPerOwner)
	}
	if c.Connections < 0 || c.Connections > 256 {
		return nil, fmt.Errorf("storage: connections %d out of range 0..256", c.Connections)
	}
	if _, err := c.retryOptions(); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	r := &resolved{}
	dir, lerr := localPath(c.URL)
	if lerr == nil {
		if c.Placement == BucketPerOwner {
			return nil, fmt.Errorf("storage: placement %s needs an object store, not %s", BucketPerOwner, Redact(c.URL))
		}
		r.scheme, r.local = "file", dir
		return r, nil
	}
	u, err := url.Parse(c.URL)
	if err != nil || u.Scheme == "" || strings.EqualFold(u.Scheme, "file") {
		return nil, fmt.Errorf("storage: %w", lerr) // a local location, or nothing that parses
	}
	if u.User != nil {
		return nil, fmt.Errorf("storage: url %s: credentials do not belong in the URL; use the config file or the environment", Redact(c.URL))
	}
	r.scheme = u.Scheme
	switch u.Scheme {
	case "s3":
		uc, err := s3.ConfigFromURL(u)
		if err == nil {
			r.s3 = overlay(c.S3, uc)
			err = r.s3.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
	case "minio":
		uc, err := minio.ConfigFromURL(u)
		if err == nil {
			r.minio = overlay(c.MinIO, uc)
			err = r.minio.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
	case "gs":
		uc, err := gcs.ConfigFromURL(u)
		if err == nil {
			r.gcs = overlay(c.GCS, uc)
			err = r.gcs.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
	case "azblob":
		uc, err := azure.ConfigFromURL(u)
		if err == nil {
			r.azure = overlay(c.Azure, uc)
			err = r.azure.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("storage: %w", err)
		}
	default:
		return nil, fmt.Errorf("storage: url scheme %q is not supported (supported: %s)", u.Scheme, strings.Join(Schemes(), ", "))
	}
	return r, nil
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

// OpenRoot opens the storage root of cfg (the bucket and prefix of its URL),
// wrapped with retries and the connection limit. The bucket must exist.
func OpenRoot(ctx context.Context, cfg Config) (storage.Storage, error) {
	return cfg.open(ctx, "", false)
}

// OpenBucket opens (with create: creating, private, if missing) the named
// bucket of cfg's backend, with the URL's prefix; for bucket-per-owner
// placement.
func OpenBucket(ctx context.Context, cfg Config, bucket string, create bool) (storage.Storage, error) {
	return cfg.open(ctx, bucket, create)
}

func (c Config) open(ctx context.Context, bucket string, create bool) (storage.Storage, error) {
	r, err := c.resolve()
	if err != nil {
		return nil, err
	}
	var st storage.Storage
	switch r.scheme {
	case "file":
		st, err = local.New(r.local)
	case "s3":
		sc := r.s3
		if bucket != "" {
			sc.Bucket = bucket
		}
		sc.CreateBucket = sc.CreateBucket || create
		st, err = s3.New(ctx, sc)
	case "minio":
		mc := r.minio
		if bucket != "" {
			mc.Bucket = bucket
		}
		mc.CreateBucket = mc.CreateBucket || create
		st, err = minio.New(ctx, mc)
	case "gs":
		gc := r.gcs
		if bucket != "" {
			gc.Bucket = bucket
		}
		gc.CreateBucket = gc.CreateBucket || create
		st, err = gcs.New(ctx, gc)
	case "azblob":
		ac := r.azure
		if bucket != "" {
			ac.Container = bucket
		}
		ac.CreateContainer = ac.CreateContainer || create
		st, err = azure.New(ctx, ac)
	}
	if err != nil {
		return nil, fmt.Errorf("open storage %s: %w", Redact(c.URL), err)
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
