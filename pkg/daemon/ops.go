package daemon

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/backupd/backupd/internal/panics"
	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// operation is one backup or restore, from its request until it is
// forgotten (retention after its end).
type operation struct {
	id, owner, workspace, path, requestID string
	kind                                  pb.OperationKind
	joinKey                               string
	created                               time.Time
	// fingerprint is what the request that started it asked for; every
	// request that joins it asked for the same. request is that request,
	// kept to name what another one asks differently; nil once it ended
	// (both guarded by the manager's lock).
	fingerprint [sha256.Size]byte
	request     proto.Message
	// release frees what the request opened for the operation (its
	// directory), once the operation has ended, run or not; may be nil.
	release func() error
	// waitFor are the operations a delete (a backup: the checkpoints of
	// its workspace) cancelled when it was accepted; it waits for their
	// end before it deletes (backs up).
	waitFor []*operation

	progress bsync.Progress
	ctx      context.Context
	cancel   context.CancelFunc
	done     chan struct{} // closed when it has ended

	mu            sync.Mutex
	state         pb.OperationState
	phase         pb.OperationPhase
	started       time.Time
	transferStart time.Time
	readyTime     time.Time // a ready_before_complete restore's READY
	ended         time.Time
	result        *pb.OperationResult
	err           error
	changed       chan struct{} // closed and replaced on every change
}

// update changes the operation under its lock and wakes its watchers.
func (o *operation) update(fn func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	fn()
	close(o.changed)
	o.changed = make(chan struct{})
}

// setPhase moves a running operation to a new phase.
func (o *operation) setPhase(p pb.OperationPhase) {
	o.update(func() {
		o.phase = p
		if p == pb.OperationPhase_OPERATION_PHASE_TRANSFERRING {
			o.transferStart = time.Now()
		}
	})
}

// changes returns a channel closed at the next change.
func (o *operation) changes() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

// proto is the operation as the API shows it.
func (o *operation) proto() *pb.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := &pb.Operation{
		Id: o.id, Kind: o.kind, State: o.state, Owner: o.owner, Workspace: o.workspace, Path: o.path,
		RequestId: o.requestID, CreateTime: timestamppb.New(o.created), Result: o.result,
	}
	if !o.started.IsZero() {
		p.StartTime = timestamppb.New(o.started)
	}
	if !o.ended.IsZero() {
		p.EndTime = timestamppb.New(o.ended)
	}
	if !o.readyTime.IsZero() {
		p.ReadyTime = timestamppb.New(o.readyTime)
	}
	if o.err != nil {
		p.ErrorCode = int32(grpcCode(o.err))
		p.ErrorMessage = truncate(o.err.Error())
	}
	phase := o.phase
	if (phase == pb.OperationPhase_OPERATION_PHASE_TRANSFERRING || phase == pb.OperationPhase_OPERATION_PHASE_READY) && o.progress.Finishing.Load() {
		phase = pb.OperationPhase_OPERATION_PHASE_FINISHING
	}
	pr := &pb.Progress{
		Phase:      phase,
		FilesDone:  o.progress.Files.Load(),
		FilesTotal: o.progress.TotalFiles.Load(),
		BytesDone:  o.progress.Bytes.Load(),
		BytesTotal: o.progress.TotalBytes.Load(),
	}
	if !o.transferStart.IsZero() {
		end := o.ended
		if end.IsZero() {
			end = time.Now()
		}
		if el := end.Sub(o.transferStart).Seconds(); el > 0 {
			pr.BytesPerSecond = float64(pr.BytesDone) / el
		}
		if o.ended.IsZero() && pr.BytesPerSecond > 0 && pr.BytesTotal > pr.BytesDone {
			pr.EstimatedTimeLeft = durationpb.New(time.Duration(float64(pr.BytesTotal-pr.BytesDone) / pr.BytesPerSecond * float64(time.Second)))
		}
	}
	p.Progress = pr
	return p
}

