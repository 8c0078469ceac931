package daemon

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/time/rate"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/bandwidth"
	"github.com/backupd/backupd/pkg/storage/metered"
	"github.com/backupd/backupd/pkg/tlsreload"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// Server is a configured daemon: the gRPC server with the backup service,
// health and reflection, the operation manager, and the metrics registry.
type Server struct {
	cfg      Config
	log      *zap.Logger
	roots    []workspaceRoot
	place    *placement.Placement
	ops      *manager
	metrics  *metrics
	registry *prometheus.Registry
	grpc     *grpc.Server
	health   *health.Server
	cacheDir string
	repos    *repoCache
	maint    *maintainer
	hooks    hooks
	host     string // names this node's prunes in a repository's prune state

	uploads, downloads int
	// checkpointRate is the checkpoints' upload budget (nil: none).
	checkpointRate *rate.Limiter
}

// hooks are what tests inject; the zero value is production's.
type hooks struct {
	// maintenanceWait replaces time.After as the maintenance's clock;
	// maintenancePassed receives each pass's report.
	maintenanceWait   func(time.Duration) <-chan time.Time
	maintenancePassed func(maintenancePass)
	// prune is every prune's PruneOptions.Hook.
	prune func(step string) error
	// purgeSettle is DeleteOwner's PurgeOptions.Settle (0: the default).
	purgeSettle time.Duration
	// wrapStorage, if set, wraps every backend the daemon opens (inside
	// the metering), to count or alter what reaches the storage.
	wrapStorage func(storage.Storage) storage.Storage
	// ready, if set, runs in a ready_before_complete restore once it is
	// READY, before it writes the late files.
	ready func(op *operation)
	// checkpointPack, if set, runs before each pack a checkpoint stores
	// (tests hold a checkpoint there); an error fails the checkpoint.
	checkpointPack func(ctx context.Context) error
}

// New builds a server from cfg (defaults filled in, then validated). It
// opens the storage but listens nowhere yet: see Listen and Serve.
func New(ctx context.Context, cfg Config, log *zap.Logger) (*Server, error) {
	return newServer(ctx, cfg, log, hooks{})
}

func newServer(ctx context.Context, cfg Config, log *zap.Logger, h hooks) (*Server, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	roots, err := openRoots(cfg.WorkspaceRoots)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, roots: roots, registry: prometheus.NewRegistry(), hooks: h}
	s.metrics = newMetrics(s.registry)
	s.repos = newRepoCache(cfg.Limits.IndexMemory, s.metrics)
	s.ops = newManager(log, s.metrics, cfg.Limits, cfg.OperationRetention)
	s.ops.slots[pb.OperationKind_OPERATION_KIND_CHECKPOINT] = make(chan struct{}, cfg.Checkpoint.Concurrency)
	if bps := cfg.Checkpoint.Bandwidth; bps > 0 {
		// Bursts of a quarter second's worth, 1 KiB to 256 KiB, as
		// pkg/storage/bandwidth's.
		s.checkpointRate = rate.NewLimiter(rate.Limit(bps), int(min(max(bps/4, 1<<10), 256<<10)))
	}
	s.maint = newMaintainer(s, cfg.Maintenance, &h)
	if s.host, err = os.Hostname(); err != nil {
		s.host = "backupd"
	}

	// Every backend opened (one per bucket with bucket-per-owner) is
	// metered and shares the node's bandwidth limits.
	bw := bandwidth.NewLimiter(bandwidth.Options{
		UploadBytesPerSecond: cfg.Limits.UploadBytesPerSecond, DownloadBytesPerSecond: cfg.Limits.DownloadBytesPerSecond,
	})
	sc := cfg.Storage
	sc.Wrap = func(st storage.Storage) storage.Storage {
		if h.wrapStorage != nil {
			st = h.wrapStorage(st)
		}
		return bw.Wrap(metered.New(st, s.metrics))
	}
	// The daemon backs up: a missing storage root is created where the
	// config allows it (createbucket).
	if s.place, err = placement.Open(ctx, sc, true); err != nil {
		closeRoots(roots)
		return nil, err // the backends' errors name the backend and the bucket
	}
	s.uploads, s.downloads = sc.Transfers()
	switch s.cacheDir = cfg.CacheDir; s.cacheDir {
	case "none":
		s.cacheDir = ""
	case "":
		if d, err := os.UserCacheDir(); err == nil {
			s.cacheDir = filepath.Join(d, "backupd", "cache")
		}
	}

	opts := []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(s.recoverUnary), grpc.ChainStreamInterceptor(s.recoverStream),
	}
	if cfg.TLS.Enabled() {
		tc, err := tlsreload.Server(tlsreload.ServerFiles{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, ClientCA: cfg.TLS.ClientCA},
			func(err error) { log.Error("tls: keeping the previous certificate", zap.Error(err)) })
		if err != nil {
			s.place.Close()
			closeRoots(roots)
			return nil, fmt.Errorf("tls: %w", err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(tc)))
	}
	s.grpc = grpc.NewServer(opts...)
	pb.RegisterBackupServiceServer(s.grpc, &service{s: s})
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	s.health.SetServingStatus(pb.BackupService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	reflection.Register(s.grpc)
	s.maint.start()
	if cfg.Maintenance.Enabled() {
		log.Info("periodic maintenance on", zap.Duration("interval", cfg.Maintenance.Interval),
			zap.Duration("jitter", cfg.Maintenance.Jitter), zap.Int("max_unused_percent", cfg.Maintenance.MaxUnused))
	}
	return s, nil
}

