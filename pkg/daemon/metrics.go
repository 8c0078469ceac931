package daemon

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/backupd/backupd/pkg/storage"
)

// metrics are the daemon's Prometheus series, all prefixed backupd_.
type metrics struct {
	operations *prometheus.CounterVec   // kind, result
	duration   *prometheus.HistogramVec // kind, result
	// readyDuration: request to READY of ready_before_complete restores.
	readyDuration prometheus.Histogram
	bytes         *prometheus.CounterVec   // kind
	uploaded      *prometheus.CounterVec   // kind: backup, checkpoint
	queueWait     *prometheus.HistogramVec // kind
	queued        *prometheus.GaugeVec     // kind
	running       *prometheus.GaugeVec     // kind
	// checkpointDiskWait: seconds checkpoints held packs back for others'
	// use of the disk (checkpoint.disk_wait).
	checkpointDiskWait prometheus.Counter

	pruneFreedBytes   prometheus.Counter
	pruneFreedObjects prometheus.Counter
	pruneDuration     *prometheus.HistogramVec // result
	forgotten         *prometheus.CounterVec   // trigger (backup, request)
	purges            *prometheus.CounterVec   // result
	purgedObjects     prometheus.Counter
	purgedBytes       prometheus.Counter
	pendingPrunes     prometheus.Gauge

	indexLoads    *prometheus.CounterVec // how (full, refresh, refresh_full)
	repoEvictions prometheus.Counter
	openRepos     prometheus.Gauge
	openRepoBytes prometheus.Gauge

	storageCalls    *prometheus.CounterVec   // op, result
	storageErrors   *prometheus.CounterVec   // op
	storageBytes    *prometheus.CounterVec   // op
	storageDuration *prometheus.HistogramVec // op
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := func(c prometheus.Collector) prometheus.Collector { reg.MustRegister(c); return c }
	durations := []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}
	m := &metrics{
		operations: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_operations_total",
			Help: "Finished operations by kind (backup, restore, forget, prune, delete_workspace, delete_owner, check) and result (succeeded, failed, cancelled)."}, []string{"kind", "result"})).(*prometheus.CounterVec),
		duration: f(prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "backupd_operation_duration_seconds",
			Help: "Duration of finished operations, queue wait included.", Buckets: durations}, []string{"kind", "result"})).(*prometheus.HistogramVec),
		readyDuration: f(prometheus.NewHistogram(prometheus.HistogramOpts{Name: "backupd_restore_ready_seconds",
			Help: "Time from the request of a ready_before_complete restore to READY (the workspace usable), queue wait included.", Buckets: durations})).(prometheus.Histogram),
		bytes: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_operation_bytes_total",
			Help: "File content processed by successful operations (backed up or restored)."}, []string{"kind"})).(*prometheus.CounterVec),
		uploaded: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_backup_uploaded_bytes_total",
			Help: "Bytes stored (packs, compressed) by successful backups, by kind: backup (the stop backups) or checkpoint."}, []string{"kind"})).(*prometheus.CounterVec),
		queueWait: f(prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "backupd_queue_wait_seconds",
			Help: "Time operations waited for a slot under the per-node limits.", Buckets: []float64{0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600}}, []string{"kind"})).(*prometheus.HistogramVec),
		queued: f(prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backupd_operations_queued",
			Help: "Operations waiting for a slot."}, []string{"kind"})).(*prometheus.GaugeVec),
		running: f(prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "backupd_operations_running",
			Help: "Operations running."}, []string{"kind"})).(*prometheus.GaugeVec),
		checkpointDiskWait: f(prometheus.NewCounter(prometheus.CounterOpts{Name: "backupd_checkpoint_disk_wait_seconds_total",
			Help: "Time checkpoints held their packs back while others read or wrote the disk of their workspace or of a local store (checkpoint.disk_wait)."})).(prometheus.Counter),
		pruneFreedBytes: f(prometheus.NewCounter(prometheus.CounterOpts{Name: "backupd_prune_freed_bytes_total",
			Help: "Bytes prunes freed (deleted packs less the packs they wrote)."})).(prometheus.Counter),
		pruneFreedObjects: f(prometheus.NewCounter(prometheus.CounterOpts{Name: "backupd_prune_deleted_objects_total",
			Help: "Objects prunes deleted (packs, index objects, their own lists, ended sessions)."})).(prometheus.Counter),
		pruneDuration: f(prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "backupd_prune_duration_seconds",
			Help: "Duration of prunes that ran (dry runs excluded), queue wait excluded, by result.", Buckets: durations}, []string{"result"})).(*prometheus.HistogramVec),
		forgotten: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_forgotten_snapshots_total",
			Help: "Snapshots forgotten, by trigger: backup (retention after a backup) or request (ForgetSnapshots)."}, []string{"trigger"})).(*prometheus.CounterVec),
		purges: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_owner_purges_total",
			Help: "Owner deletions (DeleteOwner) by result."}, []string{"result"})).(*prometheus.CounterVec),
		purgedObjects: f(prometheus.NewCounter(prometheus.CounterOpts{Name: "backupd_owner_purged_objects_total",
			Help: "Objects deleted by owner deletions."})).(prometheus.Counter),
		purgedBytes: f(prometheus.NewCounter(prometheus.CounterOpts{Name: "backupd_owner_purged_bytes_total",
			Help: "Bytes deleted by owner deletions."})).(prometheus.Counter),
		pendingPrunes: f(prometheus.NewGauge(prometheus.GaugeOpts{Name: "backupd_maintenance_pending_owners",
			Help: "Owners the periodic maintenance is to prune (snapshots forgotten or workspaces deleted on this node since their last prune here)."})).(prometheus.Gauge),
		indexLoads: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_index_loads_total",
			Help: "Index loads by how: full (an owner's repository opened), refresh (an open one brought up to date, reading only new index objects), refresh_full (a refresh that had to load it whole: a prune, removed index objects, a pack gone)."}, []string{"how"})).(*prometheus.CounterVec),
		repoEvictions: f(prometheus.NewCounter(prometheus.CounterOpts{Name: "backupd_open_repository_evictions_total",
			Help: "Open repositories closed to keep their indexes within limits.index_memory."})).(prometheus.Counter),
		openRepos: f(prometheus.NewGauge(prometheus.GaugeOpts{Name: "backupd_open_repositories",
			Help: "Owners' repositories kept open with their index loaded."})).(prometheus.Gauge),
		openRepoBytes: f(prometheus.NewGauge(prometheus.GaugeOpts{Name: "backupd_open_repositories_bytes",
			Help: "Estimated memory of the open repositories' indexes (limits.index_memory bounds those no operation uses)."})).(prometheus.Gauge),
		storageCalls: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_storage_calls_total",
			Help: "Storage calls (each attempt) by op (put, put_if_absent, put_if_match, get, get_with_info, stat, list, delete, clean_uploads) and result (ok, not_found, error)."}, []string{"op", "result"})).(*prometheus.CounterVec),
		storageErrors: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_storage_errors_total",
			Help: "Storage calls that failed (not found excluded)."}, []string{"op"})).(*prometheus.CounterVec),
		storageBytes: f(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "backupd_storage_bytes_total",
			Help: "Bytes uploaded (put) and downloaded (get)."}, []string{"op"})).(*prometheus.CounterVec),
		storageDuration: f(prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "backupd_storage_call_duration_seconds",
			Help: "Duration of storage calls; a get lasts until its reader is closed.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 9)}, []string{"op"})).(*prometheus.HistogramVec),
	}
	// Series exist from the start, so a scrape shows them before the
	// first operation.
	for _, r := range []string{"succeeded", "failed", "cancelled"} {
		m.pruneDuration.WithLabelValues(r)
		m.purges.WithLabelValues(r)
	}
	for _, h := range []string{"full", "refresh", "refresh_full"} {
		m.indexLoads.WithLabelValues(h)
	}
	for _, t := range []string{"backup", "checkpoint", "request"} {
		m.forgotten.WithLabelValues(t)
	}
	for _, k := range []string{"backup", "checkpoint"} {
		m.uploaded.WithLabelValues(k)
	}
	for _, k := range kindNames {
		m.queued.WithLabelValues(k)
		m.running.WithLabelValues(k)
		m.bytes.WithLabelValues(k)
		m.queueWait.WithLabelValues(k)
		for _, r := range []string{"succeeded", "failed", "cancelled"} {
			m.operations.WithLabelValues(k, r)
			m.duration.WithLabelValues(k, r)
		}
	}
	for _, op := range []string{"put", "put_if_absent", "put_if_match", "get", "get_with_info", "stat", "list", "delete", "clean_uploads"} {
		m.storageErrors.WithLabelValues(op)
		m.storageBytes.WithLabelValues(op)
		m.storageDuration.WithLabelValues(op)
		for _, r := range []string{"ok", "not_found", "error"} {
			m.storageCalls.WithLabelValues(op, r)
		}
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveCall records one storage call (metered.Observer).
func (m *metrics) ObserveCall(op string, err error, bytes int64, d time.Duration) {
	result := "ok"
	switch {
	case errors.Is(err, storage.ErrNotFound):
		result = "not_found"
	case err != nil:
		result = "error"
		m.storageErrors.WithLabelValues(op).Inc()
	}
	m.storageCalls.WithLabelValues(op, result).Inc()
	m.storageBytes.WithLabelValues(op).Add(float64(bytes))
	m.storageDuration.WithLabelValues(op).Observe(d.Seconds())
}
