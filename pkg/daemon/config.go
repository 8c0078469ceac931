// Package daemon is backupd's node daemon: the gRPC service the workspace
// manager calls (proto/backupd/v1), the operations it runs on the engine
// (pkg/sync) under per-node limits, and its metrics. cmd/backupd parses
// the configuration and wires a Server to its listeners.
package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/backupd/backupd/internal/configyaml"
	"github.com/backupd/backupd/pkg/retention"
	"github.com/backupd/backupd/pkg/storage/location"
)

// Config is backupd's configuration: the YAML file given with --config,
// overridden by environment variables and flags (cmd/backupd).
type Config struct {
	// Listen is the gRPC address: host:port, or unix:///path for a unix
	// socket (default unix:///run/backupd/backupd.sock).
	Listen string `yaml:"listen"`
	// MetricsListen is the HTTP address (host:port) serving Prometheus
	// metrics at /metrics; empty disables it.
	MetricsListen string `yaml:"metrics_listen"`
	// AllowInsecure allows plaintext gRPC on a TCP address that is not
	// loopback. Without it such a listen address needs TLS.
	AllowInsecure bool `yaml:"allow_insecure"`
	TLS           TLS  `yaml:"tls"`
	// WorkspaceRoots are the directories workspaces may be backed up from
	// and restored to (strictly inside one of them). At least one.
	WorkspaceRoots []string `yaml:"workspace_roots"`
	// Storage is where repositories live (docs/STORAGE.md), as backupctl's
	// --storage-config; url as backupctl's -r.
	Storage location.Config `yaml:"storage"`
	// CacheDir holds the node-local cache of index and tree objects;
	// empty means backupd/cache under the user's cache directory; "none"
	// disables it.
	CacheDir string `yaml:"cache_dir"`
	// CacheSize bounds the cache in bytes; 0 means the default (2 GiB).
	CacheSize int64  `yaml:"cache_size"`
	Limits    Limits `yaml:"limits"`
	// Retention is the default retention policy, applied to a workspace
	// right after each of its backups succeeds (a BackupWorkspace request
	// may give its own); no rule keeps every snapshot. It applies to the
	// snapshots that are not checkpoints, as if there were none:
	// checkpoints have their own rule (Checkpoint.Keep).
	Retention retention.Policy `yaml:"retention"`
	// ShutdownGrace is how long running operations may go on after
	// SIGTERM before they are cancelled (default 30s).
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// OperationRetention is how long finished operations stay visible to
	// GetOperation and WatchOperation (default 1h).
	OperationRetention time.Duration `yaml:"operation_retention"`
	Maintenance        Maintenance   `yaml:"maintenance"`
	Checkpoint         Checkpoint    `yaml:"checkpoint"`
	Log                Log           `yaml:"log"`
}

// Checkpoint sets how the node runs checkpoints (CheckpointWorkspace):
// backups of running workspaces, kept apart from the stop backups so as
// not to disturb the workspaces. A checkpoint's readers and compressors
// (one of each) run at idle I/O priority and SCHED_IDLE (internal/lowprio),
// and it stores one pack at a time.
type Checkpoint struct {
	// Concurrency is how many checkpoints run at once on the node
	// (default 1), apart from limits.backups; more wait in a queue.
	Concurrency int `yaml:"concurrency"`
	// Bandwidth caps the bytes per second all checkpoints together upload
	// (within limits.upload_bytes_per_second); 0 means no cap of their own.
	Bandwidth int64 `yaml:"bandwidth"`
	// Keep is how many checkpoints of a workspace are kept, newest first,
	// after each checkpoint (default 2; a request's keep wins); older
	// checkpoints are forgotten, other snapshots never.
	Keep int `yaml:"keep"`
	// DiskWait is the longest a checkpoint holds one pack back while
	// others read or write the disk of its workspace or of a local store
	// (internal/iogate: the idle I/O class, for the I/O schedulers that
	// ignore it); a checkpoint stores at least one pack per DiskWait. 0
	// means the default (1s); a negative duration turns the wait off.
	DiskWait time.Duration `yaml:"disk_wait"`
}