// Listen opens the configured gRPC listener. A unix socket's stale file
// (a socket left by a previous run) is replaced; the socket is made
// accessible to its owner and group only.
func (s *Server) Listen() (net.Listener, error) {
	network, addr, err := ParseListen(s.cfg.Listen)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		if fi, err := os.Lstat(addr); err == nil {
			if fi.Mode().Type() != fs.ModeSocket {
				return nil, fmt.Errorf("listen: %s exists and is not a socket", addr)
			}
			os.Remove(addr)
		}
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if network == "unix" {
		if err := os.Chmod(addr, 0o660); err != nil {
			lis.Close()
			return nil, fmt.Errorf("listen: %w", err)
		}
	}
	return lis, nil
}

// Serve serves gRPC on lis until Shutdown.
func (s *Server) Serve(lis net.Listener) error {
	err := s.grpc.Serve(lis)
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// ManageMemoryLimit makes the server keep the process's soft memory limit
// with set (debug.SetMemoryLimit) from its limits: soft_memory_bytes now
// and while at most one operation runs, soft_memory_per_operation_bytes
// more for each further one, up to soft_memory_max_bytes. Call it before
// Serve, and only when the limit is the daemon's to set ($GOMEMLIMIT
// unset); with soft_memory_bytes -1 it does nothing.
func (s *Server) ManageMemoryLimit(set func(int64) int64) {
	s.ops.mem.Store(newMemoryLimit(s.cfg.Limits, set))
}

// MetricsHandler serves the Prometheus metrics.
func (s *Server) MetricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{Registry: s.registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	return mux
}

// Shutdown stops the server gracefully: new operations are refused at
// once (health turns NOT_SERVING), running and queued ones get the
// configured grace period to finish, then they are cancelled (a cancelled
// backup writes no snapshot and aborts its uploads) and awaited; last the
// gRPC server stops, after the streams watching operations have sent
// their final state. ctx bounds the whole shutdown.
func (s *Server) Shutdown(ctx context.Context) {
	s.health.Shutdown()
	s.maint.close()
	s.ops.drain()
	s.log.Info("shutting down: no new operations", zap.Duration("grace", s.cfg.ShutdownGrace))
	grace, cancel := context.WithTimeout(ctx, s.cfg.ShutdownGrace)
	err := s.ops.wait(grace)
	cancel()
	if err != nil {
		s.log.Warn("shutdown grace period over: cancelling operations")
		s.ops.cancelAll()
		if err := s.ops.wait(ctx); err != nil {
			s.log.Error("operations did not stop in time", zap.Error(err))
		}
	}
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.grpc.Stop()
		<-stopped
	}
	s.place.Close()
	closeRoots(s.roots)
	s.log.Info("shut down")
}

// recoverUnary and recoverStream turn a panic in a handler into an
// INTERNAL error of that call, logged with its stack, so that a bug one
// request reaches never stops the daemon for every owner.
func (s *Server) recoverUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer s.recovered(info.FullMethod, &err)
	return h(ctx, req)
}

func (s *Server) recoverStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
	defer s.recovered(info.FullMethod, &err)
	return h(srv, ss)
}

func (s *Server) recovered(method string, err *error) {
	p := recover()
	if p == nil {
		return
	}
	s.log.Error("request ended by a panic", zap.String("method", method), zap.Any("panic", p), zap.ByteString("stack", debug.Stack()))
	*err = status.Error(codes.Internal, fmt.Sprintf("internal error: panic: %v", p))
}