func (o *operation) finished() bool {
	select {
	case <-o.done:
		return true
	default:
		return false
	}
}

// runFunc does an operation's work once it has its turn.
type runFunc func(ctx context.Context, op *operation) (*pb.OperationResult, error)

// manager runs operations under the per-node limits, joins duplicates and
// keeps finished operations for a while.
type manager struct {
	log     *zap.Logger
	metrics *metrics
	limits  Limits
	keep    time.Duration

	base       context.Context // parent of every operation's context
	cancelBase context.CancelFunc
	slots      map[pb.OperationKind]chan struct{}
	wg         sync.WaitGroup
	mem        atomic.Pointer[memoryLimit] // nil: the soft memory limit is not the daemon's to set

	mu        sync.Mutex
	ops       map[string]*operation
	active    map[string]*operation // queued or running, by join key
	byRequest map[string]*operation // the operation each request id started or joined
	draining  bool
}

func newManager(log *zap.Logger, m *metrics, limits Limits, keep time.Duration) *manager {
	base, cancel := context.WithCancel(context.Background())
	// Forget, prune, delete and check share one pool of slots.
	maintenance := make(chan struct{}, limits.Maintenance)
	return &manager{
		log: log, metrics: m, limits: limits, keep: keep, base: base, cancelBase: cancel,
		slots: map[pb.OperationKind]chan struct{}{
			pb.OperationKind_OPERATION_KIND_BACKUP:           make(chan struct{}, limits.Backups),
			pb.OperationKind_OPERATION_KIND_RESTORE:          make(chan struct{}, limits.Restores),
			pb.OperationKind_OPERATION_KIND_FORGET:           maintenance,
			pb.OperationKind_OPERATION_KIND_PRUNE:            maintenance,
			pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE: maintenance,
			pb.OperationKind_OPERATION_KIND_DELETE_OWNER:     maintenance,
			pb.OperationKind_OPERATION_KIND_CHECK:            maintenance,
			// The server sizes it from checkpoint.concurrency.
			pb.OperationKind_OPERATION_KIND_CHECKPOINT: make(chan struct{}, 1),
		},
		ops: map[string]*operation{}, active: map[string]*operation{}, byRequest: map[string]*operation{},
	}
}

// errDraining refuses new operations during shutdown.
var errDraining = errors.New("backupd is shutting down: no new operations")

// opSpec is what an operation is asked for: its kind, owner, workspace
// and path (as the API shows them), the request and its id, the key under
// which requests join it, what the request opened for it, and its work.
type opSpec struct {
	kind                                       pb.OperationKind
	owner, workspace, path, requestID, joinKey string
	req                                        proto.Message
	release                                    func() error
	run                                        runFunc
}

// start starts an operation for spec.req, or returns the one it joins:
// the operation an earlier request with the same request id started or
// joined, or one queued or running with the same join key. Either must
// have been asked for with the same parameters (apart from request_id):
// a request id reused for something else is INVALID_ARGUMENT, a join key
// in use by an operation with other parameters FAILED_PRECONDITION.
//
// A delete-owner operation (a delete-workspace one) cancels the queued
// and running operations of its owner (of its workspace) when it is
// accepted, and holds their list in waitFor; while it is active, requests
// for that owner (workspace) are refused.
func (m *manager) start(spec opSpec) (*operation, bool, error) {
	op, joined, err := m.startLocked(spec)
	if (err != nil || joined) && spec.release != nil {
		spec.release() // not this request's operation: what it opened is not needed
	}
	return op, joined, err
}

