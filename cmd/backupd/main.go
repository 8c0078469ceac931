// Command backupd is the node daemon: it serves the backupd.v1 gRPC API
// (proto/backupd/v1) that the workspace manager calls to back up and
// restore workspaces, and Prometheus metrics. See README.md and
// `backupd --help`.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/backupd/backupd/internal/usage"
	"github.com/backupd/backupd/pkg/daemon"
	"github.com/backupd/backupd/pkg/storage/location"
)

func main() {
	if err := newCommand().Execute(); err != nil {
		// One line; a usage error (exit status 2) adds one pointing to --help.
		fmt.Fprintln(os.Stderr, "backupd:", usage.Message(err))
		code := usage.ExitCode(err)
		if code == usage.ExitUsage {
			fmt.Fprintln(os.Stderr, "Run 'backupd --help' for usage.")
		}
		os.Exit(code)
	}
}

// flags are the command line; each overrides the config file and the
// environment when given.
type flags struct {
	config                       string
	listen, metricsListen, repo  string
	roots                        []string
	tlsCert, tlsKey, tlsClientCA string
	allowInsecure                bool
	backups, restores            int
	queueTimeout, grace          time.Duration
	uploadLimit, downloadLimit   string
	softMemory                   string
	softMemoryPerOp              string
	softMemoryMax                string
	cacheDir                     string
	logFormat, logLevel          string
}

func newCommand() *cobra.Command { return (&flags{}).command() }

// command is the backupd command, its flags parsed into f.
func (f *flags) command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backupd [--config FILE] [flags]",
		Short: "The backupd node daemon: backs up and restores workspaces for the workspace manager",
		Long: `backupd serves the backupd.v1.BackupService gRPC API (proto/backupd/v1) on
--listen, with the gRPC health service and server reflection, and
Prometheus metrics on --metrics-listen at /metrics.

Settings come from the YAML file given with --config (see
deploy/backupd.yaml), then from the environment, then from flags; later
ones win. Environment: BACKUPD_LISTEN, BACKUPD_METRICS_LISTEN,
BACKUPD_REPO, BACKUPD_WORKSPACE_ROOTS (colon-separated), BACKUPD_CACHE_DIR,
BACKUPD_LOG_FORMAT, BACKUPD_LOG_LEVEL. Storage credentials belong in the
config file's storage section or the SDKs' usual environment, never in
the URL.

Without TLS, backupd listens on a unix socket or on loopback only, unless
--allow-insecure. With --tls-cert/--tls-key it serves TLS, and with
--tls-client-ca it requires client certificates (mutual TLS); the files
are read again when they change (cert-manager rotation).

On SIGTERM or SIGINT backupd stops accepting operations, lets running
ones finish for --shutdown-grace, then cancels the rest cleanly (no
partial snapshot) and exits.`,
		Example: `  # On the embedded local store, workspaces under /workspaces:
  backupd --listen 127.0.0.1:7070 --workspace-root /workspaces`,
		Args:          usage.Args(),
		Version:       versionString(),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load(cmd)
			if err != nil {
				return err
			}
			return run(cmd.Context(), cfg)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.config, "config", "", "YAML config `FILE`")
	fl.StringVar(&f.listen, "listen", "", "gRPC address: `host:port` or unix:///path (default "+daemon.DefaultListen+")")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics on this `host:port` at /metrics")
	fl.StringVarP(&f.repo, "repo", "r", "", "storage root `URL`, as backupctl's -r (default: a local repository under the user's data directory)")
	fl.StringArrayVar(&f.roots, "workspace-root", nil, "`DIR` workspaces may be backed up from and restored to (repeatable; at least one)")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "server certificate PEM `FILE`")
	fl.StringVar(&f.tlsKey, "tls-key", "", "server key PEM `FILE`")
	fl.StringVar(&f.tlsClientCA, "tls-client-ca", "", "CA bundle PEM `FILE`: require client certificates it signed (mutual TLS)")
	fl.BoolVar(&f.allowInsecure, "allow-insecure", false, "allow plaintext gRPC on a non-loopback TCP address")
	fl.IntVar(&f.backups, "max-backups", 0, fmt.Sprintf("backups run at once; more wait in a queue (default %d)", daemon.DefaultBackups))
	fl.IntVar(&f.restores, "max-restores", 0, fmt.Sprintf("restores run at once (default %d)", daemon.DefaultRestores))
	fl.DurationVar(&f.queueTimeout, "queue-timeout", 0, fmt.Sprintf("how long an operation may wait in the queue (default %v)", daemon.DefaultQueueTimeout))
	fl.StringVar(&f.uploadLimit, "upload-limit", "", "cap uploads to storage, all operations together, in `BYTES` per second (e.g. 100MiB)")
	fl.StringVar(&f.downloadLimit, "download-limit", "", "cap downloads from storage in `BYTES` per second")
	fl.StringVar(&f.softMemory, "soft-memory-limit", "", "the Go runtime's soft memory limit in `BYTES` while at most one operation runs (default 192MiB; -1 for none; $GOMEMLIMIT wins)")
	fl.StringVar(&f.softMemoryPerOp, "soft-memory-per-operation", "", "`BYTES` added to the soft memory limit for each operation running beyond the first (default 224MiB; -1 for none)")
	fl.StringVar(&f.softMemoryMax, "soft-memory-max", "", "the most the soft memory limit rises to with operations running, in `BYTES` (default 768MiB; keep a container's memory limit above it)")
	fl.DurationVar(&f.grace, "shutdown-grace", 0, fmt.Sprintf("on SIGTERM, how long running operations may go on before they are cancelled (default %v)", daemon.DefaultShutdownGrace))
	fl.StringVar(&f.cacheDir, "cache-dir", "", `node-local cache of index and trees (default: backupd/cache under the user's cache directory; "none" for no cache)`)
	fl.StringVar(&f.logFormat, "log-format", "", "json (default) or console")
	fl.StringVar(&f.logLevel, "log-level", "", "debug, info (default), warn or error")
	cmd.SetFlagErrorFunc(usage.FlagError)
	return cmd
}