// Maintenance configures the daemon's periodic prunes: every Interval
// (plus a random delay of up to Jitter, so that nodes started together
// spread out), the daemon prunes, one owner after another and under the
// node's limits, each owner whose snapshots this node forgot (retention
// after a backup, ForgetSnapshots) or whose workspaces it deleted since
// its last successful prune here. Off when Interval is 0.
type Maintenance struct {
	Interval time.Duration `yaml:"interval"`
	// Jitter is the most a pass is delayed beyond Interval (default a
	// tenth of Interval; at most Interval).
	Jitter time.Duration `yaml:"jitter"`
	// MaxUnused is the unused share of a pack, in percent (1 to 100),
	// above which prune repacks it (default 10; 100 never repacks). It is
	// also the default of PruneRepository requests.
	MaxUnused int `yaml:"max_unused"`
}

// Enabled reports whether periodic maintenance is configured.
func (m Maintenance) Enabled() bool { return m.Interval > 0 }

// TLS names PEM files; they are read again whenever they change. With
// ClientCA set, clients must present a certificate it signed (mutual TLS).
type TLS struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	ClientCA string `yaml:"client_ca"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.Cert != "" || t.Key != "" || t.ClientCA != "" }

// Limits are per-node limits.
type Limits struct {
	// Backups and Restores are how many of each run at once (default 2
	// and 4); more wait in a queue.
	Backups  int `yaml:"backups"`
	Restores int `yaml:"restores"`
	// Maintenance is how many forget, prune, delete and check operations
	// run at once, all kinds together (default 2); more wait in a queue.
	Maintenance int `yaml:"maintenance"`
	// QueueTimeout is how long an operation may wait for its turn before
	// it fails with RESOURCE_EXHAUSTED (default 10m).
	QueueTimeout time.Duration `yaml:"queue_timeout"`
	// UploadBytesPerSecond and DownloadBytesPerSecond cap the node's
	// transfers to and from storage, all operations together; 0 means
	// no cap.
	UploadBytesPerSecond   int64 `yaml:"upload_bytes_per_second"`
	DownloadBytesPerSecond int64 `yaml:"download_bytes_per_second"`
	// SoftMemoryBytes is the Go runtime's soft memory limit for the
	// daemon (debug.SetMemoryLimit) while at most one operation runs (see
	// SoftMemoryPerOperationBytes): the garbage collector works harder as
	// the heap nears it, so that what one owner's operation briefly needs
	// is given back before others need it. 0 means the default (192 MiB);
	// -1 means none. $GOMEMLIMIT, when set, wins.
	SoftMemoryBytes int64 `yaml:"soft_memory_bytes"`
	// SoftMemoryPerOperationBytes is added to the soft memory limit for
	// each operation running beyond the first (backups, restores,
	// checkpoints and maintenance alike), and taken off again as they
	// end, up to SoftMemoryMaxBytes: one backup's buffers take about 190
	// MiB of heap, and two backups under one 192 MiB limit made the
	// collector run back to back (about 1,000 collections and 50 % more
	// CPU; with 224 MiB more for the second, 40-60 collections: RESULTS
	// section 25). 0 means the default (224 MiB); -1 keeps the limit at
	// SoftMemoryBytes whatever runs.
	SoftMemoryPerOperationBytes int64 `yaml:"soft_memory_per_operation_bytes"`
	// SoftMemoryMaxBytes caps what SoftMemoryPerOperationBytes adds up to
	// (default 768 MiB, three quarters of the chart's 1 GiB container
	// limit, or SoftMemoryBytes if that is more: keep a container's limit
	// above it).
	SoftMemoryMaxBytes int64 `yaml:"soft_memory_max_bytes"`
	// IndexMemory bounds, in bytes, the indexes of the owners'
	// repositories the daemon keeps loaded between operations (so that an
	// owner's next operation reads only the index objects added since):
	// past it, those no operation uses are closed, least recently used
	// first. Those in use count, and stay. 0 means the default (64 MiB, a
	// third of the default soft memory limit: idle indexes beyond that
	// would make the garbage collector work for memory no operation uses);
	// -1 keeps none open between operations.
	IndexMemory int64 `yaml:"index_memory"`
}

// Log configures logging.
type Log struct {
	// Format is "json" (default) or "console".
	Format string `yaml:"format"`
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
}

// Defaults of the settings a zero Config leaves unset.
const (
	DefaultListen             = "unix:///run/backupd/backupd.sock"
	DefaultBackups            = 2
	DefaultRestores           = 4
	DefaultQueueTimeout       = 10 * time.Minute
	DefaultShutdownGrace      = 30 * time.Second
	DefaultOperationRetention = time.Hour
	DefaultSoftMemoryBytes    = 192 << 20
	DefaultSoftMemoryPerOp    = 224 << 20
	DefaultSoftMemoryMax      = 768 << 20
	DefaultIndexMemory        = 64 << 20
	DefaultMaintenance        = 2
	DefaultMaxUnused          = 10
	DefaultCheckpoints        = 1
	DefaultCheckpointKeep     = 2
	DefaultCheckpointDiskWait = time.Second
)

// SetDefaults fills in what is unset.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Limits.Backups == 0 {
		c.Limits.Backups = DefaultBackups
	}
	if c.Limits.Restores == 0 {
		c.Limits.Restores = DefaultRestores
	}
	if c.Limits.Maintenance == 0 {
		c.Limits.Maintenance = DefaultMaintenance
	}
	if c.Checkpoint.Concurrency == 0 {
		c.Checkpoint.Concurrency = DefaultCheckpoints
	}
	if c.Checkpoint.Keep == 0 {
		c.Checkpoint.Keep = DefaultCheckpointKeep
	}
	if c.Checkpoint.DiskWait == 0 {
		c.Checkpoint.DiskWait = DefaultCheckpointDiskWait
	}
	if c.Maintenance.MaxUnused == 0 {
		c.Maintenance.MaxUnused = DefaultMaxUnused
	}
	if c.Maintenance.Interval > 0 && c.Maintenance.Jitter == 0 {
		c.Maintenance.Jitter = c.Maintenance.Interval / 10
	}
	if c.Limits.QueueTimeout == 0 {
		c.Limits.QueueTimeout = DefaultQueueTimeout
	}
	if c.Limits.SoftMemoryBytes == 0 {
		c.Limits.SoftMemoryBytes = DefaultSoftMemoryBytes
	}
	if c.Limits.SoftMemoryPerOperationBytes == 0 {
		c.Limits.SoftMemoryPerOperationBytes = DefaultSoftMemoryPerOp
	}
	if c.Limits.SoftMemoryMaxBytes == 0 {
		c.Limits.SoftMemoryMaxBytes = max(DefaultSoftMemoryMax, c.Limits.SoftMemoryBytes)
	}
	if c.Limits.IndexMemory == 0 {
		c.Limits.IndexMemory = DefaultIndexMemory
	}
	if c.ShutdownGrace == 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.OperationRetention == 0 {
		c.OperationRetention = DefaultOperationRetention
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Storage.URL == "" {
		if u := location.FromEnv(); u != "" {
			c.Storage.URL = u
		} else if d, err := location.Default(); err == nil {
			c.Storage.URL = d
		}
	}
}

// Validate checks the configuration; errors name the setting.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	network, addr, err := ParseListen(c.Listen)
	if err != nil {
		bad("listen: %w", err)
	} else if network == "tcp" && !c.TLS.Enabled() && !c.AllowInsecure && !isLoopback(addr) {
		bad("listen %q: plaintext gRPC on a non-loopback address; configure tls (cert, key, client_ca) or set allow_insecure", c.Listen)
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("metrics_listen %q: want host:port", c.MetricsListen)
		}
	}
	if c.TLS.Enabled() && (c.TLS.Cert == "" || c.TLS.Key == "") {
		bad("tls: cert and key are both required (client_ca alone is not enough)")
	}
	if len(c.WorkspaceRoots) == 0 {
		bad("workspace_roots: at least one directory is required")
	}
	for _, r := range c.WorkspaceRoots {
		if !filepath.IsAbs(r) || filepath.Clean(r) != r || r == "/" {
			bad("workspace_roots: %q must be a clean absolute path other than /", r)
		}
	}
	if err := c.Storage.Validate(); err != nil {
		var ue *location.URLError
		if errors.As(err, &ue) {
			errs = append(errs, err) // it names the URL
		} else {
			bad("storage: %w", err)
		}
	}
	if c.CacheSize < 0 {
		bad("cache_size: %d is negative", c.CacheSize)
	}
	if err := c.Retention.Validate(); err != nil {
		bad("retention: %w", err)
	}
	l := c.Limits
	if l.Backups < 1 || l.Restores < 1 || l.Maintenance < 1 {
		bad("limits: backups (%d), restores (%d) and maintenance (%d) must be at least 1", l.Backups, l.Restores, l.Maintenance)
	}
	if m := c.Maintenance; m.Interval < 0 || m.Jitter < 0 || m.Jitter > m.Interval {
		bad("maintenance: interval (%v) and jitter (%v) must not be negative, nor jitter above interval", m.Interval, m.Jitter)
	}
	if m := c.Maintenance; m.MaxUnused < 1 || m.MaxUnused > 100 {
		bad("maintenance.max_unused: %d: want a percentage of 1 to 100", m.MaxUnused)
	}
	if cp := c.Checkpoint; cp.Concurrency < 1 || cp.Keep < 1 || cp.Bandwidth < 0 {
		bad("checkpoint: concurrency (%d) and keep (%d) must be at least 1, bandwidth (%d) not negative", cp.Concurrency, cp.Keep, cp.Bandwidth)
	}
	if w := c.Checkpoint.DiskWait; w > time.Minute {
		bad("checkpoint.disk_wait: %v: want at most 1m (a checkpoint then stores a pack a minute while the disk stays busy), or negative for no wait", w)
	}
	if l.QueueTimeout <= 0 {
		bad("limits.queue_timeout: %v must be positive", l.QueueTimeout)
	}
	if l.UploadBytesPerSecond < 0 || l.DownloadBytesPerSecond < 0 {
		bad("limits: bandwidth must not be negative")
	}
	if l.SoftMemoryBytes < -1 || (l.SoftMemoryBytes > 0 && l.SoftMemoryBytes < 32<<20) {
		bad("limits.soft_memory_bytes: %d: want at least 32 MiB, or -1 for none", l.SoftMemoryBytes)
	}
	if l.SoftMemoryPerOperationBytes < -1 {
		bad("limits.soft_memory_per_operation_bytes: %d: want bytes, 0 for the default (%d MiB), or -1 for none", l.SoftMemoryPerOperationBytes, DefaultSoftMemoryPerOp>>20)
	}
	if l.SoftMemoryBytes > 0 && l.SoftMemoryMaxBytes < l.SoftMemoryBytes {
		bad("limits.soft_memory_max_bytes: %d: want at least soft_memory_bytes (%d)", l.SoftMemoryMaxBytes, l.SoftMemoryBytes)
	}
	if l.IndexMemory < -1 {
		bad("limits.index_memory: %d: want bytes, 0 for the default (%d MiB), or -1 to keep no index loaded between operations", l.IndexMemory, DefaultIndexMemory>>20)
	}
	if c.ShutdownGrace < 0 || c.OperationRetention < 0 {
		bad("shutdown_grace and operation_retention must not be negative")
	}
	if c.Log.Format != "json" && c.Log.Format != "console" {
		bad("log.format %q: want json or console", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level %q: want debug, info, warn or error", c.Log.Level)
	}
	if len(errs) == 0 {
		return nil
	}
	return joinedErrors(errs)
}

// joinedErrors are several configuration errors, reported on one line.
type joinedErrors []error

func (e joinedErrors) Error() string {
	msgs := make([]string, len(e))
	for i, err := range e {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

// Unwrap returns the errors.
func (e joinedErrors) Unwrap() []error { return e }

// ParseListen splits a listen address into a network and an address:
// unix:///path is a unix socket, anything else host:port on TCP.
func ParseListen(s string) (network, addr string, err error) {
	if p, ok := strings.CutPrefix(s, "unix://"); ok {
		if !filepath.IsAbs(p) {
			return "", "", fmt.Errorf("%q: a unix socket needs an absolute path (unix:///run/backupd.sock)", s)
		}
		return "unix", p, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return "", "", fmt.Errorf("%q: want host:port or unix:///path", s)
	}
	return "tcp", s, nil
}

func isLoopback(addr string) bool {
	host, _, _ := net.SplitHostPort(addr)
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LoadFile reads a YAML config file into c. Unknown keys and values of
// the wrong kind are errors of one line that name the key (configyaml).
func (c *Config) LoadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("--config %s: %w", path, err)
	}
	if err := configyaml.Decode(b, c); err != nil {
		return fmt.Errorf("--config %s: %w", path, err)
	}
	return nil
}

// ConfigHint says what someone who wrote an unknown key at the top of the
// config file probably meant (configyaml.Hinter).
func (Config) ConfigHint(key string) string {
	switch key {
	case "workspace_root", "workspace-root", "workspaces", "roots":
		return "the key is workspace_roots, a list"
	case "url", "repo", "placement", "s3", "minio", "gcs", "azure", "connections":
		return key + " belongs in the storage section"
	case "metrics", "metrics-listen":
		return "the key is metrics_listen"
	case "backups", "restores", "max_backups", "max_restores", "queue_timeout":
		return "limits go in the limits section (limits: backups, restores, queue_timeout, ...)"
	case "shutdown-grace", "grace":
		return "the key is shutdown_grace"
	}
	return ""
}