func (m *manager) startLocked(spec opSpec) (*operation, bool, error) {
	kind, owner, workspace, path, requestID, joinKey, req := spec.kind, spec.owner, spec.workspace, spec.path, spec.requestID, spec.joinKey, spec.req
	fp := fingerprint(req)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetExpired()
	if requestID != "" {
		if op, ok := m.byRequest[requestID]; ok {
			if op.fingerprint != fp {
				return nil, false, invalidField("request_id", fmt.Errorf("%q was used for a different request (operation %s%s)",
					requestID, op.id, differences(op, req)))
			}
			return op, true, nil
		}
	}
	if m.draining {
		return nil, false, errDraining
	}
	for _, other := range m.active {
		// A delete of the owner may follow anything, even a delete of one
		// of its workspaces: it cancels it.
		if other.joinKey == joinKey || other.owner != owner || kind == pb.OperationKind_OPERATION_KIND_DELETE_OWNER {
			continue
		}
		if other.kind == pb.OperationKind_OPERATION_KIND_DELETE_OWNER ||
			(other.kind == pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE && other.workspace == workspace) {
			what := "owner " + owner
			if other.kind == pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE {
				what = "workspace " + owner + "/" + workspace
			}
			return nil, false, &conflictError{fmt.Sprintf("%s is being deleted by operation %s", what, other.id)}
		}
	}
	// A checkpoint is older than a backup of its workspace asked for
	// before it: refused. A backup cancels the workspace's checkpoint
	// (below) and waits only for its end.
	if kind == pb.OperationKind_OPERATION_KIND_CHECKPOINT {
		if other, ok := m.active["backup/"+owner+"/"+workspace]; ok {
			return nil, false, &conflictError{fmt.Sprintf("workspace %s/%s is being backed up by operation %s: no checkpoint while a backup is queued or running",
				owner, workspace, other.id)}
		}
	}
	cancelsCheckpoint := func(other *operation) bool {
		return kind == pb.OperationKind_OPERATION_KIND_BACKUP && other.kind == pb.OperationKind_OPERATION_KIND_CHECKPOINT &&
			other.owner == owner && other.workspace == workspace
	}
	if op, ok := m.active[joinKey]; ok {
		if op.fingerprint != fp {
			return nil, false, &conflictError{fmt.Sprintf("%s by operation %s with different parameters%s; wait for it or cancel it",
				activeWhat(kind, owner, workspace, path), op.id, differences(op, req))}
		}
		if requestID != "" {
			m.byRequest[requestID] = op
		}
		return op, true, nil
	}
	if path != "" {
		for _, other := range m.active {
			if other.path == path && !cancelsCheckpoint(other) {
				return nil, false, &conflictError{fmt.Sprintf("%s is in use by %s operation %s", path, kindName(other.kind), other.id)}
			}
		}
	}
	op := &operation{
		id: newOperationID(), kind: kind, owner: owner, workspace: workspace, path: path, requestID: requestID,
		joinKey: joinKey, fingerprint: fp, request: req, release: spec.release, created: time.Now(), done: make(chan struct{}), changed: make(chan struct{}),
		state: pb.OperationState_OPERATION_STATE_QUEUED, phase: pb.OperationPhase_OPERATION_PHASE_QUEUED,
	}
	switch kind {
	case pb.OperationKind_OPERATION_KIND_BACKUP:
		for _, other := range m.active {
			if cancelsCheckpoint(other) {
				other.cancel()
				op.waitFor = append(op.waitFor, other)
				m.log.Info("backup cancels the workspace's checkpoint", zap.String("operation", op.id), zap.String("checkpoint", other.id),
					zap.String("owner", owner), zap.String("workspace", workspace))
			}
		}
	case pb.OperationKind_OPERATION_KIND_DELETE_OWNER, pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE:
		for _, other := range m.active {
			if other.owner == owner && (kind == pb.OperationKind_OPERATION_KIND_DELETE_OWNER || other.workspace == workspace) {
				other.cancel()
				op.waitFor = append(op.waitFor, other)
			}
		}
	}
	op.ctx, op.cancel = context.WithCancel(m.base)
	m.ops[op.id] = op
	m.active[joinKey] = op
	if requestID != "" {
		m.byRequest[requestID] = op
	}
	m.wg.Add(1)
	m.metrics.queued.WithLabelValues(kindName(kind)).Inc()
	go m.run(op, spec.run)
	return op, false, nil
}