// load builds the configuration: file, then environment, then flags.
func (f *flags) load(cmd *cobra.Command) (daemon.Config, error) {
	var cfg daemon.Config
	if f.config != "" {
		if err := cfg.LoadFile(f.config); err != nil {
			return cfg, err
		}
	}
	env := func(name string, dst *string) {
		if v := os.Getenv(name); v != "" {
			*dst = v
		}
	}
	env("BACKUPD_LISTEN", &cfg.Listen)
	env("BACKUPD_METRICS_LISTEN", &cfg.MetricsListen)
	env("BACKUPD_REPO", &cfg.Storage.URL)
	env("BACKUPD_CACHE_DIR", &cfg.CacheDir)
	env("BACKUPD_LOG_FORMAT", &cfg.Log.Format)
	env("BACKUPD_LOG_LEVEL", &cfg.Log.Level)
	if v := os.Getenv("BACKUPD_WORKSPACE_ROOTS"); v != "" {
		cfg.WorkspaceRoots = filepath.SplitList(v)
	}
	set := cmd.Flags().Changed
	str := func(name, v string, dst *string) {
		if set(name) {
			*dst = v
		}
	}
	str("listen", f.listen, &cfg.Listen)
	str("metrics-listen", f.metricsListen, &cfg.MetricsListen)
	str("repo", f.repo, &cfg.Storage.URL)
	str("tls-cert", f.tlsCert, &cfg.TLS.Cert)
	str("tls-key", f.tlsKey, &cfg.TLS.Key)
	str("tls-client-ca", f.tlsClientCA, &cfg.TLS.ClientCA)
	str("cache-dir", f.cacheDir, &cfg.CacheDir)
	str("log-format", f.logFormat, &cfg.Log.Format)
	str("log-level", f.logLevel, &cfg.Log.Level)
	if set("workspace-root") {
		cfg.WorkspaceRoots = f.roots
	}
	if set("allow-insecure") {
		cfg.AllowInsecure = f.allowInsecure
	}
	if set("max-backups") {
		cfg.Limits.Backups = f.backups
	}
	if set("max-restores") {
		cfg.Limits.Restores = f.restores
	}
	if set("queue-timeout") {
		cfg.Limits.QueueTimeout = f.queueTimeout
	}
	if set("shutdown-grace") {
		cfg.ShutdownGrace = f.grace
	}
	for _, l := range []struct {
		name, v string
		dst     *int64
	}{{"upload-limit", f.uploadLimit, &cfg.Limits.UploadBytesPerSecond}, {"download-limit", f.downloadLimit, &cfg.Limits.DownloadBytesPerSecond},
		{"soft-memory-limit", f.softMemory, &cfg.Limits.SoftMemoryBytes},
		{"soft-memory-per-operation", f.softMemoryPerOp, &cfg.Limits.SoftMemoryPerOperationBytes},
		{"soft-memory-max", f.softMemoryMax, &cfg.Limits.SoftMemoryMaxBytes}} {
		if set(l.name) {
			if l.v == "-1" {
				*l.dst = -1
				continue
			}
			n, err := parseBytes(l.v)
			if err != nil {
				return cfg, usage.Errorf("--%s %w", l.name, err)
			}
			*l.dst = n
		}
	}
	if len(cfg.WorkspaceRoots) == 0 {
		return cfg, usage.Errorf("no workspace root: give --workspace-root DIR (repeatable), workspace_roots in the --config file, or $BACKUPD_WORKSPACE_ROOTS")
	}
	cfg.SetDefaults()
	return cfg, cfg.Validate()
}