// useRepo returns owner's repository, open with its index loaded and up
// to date, for one operation: the one kept open (repoCache), refreshed,
// or one loaded now with the node-local cache. With backup, a missing
// repository is created (a first backup). The operation calls done once
// it has ended, saying whether it failed.
func (s *Server) useRepo(ctx context.Context, owner string, backup bool) (r *repo.Repository, done func(failed bool), err error) {
	key := repoKey{location: s.cfg.Storage.URL, owner: owner}
	load := func(ctx context.Context) (*repo.Repository, error) { return s.loadRepo(ctx, owner, backup, s.cacheDir) }
	for attempt := 0; ; attempt++ {
		e, loaded, err := s.repos.acquire(ctx, key, load)
		if err != nil {
			return nil, nil, err
		}
		// A failed backup may leave packs in the index that no index
		// object names (see repoCache): the next operation loads anew.
		done := func(failed bool) { s.repos.release(e, failed && backup) }
		if loaded {
			return e.r, done, nil
		}
		// The packs are listed for restores too (as a whole load lists
		// them): a pack an index object names that is gone then costs no
		// restore a reload, and an unreadable one is named to the operator.
		res, err := e.r.Refresh(ctx, repo.RefreshOptions{Packs: true})
		if (errors.Is(err, repo.ErrNoRepository) || errors.Is(err, repo.ErrRepositoryReplaced)) && attempt == 0 {
			// Purged since it was opened (by another node), and maybe
			// created again: open what is there now.
			s.repos.release(e, true)
			continue
		}
		if err != nil {
			s.repos.release(e, false)
			return nil, nil, fmt.Errorf("owner %s: %w", owner, err)
		}
		how := "refresh"
		if res.Full {
			how = "refresh_full"
			s.log.Debug("index loaded again whole", zap.String("owner", owner), zap.String("reason", res.Reason))
		}
		s.metrics.indexLoads.WithLabelValues(how).Inc()
		s.logIndexReport(owner, &res.Report)
		s.repos.measure(e)
		return e.r, done, nil
	}
}

// openRepoForPrune opens owner's repository without loading its index:
// Prune loads it its own way, in less memory.
func (s *Server) openRepoForPrune(ctx context.Context, owner string) (*repo.Repository, error) {
	st, err := s.place.Owner(ctx, owner, false)
	if err != nil {
		return nil, err
	}
	r, err := repo.OpenCached(ctx, st, false, s.cacheDir, s.cfg.CacheSize)
	if errors.Is(err, repo.ErrNoRepository) {
		return nil, placement.NoBackups(owner, err)
	}
	if err != nil {
		return nil, fmt.Errorf("owner %s: %w", owner, err)
	}
	return r, nil
}

// loadRepo opens owner's repository and loads its index, with the cache
// under cacheDir ("" for none).
func (s *Server) loadRepo(ctx context.Context, owner string, create bool, cacheDir string) (*repo.Repository, error) {
	st, err := s.place.Owner(ctx, owner, create)
	if err != nil {
		return nil, err
	}
	r, err := repo.LoadCached(ctx, st, create, cacheDir, s.cfg.CacheSize)
	if errors.Is(err, repo.ErrNoRepository) {
		return nil, placement.NoBackups(owner, err)
	}
	if err != nil {
		return nil, fmt.Errorf("owner %s: %w", owner, err)
	}
	s.logIndexReport(owner, r.IndexReport())
	return r, nil
}

// logIndexReport logs what loading (or refreshing) owner's index found.
func (s *Server) logIndexReport(owner string, rep *repo.IndexReport) {
	for _, d := range rep.Damaged {
		s.log.Warn("damaged index object passed over; its packs were indexed from their trailers (backupctl repair index replaces it)",
			zap.String("owner", owner), zap.String("object", d.Key), zap.String("error", truncate(d.Err.Error())))
	}
	for _, b := range rep.BadPacks {
		s.log.Warn("pack with an unreadable trailer, in no index object: its blobs are unknown",
			zap.String("owner", owner), zap.String("object", b.Key), zap.String("error", truncate(b.Err.Error())))
	}
	if len(rep.Adopted) > 0 {
		s.log.Info("packs in no index object indexed from their trailers (an interrupted backup's)", zap.String("owner", owner), zap.Int("packs", len(rep.Adopted)))
	}
}