// activeWhat says what an active operation of kind is doing, for a
// conflict's message.
func activeWhat(kind pb.OperationKind, owner, workspace, path string) string {
	switch kind {
	case pb.OperationKind_OPERATION_KIND_RESTORE:
		return fmt.Sprintf("%s is being restored from workspace %s/%s", path, owner, workspace)
	case pb.OperationKind_OPERATION_KIND_FORGET:
		if workspace == "" {
			return fmt.Sprintf("snapshots of owner %s are being forgotten", owner)
		}
		return fmt.Sprintf("snapshots of workspace %s/%s are being forgotten", owner, workspace)
	case pb.OperationKind_OPERATION_KIND_PRUNE:
		return fmt.Sprintf("the repository of owner %s is being pruned", owner)
	case pb.OperationKind_OPERATION_KIND_CHECK:
		return fmt.Sprintf("the repository of owner %s is being checked", owner)
	case pb.OperationKind_OPERATION_KIND_CHECKPOINT:
		return fmt.Sprintf("workspace %s/%s is being checkpointed", owner, workspace)
	}
	return fmt.Sprintf("workspace %s/%s is being backed up", owner, workspace)
}

// ready moves a running restore to OPERATION_PHASE_READY (its watchers
// told at once) and records the time from its request to then.
func (m *manager) ready(op *operation, bytesLeft int64) {
	now := time.Now()
	op.update(func() {
		op.phase = pb.OperationPhase_OPERATION_PHASE_READY
		op.readyTime = now
	})
	m.metrics.readyDuration.Observe(now.Sub(op.created).Seconds())
	m.log.Info("restore ready", zap.String("operation", op.id), zap.String("owner", op.owner), zap.String("workspace", op.workspace),
		zap.String("path", op.path), zap.Duration("since_request", now.Sub(op.created)),
		zap.Int64("bytes_left", bytesLeft))
}

// run waits for a slot, runs the operation and records its end.
func (m *manager) run(op *operation, run runFunc) {
	defer m.wg.Done()
	kind := kindName(op.kind)
	slot := m.slots[op.kind]
	timer := time.NewTimer(m.limits.QueueTimeout)
	var err error
	select {
	case slot <- struct{}{}:
	case <-op.ctx.Done():
		err = fmt.Errorf("cancelled while queued: %w", context.Canceled)
	case <-timer.C:
		err = &queueTimeoutError{m.limits.QueueTimeout}
	}
	timer.Stop()
	wait := time.Since(op.created)
	m.metrics.queued.WithLabelValues(kind).Dec()
	m.metrics.queueWait.WithLabelValues(kind).Observe(wait.Seconds())
	var res *pb.OperationResult
	if err == nil {
		op.update(func() {
			op.state = pb.OperationState_OPERATION_STATE_RUNNING
			op.phase = pb.OperationPhase_OPERATION_PHASE_PREPARING
			op.started = time.Now()
		})
		m.metrics.running.WithLabelValues(kind).Inc()
		m.log.Info("operation started", zap.String("operation", op.id), zap.String("kind", kind),
			zap.String("owner", op.owner), zap.String("workspace", op.workspace), zap.String("path", op.path),
			zap.String("request_id", op.requestID), zap.Duration("queue_wait", wait))
		mem := m.mem.Load()
		mem.add(1)
		res, err = runRecovered(run, op)
		mem.add(-1)
		m.metrics.running.WithLabelValues(kind).Dec()
		// The slot is freed only once the end is recorded, so that the
		// next operation's start never precedes this one's end.
		m.finish(op, res, err)
		<-slot
		return
	}
	m.finish(op, res, err)
}