// parseBytes parses a byte count with an optional unit: 1048576, 512KiB,
// 100MiB, 1GiB, 10MB.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	num := s
	for _, u := range units {
		if v, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = v, u.mult
			break
		}
	}
	var n int64
	if _, err := fmt.Sscan(num, &n); err != nil || n < 0 || fmt.Sprint(n) != strings.TrimSpace(num) {
		return 0, fmt.Errorf("%q: want a number of bytes like 1048576 or 100MiB", s)
	}
	return n * mult, nil
}

func newLogger(cfg daemon.Log) (*zap.Logger, error) {
	zc := zap.NewProductionConfig()
	if cfg.Format == "console" {
		zc = zap.NewDevelopmentConfig()
	}
	lvl, err := zapcore.ParseLevel(cfg.Level)
	if err != nil {
		return nil, err
	}
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Sampling = nil
	zc.DisableStacktrace = true
	zc.EncoderConfig.TimeKey = "time"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	// Durations with their unit ("grace":"30s", "duration":"1.52s"), not
	// bare numbers of seconds.
	zc.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder
	return zc.Build()
}

// run serves until SIGTERM or SIGINT, then shuts down gracefully.
func run(ctx context.Context, cfg daemon.Config) error {
	log, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer log.Sync()
	srv, err := daemon.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		srv.ManageMemoryLimit(debug.SetMemoryLimit)
	}
	lis, err := srv.Listen()
	if err != nil {
		return err
	}
	var metricsSrv *http.Server
	if cfg.MetricsListen != "" {
		ml, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			lis.Close()
			return fmt.Errorf("metrics: %w", err)
		}
		metricsSrv = &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
		go metricsSrv.Serve(ml)
		log.Info("metrics listening", zap.String("address", ml.Addr().String()))
	}
	log.Info("backupd listening", zap.String("address", lis.Addr().String()), zap.Bool("tls", cfg.TLS.Enabled()),
		zap.Bool("mtls", cfg.TLS.ClientCA != ""), zap.String("storage", location.Redact(cfg.Storage.URL)),
		zap.Strings("workspace_roots", cfg.WorkspaceRoots), zap.Int("max_backups", cfg.Limits.Backups),
		zap.Int("max_restores", cfg.Limits.Restores))

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	select {
	case err := <-served:
		return err
	case sig := <-sigs:
		log.Info("signal received", zap.String("signal", sig.String()))
	}
	// A second signal stops at once.
	go func() {
		sig := <-sigs
		log.Warn("second signal: exiting without waiting", zap.String("signal", sig.String()))
		log.Sync()
		os.Exit(1)
	}()
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace+time.Minute)
	defer cancel()
	srv.Shutdown(sctx)
	if metricsSrv != nil {
		metricsSrv.Shutdown(sctx)
	}
	if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}