// runRecovered runs an operation's work, turning a panic (a bug that one
// owner's crafted object reached, say) into that operation's failure
// instead of the end of every owner's operations.
func runRecovered(run runFunc, op *operation) (res *pb.OperationResult, err error) {
	defer panics.Recover(&err)
	return run(op.ctx, op)
}

// finish records an operation's end.
func (m *manager) finish(op *operation, res *pb.OperationResult, err error) {
	if err != nil && op.ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = &cancelledError{err}
	}
	state := pb.OperationState_OPERATION_STATE_SUCCEEDED
	switch {
	case errors.As(err, new(*cancelledError)):
		state = pb.OperationState_OPERATION_STATE_CANCELLED
	case err != nil:
		state = pb.OperationState_OPERATION_STATE_FAILED
	}
	op.cancel()
	if op.release != nil {
		op.release()
	}
	// The end is published as the operation leaves the active set, under
	// the manager's lock: whoever sees it ended may at once ask for the
	// next operation on the same workspace or path, and is not refused as
	// conflicting with this one.
	m.mu.Lock()
	if m.active[op.joinKey] == op {
		delete(m.active, op.joinKey)
	}
	op.request = nil
	op.update(func() {
		op.state, op.result, op.err = state, res, err
		op.phase = pb.OperationPhase_OPERATION_PHASE_DONE
		op.ended = time.Now()
	})
	m.mu.Unlock()
	// Counted and logged before watchers learn of the end.
	defer close(op.done)

	kind, result := kindName(op.kind), resultName(state)
	dur := op.ended.Sub(op.created)
	m.metrics.operations.WithLabelValues(kind, result).Inc()
	m.metrics.duration.WithLabelValues(kind, result).Observe(dur.Seconds())
	fields := []zap.Field{zap.String("operation", op.id), zap.String("kind", kind), zap.String("result", result),
		zap.String("owner", op.owner), zap.String("workspace", op.workspace), zap.String("path", op.path),
		zap.String("request_id", op.requestID), zap.Duration("duration", dur)}
	if res != nil {
		m.metrics.bytes.WithLabelValues(kind).Add(float64(res.Bytes))
		fields = append(fields, zap.String("snapshot", res.SnapshotId), zap.Int64("files", res.Files), zap.Int64("bytes", res.Bytes))
		if kind == "restore" {
			// A restore's NewBytes are the pack bytes it downloaded.
			fields = append(fields, zap.Int64("downloaded_bytes", res.NewBytes))
		} else {
			fields = append(fields, zap.Int64("new_bytes", res.NewBytes), zap.Int64("stored_bytes", res.StoredBytes))
		}
	}
	if pe := (*panics.Error)(nil); errors.As(err, &pe) {
		m.log.Error("operation ended by a panic", append(fields, zap.Any("panic", pe.Value), zap.ByteString("stack", pe.Stack))...)
		return
	}
	if err != nil {
		m.log.Warn("operation ended", append(fields, zap.String("error", truncate(err.Error())))...)
		return
	}
	m.log.Info("operation ended", fields...)
}

// get returns an operation by id.
func (m *manager) get(id string) (*operation, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forgetExpired()
	op, ok := m.ops[id]
	return op, ok
}

// forgetExpired drops operations that ended longer than the retention
// ago; m.mu is held.
func (m *manager) forgetExpired() {
	for id, op := range m.ops {
		if !op.finished() {
			continue
		}
		op.mu.Lock()
		old := time.Since(op.ended) > m.keep
		op.mu.Unlock()
		if old {
			delete(m.ops, id)
		}
	}
	// Request ids of forgotten operations (the one that started each and
	// those that joined it) go with them.
	for rid, op := range m.byRequest {
		if _, ok := m.ops[op.id]; !ok {
			delete(m.byRequest, rid)
		}
	}
}

// drain refuses new operations from now on.
func (m *manager) drain() {
	m.mu.Lock()
	m.draining = true
	m.mu.Unlock()
}

// wait waits until every operation has ended or ctx is done.
func (m *manager) wait(ctx context.Context) error {
	idle := make(chan struct{})
	go func() { m.wg.Wait(); close(idle) }()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cancelAll cancels every operation, queued or running.
func (m *manager) cancelAll() { m.cancelBase() }

// fingerprint identifies what a request asks for, apart from its
// request_id field: a hash of its type and its other fields, to tell a
// retry or a join from a different request.
func fingerprint(m proto.Message) [sha256.Size]byte {
	c := proto.Clone(m).ProtoReflect()
	c.Clear(c.Descriptor().Fields().ByName("request_id"))
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c.Interface())
	h := sha256.New()
	h.Write([]byte(c.Descriptor().FullName()))
	h.Write([]byte{0})
	h.Write(b)
	return [sha256.Size]byte(h.Sum(nil))
}

// differences names the fields (as in the proto, apart from request_id)
// in which req asks differently from the request that started op, as
// " (path, excludes)"; "" when that request is gone (op ended) or of
// another kind. m.mu is held.
func differences(op *operation, req proto.Message) string {
	if op.request == nil {
		return ""
	}
	a, b := op.request.ProtoReflect(), req.ProtoReflect()
	if a.Descriptor() != b.Descriptor() {
		return ": a " + kindName(op.kind) + " request"
	}
	var names []string
	fields := a.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.Name() != "request_id" && !proto.Equal(onlyField(a, fd), onlyField(b, fd)) {
			names = append(names, string(fd.Name()))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return " (" + strings.Join(names, ", ") + ")"
}

// onlyField is a message of m's type holding only m's field fd.
func onlyField(m protoreflect.Message, fd protoreflect.FieldDescriptor) proto.Message {
	c := m.New()
	if m.Has(fd) {
		c.Set(fd, m.Get(fd))
	}
	return c.Interface()
}

func newOperationID() string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "op-" + hex.EncodeToString(b[:])
}

func kindName(k pb.OperationKind) string {
	switch k {
	case pb.OperationKind_OPERATION_KIND_BACKUP:
		return "backup"
	case pb.OperationKind_OPERATION_KIND_RESTORE:
		return "restore"
	case pb.OperationKind_OPERATION_KIND_FORGET:
		return "forget"
	case pb.OperationKind_OPERATION_KIND_PRUNE:
		return "prune"
	case pb.OperationKind_OPERATION_KIND_DELETE_WORKSPACE:
		return "delete_workspace"
	case pb.OperationKind_OPERATION_KIND_DELETE_OWNER:
		return "delete_owner"
	case pb.OperationKind_OPERATION_KIND_CHECK:
		return "check"
	case pb.OperationKind_OPERATION_KIND_CHECKPOINT:
		return "checkpoint"
	}
	return "unknown"
}

// kindNames are the names of every kind of operation, for metrics.
var kindNames = []string{"backup", "restore", "forget", "prune", "delete_workspace", "delete_owner", "check", "checkpoint"}

func resultName(s pb.OperationState) string {
	switch s {
	case pb.OperationState_OPERATION_STATE_SUCCEEDED:
		return "succeeded"
	case pb.OperationState_OPERATION_STATE_CANCELLED:
		return "cancelled"
	}
	return "failed"
}

// Errors of the operation manager, mapped to codes by grpcCode.
type (
	cancelledError    struct{ err error }
	queueTimeoutError struct{ d time.Duration }
	conflictError     struct{ msg string }
)

func (e *cancelledError) Error() string { return "cancelled: " + e.err.Error() }
func (e *cancelledError) Unwrap() error { return e.err }
func (e *queueTimeoutError) Error() string {
	return fmt.Sprintf("waited %v in the queue for a free slot (limits.queue_timeout)", e.d)
}
func (e *conflictError) Error() string { return e.msg }
