package sync

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/internal/ctxsleep"
	"github.com/backupd/backupd/internal/lowprio"
	"github.com/backupd/backupd/internal/panics"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/exclude"
	"github.com/backupd/backupd/pkg/repo"
)

// BackupOptions configures one backup.
type BackupOptions struct {
	Owner, Workspace string
	// Host is recorded in the snapshot; empty means os.Hostname.
	Host string
	Tags map[string]string
	// Parent names the snapshot to compare with (an id or unique prefix);
	// "" means the latest snapshot of the workspace. A file whose size,
	// mtime, ctime and inode equal the parent's is not read again.
	Parent string
	// SessionLease is the lease of the backup's session (repo.DefaultLease
	// if 0): a prune fences a session not renewed for that long.
	SessionLease time.Duration
	// BeforeCommit, if set, is called after everything but the snapshot
	// is stored, just before the backup commits (tests pause a backup
	// there); an error fails the backup.
	BeforeCommit func() error
	// AfterStart, if set, is called once the backup's session has begun
	// and its parent is loaded, before any file is read (tests pause a
	// backup there); an error fails the backup.
	AfterStart func() error
	// Force reads every file, ignoring the parent.
	Force bool
	// Exclude holds patterns in gitignore syntax (package exclude) of
	// entries left out, relative to the backed-up directory. The patterns
	// of its exclude file (exclude.ExcludeFile), if it has one, come after
	// these.
	Exclude []string
	// UIDMap and GIDMap map the owners found on disk (host ids) to the ids
	// recorded (container ids).
	UIDMap, GIDMap IDMap
	// Readers is the number of files read and chunked at once; 0 means
	// GOMAXPROCS.
	Readers int
	// Compressors is the number of goroutines compressing blobs; 0 means
	// GOMAXPROCS.
	Compressors int
	// Uploads is the number of packs stored at once; 0 means 2.
	Uploads int
	// Progress, if set, is updated as the backup runs.
	Progress *Progress
	// Warn, if set, is told about every entry the backup skips (special
	// files this format version does not keep, files deleted while the
	// backup ran, entries it cannot read). It may be called from several
	// goroutines at once.
	Warn func(path string, err error)
	// Strict fails the backup on the first entry of the directory that
	// cannot be read (permission denied, an I/O error). By default such an
	// entry (a directory with everything below it) is left out, warned
	// about, counted in Stats.Unreadable and listed in
	// Snapshot.Unreadable. Either way errors of the repository, of its
	// storage and of the backup itself (memory, descriptors, its context)
	// fail the backup, and entries that vanish during it are skipped.
	Strict bool
	// Checkpoint marks the snapshot as a checkpoint (repo.Snapshot.Checkpoint).
	Checkpoint bool
	// WorkerWrap, if set, runs the work (fn) of each reader and
	// compressor goroutine and each directory walk a goroutine of its own
	// does, and must call fn once, on the calling goroutine: the daemon
	// runs a checkpoint's workers at background priority
	// (internal/lowprio.Run).
	WorkerWrap func(fn func())
	// Throttle, if set, is called before each pack of n bytes is stored
	// and may wait (a bandwidth budget); an error fails the backup.
	Throttle func(ctx context.Context, n int) error
	// IndexPartial: when the backup fails or is cancelled after storing
	// packs, it still writes the index objects naming them (unless a
	// prune fenced its session) before it returns, so that the next
	// backup finds their blobs in the index instead of storing them
	// again. The error is then an *IndexedError.
	IndexPartial bool
}

// IndexedError is the error of a backup with IndexPartial that failed
// after writing index objects for every pack it had stored: the
// repository's in-memory index holds nothing the index objects do not.
type IndexedError struct {
	Err   error
	Packs int // packs indexed after the failure
}

func (e *IndexedError) Error() string { return e.Err.Error() }
func (e *IndexedError) Unwrap() error { return e.Err }

// work runs a worker's function under WorkerWrap.
func (o *BackupOptions) work(fn func() error) error {
	if o.WorkerWrap == nil {
		return fn()
	}
	var err error
	o.WorkerWrap(func() { err = fn() })
	return err
}

func (o *BackupOptions) beforeCommit() error {
	if o.BeforeCommit != nil {
		return o.BeforeCommit()
	}
	return nil
}

// SetCheckpoint makes the backup a checkpoint, as the daemon's
// CheckpointWorkspace and backupctl backup --checkpoint both run it: the
// snapshot says so, the packs it stored are indexed even if it fails, and
// it runs with one reader, one compressor and one upload, each worker at
// background priority (internal/lowprio), so as to take about one core
// of a workspace's node at most, and only what the workspace leaves idle.
func (o *BackupOptions) SetCheckpoint() {
	o.Checkpoint, o.IndexPartial = true, true
	o.WorkerWrap = lowprio.Run
	o.Readers, o.Compressors, o.Uploads = 1, 1, 1
}

func (o *BackupOptions) defaults() {
	if o.Warn == nil {
		o.Warn = func(string, error) {}
	}
	if o.Readers <= 0 {
		o.Readers = runtime.GOMAXPROCS(0)
	}
	if o.Compressors <= 0 {
		o.Compressors = runtime.GOMAXPROCS(0)
	}
	if o.Uploads <= 0 {
		o.Uploads = 2
	}
	if o.Progress == nil {
		o.Progress = &Progress{}
	}
	if o.Host == "" {
		o.Host, _ = os.Hostname()
	}
}

// BackupResult is what a finished backup reports.
type BackupResult struct {
	SnapshotID chunk.ID
	Snapshot   *repo.Snapshot
	// ResumedBytes counts the bytes of changed files found, by hashing,
	// to be their previous version's leading chunks, so that chunking
	// resumed after them (readContent).
	ResumedBytes int64
	// UntriedBytes counts the bytes of new blobs stored raw with no
	// compression attempt (fileCompression).
	UntriedBytes int64
}

type backupStats struct {
	files, dirs, symlinks, skipped atomic.Int64
	unreadable                     atomic.Int64
	excluded                       atomic.Int64
	unchanged                      atomic.Int64
	changing, reread               atomic.Int64
	resumed, untried               atomic.Int64
	bytes, newBytes, storedBytes   atomic.Int64
	blobs, newBlobs, objects       atomic.Int64
}

type fileJob struct {
	dir  *openDir // held for the job; the reader releases it
	node *repo.Node
	prev *repo.Node // the file in the parent snapshot, changed since; nil: none
	done chan struct{}
}

func (j *fileJob) path() string { return j.dir.join(j.node.Name) }

type blobJob struct {
	id   chunk.ID
	buf  []byte // owned by the job; returned to the pool when stored
	data []byte
	kind string // the file's name extension: small blobs group by it
	comp *fileCompression
	seq  int // its place among the chunks of comp's file queued
}

// fileCompression follows how the large chunks of one file were stored,
// for the compressors: once the first rawProof of them queued (in the
// file's order, not the order the compressors finish them in) were all
// stored raw (Compress found zstd no smaller) and none was compressed, a
// later one that looks incompressible in a sample
// (chunk.Codec.LooksIncompressible) is stored raw without the attempt.
// (Counting whichever finished first let a slow large chunk of text at a
// file's start be overtaken by two random ones after it.) Compressing
// such bytes costs about as much CPU as compressing any
// (BenchmarkIncompressible in pkg/chunk: 0.7 GB/s, the sample 30 GB/s),
// and they are common in workspaces: archives, media, compiled and
// encrypted files, and the appended file of a stop backup.
// A file that stores any chunk compressed is compressed to its end.
type fileCompression struct {
	firstRaw, zstd atomic.Int32
	// queued counts the chunks queued (by the file's reader alone).
	queued int
}

const rawProof = 2

// take numbers the next chunk queued: its place among the file's chunks
// queued.
func (f *fileCompression) take() int {
	if f == nil {
		return 0
	}
	f.queued++
	return f.queued - 1
}

func (f *fileCompression) proven() bool {
	return f != nil && f.zstd.Load() == 0 && f.firstRaw.Load() == rawProof
}

// record notes how the chunk queued at place seq was stored.
func (f *fileCompression) record(seq int, comp chunk.Compression) {
	switch {
	case f == nil:
	case comp != chunk.Raw:
		f.zstd.Add(1)
	case seq < rawProof:
		f.firstRaw.Add(1)
	}
}

type dirFuture struct {
	done chan struct{}
	id   chunk.ID
	// skipped: the directory could not be read and is left out (set
	// before done is closed).
	skipped bool
}

type backup struct {
	// allXattrs: backing up as root, keep every xattr namespace.
	allXattrs bool
	// trustBefore: a file whose ctime is at or after this (Unix ns) may
	// have changed within the timestamp granularity while the parent
	// backup read it, so it is read again.
	trustBefore int64
	exclude     *exclude.Matcher

	r      *repo.Repository
	opts   BackupOptions
	params chunk.Params
	stats  backupStats

	walkers  chan struct{} // slots for extra directory walkers
	fileJobs chan *fileJob
	blobJobs chan blobJob
	bufs     *bufferPool

	// inflight holds the blobs claimed and not yet in the index: once
	// their pack is stored and indexed they leave it (unless a prune
	// stands: a condemned blob stays unusable once indexed).
	inflightMu   gosync.Mutex
	inflight     map[chunk.ID]struct{}
	keepInflight bool

	packers [2]*packer // by repo.BlobType
	uploads chan finishedPack

	treeMu         gosync.Mutex
	treeGroup      group // trees waiting to be stored as a group
	spareTreeGroup group // emptied buffers for the next one

	// newPacks are the packs stored and not yet in an index object (which
	// is written whenever they fill one, and at the end).
	newPacksMu gosync.Mutex
	newPacks   []repo.PackIndex
	newBlobs   int // in newPacks
	// indexLost: writing an index object failed, so some stored packs
	// may be in no index object.
	indexLost atomic.Bool

	unreadableMu    gosync.Mutex
	unreadableList  []repo.UnreadableEntry
	unreadableBytes int

	recent recentFiles // the files of the newest mtimes, for Snapshot.Recent
}

// Backup stores the tree at dir in r as a new snapshot of opts.Workspace;
// dir is opened as given (symbolic links in it followed: the caller's own
// path), everything below it as BackupDir does.
func Backup(ctx context.Context, r *repo.Repository, dir string, opts BackupOptions) (*BackupResult, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	src, err := dirfd.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("backup source: %w", err)
	}
	defer src.Close()
	return BackupDir(ctx, r, src, opts)
}

// BackupDir stores the tree below the open directory src in r as a new
// snapshot of opts.Workspace. Every entry is reached from src's descriptor
// and never through a symbolic link, so a workspace swapping directories
// for links while it runs can make it skip or fail, never read outside src.
// The snapshot object is written last, only after every pack and the index
// naming them are stored; on any error no snapshot is written and earlier
// snapshots are untouched. The repository's index must be loaded.
func BackupDir(ctx context.Context, r *repo.Repository, src *dirfd.Dir, opts BackupOptions) (*BackupResult, error) {
	opts.defaults()
	if err := repo.ValidateName("owner", opts.Owner); err != nil {
		return nil, err
	}
	if err := repo.ValidateName("workspace", opts.Workspace); err != nil {
		return nil, err
	}
	if err := repo.ValidateTags(opts.Tags); err != nil {
		return nil, err // before anything is uploaded
	}
	start := time.Now()
	abs := src.Name()
	rootStat, err := src.Stat()
	if err != nil {
		return nil, fmt.Errorf("backup source: %w", err)
	}
	// The session first (FORMAT.md, "Lifecycle"): a prune waits for it,
	// and what a standing prune condemned is absent to this backup.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sess, err := r.BeginSession(ctx, repo.SessionOptions{Workspace: opts.Workspace, Host: opts.Host, Lease: opts.SessionLease,
		OnFenced: func(err error) { cancel(err) }})
	if err != nil {
		return nil, err
	}
	defer sess.End(ctx)
	rootFd, err := unix.Dup(src.Fd())
	if err != nil {
		return nil, fmt.Errorf("backup source: %w", err)
	}
	unix.CloseOnExec(rootFd)
	root := &openDir{fd: rootFd, path: abs, rel: ""}
	root.refs.Store(1)
	released := false
	defer func() {
		if !released {
			root.release()
		}
	}()
	var parent string
	var parentTree chunk.ID
	var parentStart int64
	{ // the parent is recorded even with Force, which only ignores its metadata
		var snap *repo.Snapshot
		var ref repo.SnapshotRef
		var err error
		if opts.Parent == "" || opts.Parent == "latest" {
			// A damaged latest snapshot must not stop every later backup:
			// the newest readable one serves as parent.
			snap, ref, err = r.LatestSnapshot(ctx, opts.Workspace, func(bad repo.SnapshotRef, err error) {
				opts.Warn(bad.Key, fmt.Errorf("snapshot unreadable, not used as parent: %w", err))
			})
		} else {
			snap, ref, err = r.FindSnapshot(ctx, opts.Workspace, opts.Parent)
		}
		switch {
		case err == nil:
			parent, parentTree = ref.ID.String(), snap.Tree
			parentStart = snap.Time.Add(-time.Duration(snap.Stats.DurationMS) * time.Millisecond).UnixNano()
			opts.Progress.TotalFiles.Store(snap.Stats.Files)
			opts.Progress.TotalBytes.Store(snap.Stats.Bytes)
		case opts.Parent != "" || !errors.Is(err, repo.ErrSnapshotNotFound):
			return nil, fmt.Errorf("parent snapshot: %w", err)
		}
	}
	if opts.Force {
		parentTree = chunk.ID{}
	}
	if opts.AfterStart != nil {
		if err := opts.AfterStart(); err != nil {
			return nil, err
		}
	}
	excl, err := loadExcludes(root, opts.Exclude, opts.Warn, opts.Strict)
	if err != nil {
		return nil, err
	}

	cfg := r.Config()
	b := &backup{
		trustBefore: parentStart - int64(racyWindow),
		exclude:     excl,
		allXattrs:   os.Geteuid() == 0,
		r:           r,
		opts:        opts,
		params:      r.ChunkParams(),
		walkers:     make(chan struct{}, runtime.GOMAXPROCS(0)),
		fileJobs:    make(chan *fileJob, 256),
		blobJobs:    make(chan blobJob, opts.Compressors),
		inflight:    map[chunk.ID]struct{}{},
		uploads:     make(chan finishedPack),
	}
	// Chunk buffers in flight: two per reader (one being read or cut, one
	// being hashed), one per compressor, and the queue between them.
	// This, with the pack buffers, bounds memory. They
	// start at chunkBufSize and grow to the largest chunk only while one
	// needs it (emit): most chunks are far below chunk_max_size, and 36 MiB
	// of buffers that stay empty left the Go runtime, under backupctl's
	// soft memory limit, collecting garbage 300 times a backup.
	b.bufs = newBufferPool(2*opts.Readers+2*opts.Compressors, min(max(chunkBufSize, int(b.params.MinSize)+1), int(b.params.MaxSize)))
	b.bufs.shrink = true
	packCap := cfg.PackSize + packSlack // blobs plus their trailer
	// Data packs: the one being filled, those being uploaded, one waiting.
	// Tree packs are usually small: their buffers start at 1 MiB and grow
	// only when a snapshot has that many changed directories.
	// The first data packs are smaller (rampStart), so that the upload
	// starts sooner.
	b.packers[repo.DataBlob] = newPacker(repo.DataBlob, cfg.PackSize, rampStart, newBufferPool(1+opts.Uploads+1, packCap), cfg.CompactTrailers())
	b.packers[repo.TreeBlob] = newPacker(repo.TreeBlob, cfg.PackSize, 0, newBufferPool(2, 1<<20), cfg.CompactTrailers())
	if r.Condemned() > 0 {
		b.keepInflight = true
		// A prune stands: its condemned blobs this backup needs are stored
		// again, in packs that must not be the ones it deletes (AddSalt).
		for _, p := range b.packers {
			p.salted = true
		}
	}

	g, gctx := errgroup.WithContext(ctx)
	var readers, compressors gosync.WaitGroup
	for range opts.Uploads {
		g.Go(panics.Safe(func() error { return b.uploader(gctx) }))
	}
	for range opts.Compressors {
		compressors.Add(1)
		g.Go(panics.Safe(func() error {
			defer compressors.Done()
			return opts.work(func() error { return b.compressor(gctx) })
		}))
	}
	for range opts.Readers {
		readers.Add(1)
		g.Go(panics.Safe(func() error { defer readers.Done(); return opts.work(func() error { return b.reader(gctx) }) }))
	}
	var rootID chunk.ID
	released = true // the walk releases it
	g.Go(panics.Safe(func() error {
		var fut *dirFuture
		err := opts.work(func() (err error) { fut, err = b.walkDir(gctx, g, root, "", parentTree, 0); return err })
		if err != nil {
			return err
		}
		if err := wait(gctx, fut.done); err != nil {
			return err
		}
		rootID = fut.id
		close(b.fileJobs)
		readers.Wait()
		close(b.blobJobs)
		compressors.Wait()
		var out []byte
		if err := b.flushGroup(gctx, repo.TreeBlob, &b.treeGroup, &out); err != nil {
			return err
		}
		for _, p := range b.packers {
			if err := p.flush(gctx, b.uploads); err != nil {
				return err
			}
		}
		close(b.uploads)
		return nil
	}))
	if err := g.Wait(); err != nil {
		b.dropQueuedFiles()
		if cause := context.Cause(ctx); errors.Is(cause, repo.ErrSessionFenced) {
			return nil, cause
		}
		if opts.IndexPartial {
			return nil, b.indexPartial(ctx, err)
		}
		return nil, err
	}

	if afterPipeline != nil {
		afterPipeline(b)
	}
	opts.Progress.Finishing.Store(true)
	// The packs a killed backup left (indexed from their trailers when the
	// index was loaded) go into this backup's index too: their blobs may
	// be what this snapshot uses.
	packs := b.newPacks
	for _, pi := range r.TakeAdopted() {
		// A pack holding a blob a standing prune condemned is one it
		// deletes or rewrites: indexing it here would leave an index entry
		// for a pack that is gone.
		if !slices.ContainsFunc(pi.Blobs, func(e repo.BlobEntry) bool { return !r.Usable(e.ID) }) {
			packs = append(packs, pi)
		}
	}
	if len(packs) > 0 {
		ids, err := r.SaveIndex(ctx, packs)
		if err != nil {
			if cause := context.Cause(ctx); errors.Is(cause, repo.ErrSessionFenced) {
				return nil, cause // a prune fenced the session meanwhile
			}
			return nil, err
		}
		b.stats.objects.Add(int64(len(ids)))
	}
	b.stats.objects.Add(1) // the snapshot object
	st := &b.stats
	slices.SortFunc(b.unreadableList, func(a, b repo.UnreadableEntry) int { return strings.Compare(a.Path, b.Path) })
	snap := &repo.Snapshot{
		Time:      time.Now().UTC(),
		Tree:      rootID,
		Owner:     opts.Owner,
		Workspace: opts.Workspace,
		Host:      opts.Host,
		Path:      abs,
		Parent:    parent,
		Tags:      opts.Tags,
		RootMode:  rootStat.Mode & 07777,
		RootMTime: rootStat.Mtim.Nano(),
		RootUID:   opts.UIDMap.ToContainer(rootStat.Uid),
		RootGID:   opts.GIDMap.ToContainer(rootStat.Gid),
		Stats: repo.Stats{
			Files: st.files.Load(), UnchangedFiles: st.unchanged.Load(), Dirs: st.dirs.Load(), Symlinks: st.symlinks.Load(), Skipped: st.skipped.Load(), Excluded: st.excluded.Load(),
			Unreadable: st.unreadable.Load(), Changing: st.changing.Load(), Reread: st.reread.Load(), Bytes: st.bytes.Load(), NewBytes: st.newBytes.Load(), StoredBytes: st.storedBytes.Load(),
			Blobs: st.blobs.Load(), NewBlobs: st.newBlobs.Load(), ObjectsWritten: st.objects.Load(),
			DurationMS: time.Since(start).Milliseconds(),
		},
		Unreadable: b.unreadableList,
		Recent:     b.recent.list(),
		Checkpoint: opts.Checkpoint,
	}
	if err := opts.beforeCommit(); err != nil {
		return nil, err
	}
	id, err := sess.Commit(ctx, snap)
	if errors.Is(err, repo.ErrSnapshotUnconfirmed) {
		opts.Warn(abs, err) // the snapshot is there: the backup succeeded
	} else if err != nil {
		return nil, err
	}
	// What dead uploads before this backup left behind (a backup killed
	// mid-way) goes now; only a warning if it cannot.
	if n, err := r.Storage().CleanUploads(ctx, "", start); err != nil {
		opts.Warn(abs, fmt.Errorf("cleaning up after interrupted uploads: %w", err))
	} else if n > 0 {
		opts.Warn(abs, fmt.Errorf("removed %d leftovers of interrupted uploads", n))
	}
	r.CleanCache(start)
	return &BackupResult{SnapshotID: id, Snapshot: snap, ResumedBytes: st.resumed.Load(), UntriedBytes: st.untried.Load()}, nil
}

func wait(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// openDir is a directory being backed up: its descriptor stays open until
// its walk is over and every file queued from it has been opened.
type openDir struct {
	fd   int
	path string // for messages and warnings only
	rel  string // below the backed-up directory: "" or ending in a slash
	refs atomic.Int32
}

func (d *openDir) hold() { d.refs.Add(1) }

func (d *openDir) release() {
	if d.refs.Add(-1) == 0 {
		unix.Close(d.fd)
	}
}

func (d *openDir) join(name string) string { return d.path + "/" + name }

// walkDir reads one directory, queues its changed files for reading,
// recurses into subdirectories, and returns a future for its tree id. A
// goroutine in g finishes the tree once every child is done. Entries are
// reached from d's descriptor by name, never through a link: the stat of
// each is taken relative to it, subdirectories and files are opened from
// it with O_NOFOLLOW. walkDir releases d. rel is the directory's path
// below the backed-up one, "" or ending in a slash; parentTree is the same
// directory in the parent snapshot, or zero.
func (b *backup) walkDir(ctx context.Context, g *errgroup.Group, d *openDir, rel string, parentTree chunk.ID, depth int) (*dirFuture, error) {
	defer d.release()
	// Excluded entries do not count against the format's limit of entries
	// per tree, so more may be read; but not without bound.
	names, err := dirfd.ReadNamesMax(d.fd, 4*repo.MaxTreeNodes)
	if err == nil && testHookFault != nil {
		err = testHookFault("getdents", d.path, 0)
	}
	if errors.Is(err, dirfd.ErrTooManyEntries) {
		return nil, fmt.Errorf("%s: a directory of more than %d entries cannot be kept (format limit)", d.path, repo.MaxTreeNodes)
	}
	if err != nil {
		// The backed-up directory itself must be read: an empty snapshot
		// would stand for a workspace that is not.
		if depth > 0 && b.unreadable(d.path, strings.TrimSuffix(rel, "/"), "getdents", err) {
			fut := &dirFuture{done: make(chan struct{}), skipped: true}
			close(fut.done)
			return fut, nil
		}
		return nil, fmt.Errorf("read directory: %w", &fs.PathError{Op: "getdents", Path: d.path, Err: err})
	}
	sort.Strings(names) // as trees are
	var parentNodes []repo.Node
	if !parentTree.IsZero() {
		pt, err := b.r.LoadTree(ctx, parentTree)
		if err != nil {
			// The parent only saves work: read everything below here.
			b.opts.Warn(d.path, fmt.Errorf("parent snapshot unreadable here, reading all files: %w", err))
		} else {
			parentNodes = pt.Nodes
		}
	}
	nodes := make([]repo.Node, 0, len(names))
	var waits []<-chan struct{}
	var subdirs []struct {
		i int
		f *dirFuture
	}
	for _, name := range names {
		var st unix.Stat_t
		err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			continue // removed while we walked
		}
		if err != nil {
			if b.unreadable(d.join(name), rel+name, "stat", err) {
				continue
			}
			return nil, fmt.Errorf("stat %s: %w", d.join(name), err)
		}
		if b.exclude != nil && b.exclude.Excluded(rel+name, st.Mode&unix.S_IFMT == unix.S_IFDIR) {
			b.stats.excluded.Add(1)
			continue
		}
		n := b.nodeFromStat(name, &st)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			nodes = append(nodes, n) // queued below, read and xattrs from the open file
		case unix.S_IFDIR:
			if depth+1 > repo.MaxTreeDepth {
				b.skip(d.join(name), fmt.Errorf("skipped: directories nested deeper than %d levels are not kept", repo.MaxTreeDepth))
				continue
			}
			if testHookBeforeOpenDir != nil {
				testHookBeforeOpenDir(d.join(name))
			}
			sub, err := dirfd.OpenAt(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				if b.vanished(d.join(name), err) || b.unreadable(d.join(name), rel+name, "open", err) {
					continue
				}
				return nil, fmt.Errorf("read directory: %w", &fs.PathError{Op: "open", Path: d.join(name), Err: err})
			}
			// The directory opened is the one read: its metadata from its
			// descriptor, whatever the name pointed at when stat'ed.
			if err := unix.Fstat(sub, &st); err != nil {
				unix.Close(sub)
				if b.unreadable(d.join(name), rel+name, "stat", err) {
					continue
				}
				return nil, fmt.Errorf("stat %s: %w", d.join(name), err)
			}
			n = b.nodeFromStat(name, &st)
			n.Type = repo.TypeDir
			if n.Xattrs, err = readXattrs(sub, "", b.allXattrs); err != nil {
				b.opts.Warn(d.join(name), fmt.Errorf("extended attributes not kept: %w", err))
			}
			nodes = append(nodes, n)
			var sub0 chunk.ID
			if pn := findNode(parentNodes, name); pn != nil && pn.Type == repo.TypeDir {
				sub0 = pn.Subtree
			}
			od := &openDir{fd: sub, path: d.join(name), rel: rel + name + "/"}
			od.refs.Store(1)
			f, err := b.walkSubdir(ctx, g, od, rel+name+"/", sub0, depth+1)
			if err != nil {
				return nil, err
			}
			subdirs = append(subdirs, struct {
				i int
				f *dirFuture
			}{len(nodes) - 1, f})
			waits = append(waits, f.done)
		case unix.S_IFLNK, unix.S_IFIFO:
			if err := b.pinnedNode(d, &n, &st); err != nil {
				var pe *pinError
				if b.vanished(d.join(name), err) || errors.As(err, &pe) && b.unreadable(d.join(name), rel+name, pe.op, pe.err) {
					continue
				}
				return nil, err
			}
			if n.Type == repo.TypeSymlink {
				b.stats.symlinks.Add(1)
			}
			nodes = append(nodes, n)
		default:
			// Devices and sockets: not kept (a socket is meaningless without
			// its process; devices do not belong in a workspace).
			b.skip(d.join(name), fmt.Errorf("skipped: %s (not kept by this format version)", specialKind(st.Mode)))
		}
	}
	// Queue the files only now: nodes no longer moves.
	for i := range nodes {
		n := &nodes[i]
		if n.Type != repo.TypeFile {
			continue
		}
		b.stats.files.Add(1)
		b.opts.Progress.Files.Add(1)
		b.recent.add(rel+n.Name, n.MTime)
		pn := findNode(parentNodes, n.Name)
		if pn != nil && b.unchanged(n, pn) {
			n.Content = pn.Content
			n.Xattrs = pn.Xattrs // an xattr change moves ctime
			b.stats.unchanged.Add(1)
			b.stats.bytes.Add(int64(n.Size))
			b.stats.blobs.Add(int64(len(n.Content)))
			b.opts.Progress.Bytes.Add(int64(n.Size))
			continue
		}
		d.hold() // released by the reader once the file is open
		job := &fileJob{dir: d, node: n, done: make(chan struct{})}
		if pn != nil && pn.Type == repo.TypeFile && len(pn.Content) > 1 {
			job.prev = pn
		}
		select {
		case b.fileJobs <- job:
		case <-ctx.Done():
			d.release()
			return nil, ctx.Err()
		}
		waits = append(waits, job.done)
	}
	fut := &dirFuture{done: make(chan struct{})}
	g.Go(panics.Safe(func() error {
		for _, w := range waits {
			if err := wait(ctx, w); err != nil {
				return err
			}
		}
		for _, s := range subdirs {
			nodes[s.i].Subtree = s.f.id
			if s.f.skipped {
				nodes[s.i].Type = skippedNode
			}
		}
		kept := nodes[:0]
		for _, n := range nodes {
			if n.Type != skippedNode {
				kept = append(kept, n)
			}
		}
		id, err := b.saveTree(ctx, &repo.Tree{Nodes: kept})
		if err != nil {
			return fmt.Errorf("%s: %w", d.path, err)
		}
		fut.id = id
		b.stats.dirs.Add(1)
		b.opts.Progress.Dirs.Add(1)
		close(fut.done)
		return nil
	}))
	return fut, nil
}

// nodeFromStat returns the node for an entry with stat data st: type,
// permission bits, times, owner and, for files, what change detection and
// hard links need.
func (b *backup) nodeFromStat(name string, st *unix.Stat_t) repo.Node {
	n := repo.Node{Name: name, Mode: st.Mode & 07777, MTime: st.Mtim.Nano(),
		UID: b.opts.UIDMap.ToContainer(st.Uid), GID: b.opts.GIDMap.ToContainer(st.Gid)}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Type = repo.TypeFile
		n.Inode, n.CTime = st.Ino, st.Ctim.Nano()
		if st.Nlink > 1 {
			n.Device, n.Nlink = st.Dev, uint64(st.Nlink)
		}
		n.Size = uint64(st.Size)
	case unix.S_IFDIR:
		n.Type = repo.TypeDir
	case unix.S_IFLNK:
		n.Type = repo.TypeSymlink
	case unix.S_IFIFO:
		n.Type = repo.TypeFIFO
	}
	return n
}

// pinnedNode fills in a symlink's or FIFO's node from the entry itself:
// it opens it (O_PATH, never following it), checks it is still of the kind
// stat'ed and has no second name (a hard link to a symlink or FIFO, which
// may be one outside the workspace, is left out: the format keeps hard
// links of regular files only), and reads its target and, backing up as
// root, its extended attributes through that descriptor, so that a swapped
// entry can never lend another file's target or attributes.
func (b *backup) pinnedNode(d *openDir, n *repo.Node, st *unix.Stat_t) error {
	name := n.Name
	if n.Type == repo.TypeFIFO && !b.allXattrs && st.Nlink == 1 {
		return nil // nothing to read: the stat says it all
	}
	fd, err := dirfd.OpenAt(d.fd, name, unix.O_PATH, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", d.join(name), &pinError{"open", err})
	}
	defer unix.Close(fd)
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		return fmt.Errorf("stat %s: %w", d.join(name), &pinError{"stat", err})
	}
	switch {
	case now.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT:
		return fmt.Errorf("stat %s: %w", d.join(name), errChanged)
	case now.Nlink != 1:
		return fmt.Errorf("stat %s: %w", d.join(name), errLinked)
	}
	*n = b.nodeFromStat(name, &now)
	if n.Type == repo.TypeSymlink {
		if n.Target, err = readlinkat(fd, ""); err != nil {
			return fmt.Errorf("read symlink %s: %w", d.join(name), &pinError{"readlink", err})
		}
	}
	if b.allXattrs {
		if n.Xattrs, err = readXattrs(-1, dirfd.ProcPath(fd), true); err != nil {
			b.opts.Warn(d.join(name), fmt.Errorf("extended attributes not kept: %w", err))
		}
	}
	return nil
}

// pinError is a failed system call of pinnedNode on the entry: op names
// it.
type pinError struct {
	op  string
	err error
}

func (e *pinError) Error() string { return e.err.Error() }
func (e *pinError) Unwrap() error { return e.err }

// errLinked means a symlink or FIFO has a second name.
var errLinked = errors.New("a symlink or FIFO with more than one name (hard link)")

// errChanged means an entry changed its kind between two looks at it.
var errChanged = errors.New("changed during the backup")

// vanished reports whether err means the entry at path went away or
// changed its kind since its directory was read; it is then left out,
// with a warning, as a file deleted during the backup is.
func (b *backup) vanished(path string, err error) bool {
	switch {
	case errors.Is(err, unix.ENOENT):
		b.skip(path, errors.New("skipped: deleted during backup"))
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR), errors.Is(err, errChanged), errors.Is(err, unix.EINVAL):
		b.skip(path, errors.New("skipped: replaced by another kind of entry during backup"))
	case errors.Is(err, errLinked):
		b.skip(path, fmt.Errorf("skipped: %w is not kept", errLinked))
	default:
		return false
	}
	return true
}

// skip counts and reports an entry left out.
func (b *backup) skip(path string, why error) {
	b.stats.skipped.Add(1)
	b.opts.Warn(path, why)
}

// unreadable reports whether err, of system call op on the entry at path
// (rel below the backed-up directory), is the file system refusing to
// read the entry and the entry is to be left out (not Strict): it is then
// counted, listed in the snapshot (while the list has room) and warned
// about. Errors of the backup's own resources (descriptors, memory) or of
// its code (a bad descriptor or address) are never the entry's.
func (b *backup) unreadable(path, rel, op string, err error) bool {
	if b.opts.Strict || !entryError(err) {
		return false
	}
	var errno unix.Errno
	errors.As(err, &errno)
	reason := op + ": " + errno.Error()
	b.stats.unreadable.Add(1)
	b.opts.Warn(path, fmt.Errorf("skipped, cannot be read: %s", reason))
	e := repo.UnreadableEntry{Path: strings.ToValidUTF8(rel, "\uFFFD"), Reason: reason}
	if len(e.Reason) > repo.MaxUnreadableReasonLen {
		e.Reason = strings.ToValidUTF8(e.Reason[:repo.MaxUnreadableReasonLen], "")
	}
	if e.Path == "" || len(e.Path) > repo.MaxPathLen || strings.IndexByte(e.Path, 0) >= 0 {
		return true // counted, not listed
	}
	b.unreadableMu.Lock()
	defer b.unreadableMu.Unlock()
	if n := len(e.Path) + len(e.Reason); len(b.unreadableList) < repo.MaxUnreadable && b.unreadableBytes+n <= repo.MaxUnreadableBytes {
		b.unreadableList = append(b.unreadableList, e)
		b.unreadableBytes += n
	}
	return true
}

// entryError reports whether err is an error number a system call on a
// workspace's entry returned because of the entry (EACCES, EPERM, EIO,
// ESTALE, ...), rather than because of the backup's own resources or
// code (EMFILE, ENFILE, ENOMEM, ENOBUFS, EBADF, EFAULT, EINTR).
func entryError(err error) bool {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case 0, unix.EMFILE, unix.ENFILE, unix.ENOMEM, unix.ENOBUFS, unix.EBADF, unix.EFAULT, unix.EINTR:
		return false
	}
	return true
}

// racyWindow is the margin, before the parent backup started, within which
// a file's ctime makes its metadata untrustworthy: timestamps are coarser
// than the time it takes to rewrite a file (as git's "racy git" problem).
var racyWindow = 2 * time.Second

// walkSubdir walks a subdirectory in a goroutine of its own when one of
// the extra walker slots is free (directory reads and lstats are system
// call bound, so walking in parallel uses every core), else inline.
func (b *backup) walkSubdir(ctx context.Context, g *errgroup.Group, d *openDir, rel string, parentTree chunk.ID, depth int) (*dirFuture, error) {
	select {
	case b.walkers <- struct{}{}:
	default:
		return b.walkDir(ctx, g, d, rel, parentTree, depth)
	}
	fut := &dirFuture{done: make(chan struct{})}
	g.Go(panics.Safe(func() error {
		var inner *dirFuture
		err := b.opts.work(func() (err error) { inner, err = b.walkDir(ctx, g, d, rel, parentTree, depth); return err })
		<-b.walkers // the slot is for walking, not for waiting
		if err != nil {
			return err
		}
		if err := wait(ctx, inner.done); err != nil {
			return err
		}
		fut.id, fut.skipped = inner.id, inner.skipped
		close(fut.done)
		return nil
	}))
	return fut, nil
}

// findNode returns the node called name in nodes (sorted by name), or nil.
func findNode(nodes []repo.Node, name string) *repo.Node {
	i := sort.Search(len(nodes), func(i int) bool { return nodes[i].Name >= name })
	if i < len(nodes) && nodes[i].Name == name {
		return &nodes[i]
	}
	return nil
}

// unchanged reports whether file n can take over the parent's content pn
// without being read: same size, mtime, ctime and inode, and every blob of
// the content still in the index (so the new snapshot never references
// anything missing).
func (b *backup) unchanged(n, pn *repo.Node) bool {
	if pn.Type != repo.TypeFile || pn.Flags&repo.NodeChanging != 0 || n.Size != pn.Size || n.MTime != pn.MTime || n.CTime != pn.CTime || n.Inode != pn.Inode || n.Inode == 0 {
		return false
	}
	if n.CTime >= b.trustBefore || n.MTime >= b.trustBefore {
		return false // "racy": changed too close to when the parent read it
	}
	for _, id := range pn.Content {
		if !b.r.Usable(id) {
			return false
		}
	}
	return true
}

func (b *backup) saveTree(ctx context.Context, t *repo.Tree) (chunk.ID, error) {
	data, err := repo.EncodeTreeChecked(t)
	if err != nil {
		// What the walk produced but the format cannot hold (a directory
		// of too many entries, of too many extended attributes).
		return chunk.ID{}, fmt.Errorf("this directory cannot be kept as one tree (at most %d entries, %d bytes encoded): %v", repo.MaxTreeNodes, repo.MaxTreeSize, err)
	}
	id := chunk.Hash(data)
	if !b.claim(id, int64(len(data))) {
		return id, nil
	}
	if b.r.Config().Groups() && len(data) <= repo.GroupMaxBlob {
		// Trees are small (a directory of one file is ~150 bytes): they
		// are grouped too, in groups of treeGroupTarget bytes.
		b.treeMu.Lock()
		b.treeGroup.raw = append(b.treeGroup.raw, data...)
		b.treeGroup.members = append(b.treeGroup.members, repo.GroupMember{ID: id, RawLen: uint32(len(data))})
		if len(b.treeGroup.raw) < treeGroupTarget && len(b.treeGroup.members) < repo.GroupMaxMembers {
			b.treeMu.Unlock()
			return id, nil
		}
		full := b.treeGroup
		b.treeGroup = b.spareTreeGroup // nil slices the first time
		b.spareTreeGroup = group{}
		b.treeMu.Unlock()
		// The group's buffers (and the frame's) serve again: a tree of
		// small directories flushes a group every ~1,500 directories.
		out := full.out
		err := b.flushGroup(ctx, repo.TreeBlob, &full, &out)
		full.out = out
		b.treeMu.Lock()
		b.spareTreeGroup = full
		b.treeMu.Unlock()
		return id, err
	}
	stored, comp := b.r.Codec().Compress(nil, data)
	return id, b.packers[repo.TreeBlob].add(ctx, b.uploads, id, comp, stored, len(data), &b.stats)
}

// treeGroupTarget is the size of tree groups: smaller than data groups,
// since a tree is read alone (the walk of a parent snapshot, ls, diff),
// which decompresses its whole group; 256 KiB compresses trees as well as
// larger groups do (their content ids do not compress at all).
const treeGroupTarget = 256 << 10

// claim reports whether blob id must be stored, marking it as being stored.
func (b *backup) claim(id chunk.ID, size int64) bool {
	b.stats.blobs.Add(1)
	if b.r.Usable(id) {
		return false
	}
	b.inflightMu.Lock()
	defer b.inflightMu.Unlock()
	if _, ok := b.inflight[id]; ok || b.r.Usable(id) {
		return false // in flight, or stored and indexed since the first look
	}
	b.inflight[id] = struct{}{}
	b.stats.newBlobs.Add(1)
	b.stats.newBytes.Add(size)
	return true
}

// reader reads, chunks and hashes files, and hands new chunks on to the
// compressors.
func (b *backup) reader(ctx context.Context) error {
	ch := chunk.NewChunker(b.params)
	for {
		var job *fileJob
		select {
		case j, ok := <-b.fileJobs:
			if !ok {
				return nil
			}
			job = j
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := b.readFile(ctx, ch, job); err != nil {
			return fmt.Errorf("%s: %w", job.path(), err)
		}
		close(job.done)
	}
}

// dropQueuedFiles releases the directories of the files still queued when
// the readers stopped early (a failure, a cancellation): each holds its
// directory open until a reader takes it. Only once every goroutine of
// the backup has returned.
func (b *backup) dropQueuedFiles() {
	for {
		select {
		case j, ok := <-b.fileJobs:
			if !ok {
				return
			}
			j.dir.release()
		default:
			return
		}
	}
}

// skippedNode marks a tree node dropped before its tree is written.
const skippedNode repo.NodeType = 0

// testHookBeforeOpen and testHookBeforeOpenDir, when set by a test, run
// before each file or directory is opened, with its display path.
var testHookBeforeOpen, testHookBeforeOpenDir func(path string)

// testHookFault, when set by a test, runs before each read of a file
// ("read", at offset off) and after each listing of a directory
// ("getdents"), with the entry's display path; an error it returns is
// taken for that of the system call.
var testHookFault func(op, path string, off int64) error

// entryFile reads a workspace's file: its errors are readError, told
// apart from the backup's own (its context, its buffers). It reads the
// regular file open as fd with plain read(2) calls, with the errors an
// os.File gives: an os.File would cost two more system calls per file, to
// look at the descriptor's flags and, finding O_NONBLOCK, to try adding it
// to the network poller, which refuses regular files.
type entryFile struct {
	fd   int
	path string
	off  int64
}

// readError is an error reading a workspace's file.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

func (r *entryFile) Read(p []byte) (int, error) {
	if testHookFault != nil {
		if err := testHookFault("read", r.path, r.off); err != nil {
			return 0, &readError{&fs.PathError{Op: "read", Path: r.path, Err: err}}
		}
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := unix.Read(r.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, &readError{&fs.PathError{Op: "read", Path: r.path, Err: err}}
		case n == 0:
			return 0, io.EOF
		}
		r.off += int64(n)
		return n, nil
	}
}

func (r *entryFile) Seek(off int64, whence int) (int64, error) {
	n, err := unix.Seek(r.fd, off, whence)
	if err != nil {
		return n, &readError{&fs.PathError{Op: "seek", Path: r.path, Err: err}}
	}
	r.off = n
	return n, nil
}

// openRegular opens the entry name of directory dir with flags (never
// following a link) and returns it with its stat data, if it is a regular
// file: anything else is errChanged, and is closed.
func openRegular(dir int, name string, flags int) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := dirfd.OpenAt(dir, name, flags, 0)
	if err != nil {
		return -1, st, err
	}
	if err = unix.Fstat(fd, &st); err == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
		err = errChanged
	}
	if err != nil {
		unix.Close(fd)
		return -1, st, err
	}
	return fd, st, nil
}

// openFlags open files for reading: never through a link, never blocking
// on a FIFO swapped in, without updating access times when allowed.
func openFlags(root bool) int {
	f := unix.O_RDONLY | unix.O_NONBLOCK | unix.O_NOCTTY
	if root {
		f |= unix.O_NOATIME // only the owner or CAP_FOWNER may
	}
	return f
}

func (b *backup) readFile(ctx context.Context, ch *chunk.Chunker, job *fileJob) (err error) {
	n := job.node
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(job.path())
	}
	// Taken before the file's first stat: a write after it gives the file
	// a ctime of at least start-liveMargin (the kernel's file times come
	// from a clock that lags by at most a tick).
	start := time.Now()
	fd, st, err := openRegular(job.dir.fd, n.Name, openFlags(b.allXattrs))
	path, rel := job.path(), job.dir.rel+n.Name
	job.dir.release()
	if err != nil {
		if b.vanished(path, err) || b.unreadable(path, rel, "open", err) {
			n.Type = skippedNode
			b.stats.files.Add(-1)
			return nil
		}
		return err
	}
	defer unix.Close(fd)
	f := &entryFile{fd: fd, path: path}
	defer func() {
		var re *readError
		if errors.As(err, &re) && b.unreadable(path, rel, "read", re.err) {
			// Nothing of a file read in part is kept; what was stored of
			// it is unreferenced, for a prune.
			b.forget(n)
			*n = repo.Node{Name: n.Name, Type: skippedNode}
			b.stats.files.Add(-1)
			err = nil
		}
	}()
	for reads := 1; ; reads++ {
		// The file read is the one opened: its metadata from its
		// descriptor.
		*n = b.nodeFromStat(n.Name, &st)
		if n.Xattrs, err = readXattrs(fd, "", b.allXattrs); err != nil {
			b.opts.Warn(path, fmt.Errorf("extended attributes not kept: %w", err))
		}
		resumed, err := b.readContent(ctx, ch, f, n, job.prev, st.Size)
		if err != nil {
			return err
		}
		var after unix.Stat_t
		if err := unix.Fstat(fd, &after); err != nil {
			return &readError{&fs.PathError{Op: "fstat", Path: path, Err: err}}
		}
		changed := after.Size != st.Size || after.Mtim != st.Mtim || after.Ctim != st.Ctim || int64(n.Size) != after.Size
		recent := after.Ctim.Nano() >= start.UnixNano()-int64(liveMargin)
		if !changed && !recent {
			b.stats.resumed.Add(resumed)
			return nil // no write since start: the bytes read are one version
		}
		if reads == maxReads {
			b.stats.resumed.Add(resumed)
			n.Flags |= repo.NodeChanging
			b.stats.changing.Add(1)
			b.opts.Warn(path, fmt.Errorf("kept changing while it was read (%d reads): stored as last read, flagged as changing", reads))
			return nil
		}
		if !changed {
			// Written just before the read began: a write during it
			// may have left no trace in its times. Read again once
			// the clock has moved past them.
			// (Bounded: a ctime ahead of the clock, after the clock
			// was set back, would otherwise hold the reader; such a
			// file is read again at once, and flagged in the end.)
			wait := min(time.Until(time.Unix(0, after.Ctim.Nano()+int64(liveMargin))), 2*liveMargin)
			if err := sleepFor(ctx, wait); err != nil {
				return err
			}
		}
		b.stats.reread.Add(1)
		b.forget(n)
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		start = time.Now() // before the stat that the next read is checked against
		if err := unix.Fstat(fd, &st); err != nil {
			return &readError{&fs.PathError{Op: "fstat", Path: path, Err: err}}
		}
	}
}

// afterPipeline, if set (by tests), sees each backup once its readers,
// compressors and uploads have finished without error.
var afterPipeline func(*backup)

// maxReads bounds how often a file that changes while it is read is read
// before it is stored flagged repo.NodeChanging.
const maxReads = 3

// liveMargin covers the lag of the clock file times come from (the
// kernel's coarse clock, one tick: at most 10 ms at HZ=100) and the
// distance between the two looks at the clock.
var liveMargin = 20 * time.Millisecond

// sleepFor waits d or until ctx is done (an error then); tests replace it.
var sleepFor = func(ctx context.Context, d time.Duration) error {
	if !ctxsleep.Sleep(ctx, d) {
		return ctx.Err()
	}
	return nil
}

// forget takes back what a read of file n counted: its bytes and blobs
// (blobs it stored stay, unreferenced, for a prune).
func (b *backup) forget(n *repo.Node) {
	b.stats.bytes.Add(-int64(n.Size))
	b.stats.blobs.Add(-int64(len(n.Content)))
	b.opts.Progress.Bytes.Add(-int64(n.Size))
	n.Content, n.Size = nil, 0
}

// readContent reads file f from its start, chunking it into n's content;
// size is what its stat said. prev, if not nil, is the file's previous
// version (more than one chunk): see resume; resumed is what resume
// matched.
func (b *backup) readContent(ctx context.Context, ch *chunk.Chunker, f *entryFile, n *repo.Node, prev *repo.Node, size int64) (resumed int64, err error) {
	n.Size = 0
	kind := nameKind(n.Name)
	var comp *fileCompression
	if size > int64(b.params.MinSize)*rawProof {
		comp = &fileCompression{}
	}
	// account adds a chunk to n's content; queue stores it unless the
	// repository has it or it is on its way: emitID does both.
	account := func(id chunk.ID, size int) {
		n.Content = append(n.Content, id)
		n.Size += uint64(size)
		b.stats.bytes.Add(int64(size))
		b.opts.Progress.Bytes.Add(int64(size))
	}
	queue := func(buf, data []byte, id chunk.ID) ([]byte, error) {
		if cap(data) > cap(buf) {
			// The chunker grew the buffer for a large chunk: the grown
			// one takes the small one's place in the pool (and is
			// dropped when it comes back, shrink).
			buf = data
		}
		if !b.claim(id, int64(len(data))) {
			return buf, nil
		}
		select {
		case b.blobJobs <- blobJob{id: id, buf: buf, data: data, kind: kind, comp: comp, seq: comp.take()}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return b.bufs.get(ctx)
	}
	emitID := func(buf, data []byte, id chunk.ID) ([]byte, error) {
		account(id, len(data))
		return queue(buf, data, id)
	}
	emit := func(buf, data []byte) ([]byte, error) { return emitID(buf, data, chunk.Hash(data)) }
	buf, err := b.bufs.get(ctx)
	if err != nil {
		return 0, err
	}
	defer func() {
		if buf != nil {
			b.bufs.put(buf)
		}
	}()
	// A file of several chunks is hashed beside its reading, except in a
	// checkpoint, which keeps to one core.
	// (The inline one stays on the stack: nothing allocated per file.)
	var inline hasher
	h := &inline
	if !b.opts.Checkpoint && size > 2*int64(b.params.MinSize) {
		h = newHasher()
	}
	defer h.close()
	if prev != nil {
		var done bool
		rs := resumeSink{emitID: emitID, queue: queue, account: account}
		if buf, resumed, done, err = b.resume(ctx, ch, f, prev, size, buf, h, rs); err != nil || done {
			return resumed, err
		}
	}
	min := int(b.params.MinSize)
	// A file that fits in one chunk is read in one go: the chunker would
	// not cut it anyway. A first read that brings as many bytes as the
	// file's stat said it has brings the whole file: no second read just to
	// see its end. (A file that grew meanwhile has new times, which the
	// caller sees.)
	k, err := f.Read(buf[:min+1])
	if err == nil && k > 0 && k <= min && int64(k) == size {
		buf, err = emit(buf, buf[:k])
		return 0, err
	}
	if err == nil {
		var more int
		more, err = io.ReadFull(f, buf[k:min+1])
		k += more
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		if k > 0 {
			buf, err = emit(buf, buf[:k])
		} else {
			err = nil
		}
		return 0, err
	}
	if err != nil {
		return 0, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	ch.Reset(f)
	buf, err = b.cutRest(ctx, ch, buf, h, emitID)
	return 0, err
}

// resume reads f from its start as its previous version's chunks (prev,
// of more than one), each hashed and compared with the chunk it was, for
// as long as they match, except the last chunk (it ended at the old end
// of the file, not where the chunker cut). The content-defined cutting
// then resumes where the last matching chunk ended, chunking what follows
// into n's content as readContent does; resumed is the bytes matched. The
// chunker keeps no state across a cut (restic/chunker resets its window
// and digest after each, and chunk.Chunker cuts as it does), and the bytes
// before a cut are the same as then, so the chunks are the ones cutting
// the whole file would give, without the cost of cutting the part that did
// not change: an appended log or database, a file changed near its end.
// Nothing is taken on trust: every byte is hashed (by h, while the next
// chunk is read).
//
// A file that grew by at least tailFirstMin past the start of its old
// last chunk (size is what its stat said) has that tail cut first, and
// its new chunks queued for upload, before the old chunks are checked:
// the stop after a checkpoint, whose news are at the end of a large file,
// then keeps the link busy while the old part is hashed (see
// cutTailFirst). The content is the same either way.
//
// done says that n's content is complete. When it is not, not even the
// first chunk matched and nothing was cut: f is back at its start and
// resumed is 0.
func (b *backup) resume(ctx context.Context, ch *chunk.Chunker, f *entryFile, prev *repo.Node, size int64, buf []byte, h *hasher,
	rs resumeSink) (_ []byte, resumed int64, done bool, err error) {
	var tail *cutTail
	if !b.opts.Checkpoint {
		if tail, buf, err = b.cutTailFirst(ctx, ch, f, prev, size, buf, h, rs.queue); err != nil {
			return buf, 0, false, err
		}
		if tail != nil {
			defer tail.drop(b)
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return buf, 0, false, err
			}
		}
	}
	var off int64
	// The chunk being hashed (while the next one is read), and the id it
	// must have; buf is the free buffer at hand (nil: none).
	var pendBuf, pendData []byte
	var pendWant chunk.ID
	defer func() {
		if pendBuf != nil {
			h.wait()
			b.bufs.put(pendBuf)
		}
	}()
	give := func(x []byte) {
		if buf == nil {
			buf = x
		} else {
			b.bufs.put(x)
		}
	}
	// settle waits for the pending chunk's hash. A match is emitted, and
	// the buffer emit gives back is free; so is a mismatch's.
	settle := func() (match bool, err error) {
		pb, pd, want := pendBuf, pendData, pendWant
		pendBuf, pendData = nil, nil
		if h.wait() != want {
			give(pb)
			return false, nil
		}
		free, err := rs.emitID(pb, pd, want)
		if err != nil {
			return false, err
		}
		give(free)
		off += int64(len(pd))
		return true, nil
	}
	for _, want := range prev.Content[:len(prev.Content)-1] {
		loc, ok := b.r.Index().Lookup(want)
		if !ok || loc.Type != repo.DataBlob || loc.RawLen == 0 || loc.RawLen > uint32(b.params.MaxSize) {
			break
		}
		x := buf
		buf = nil
		if x == nil {
			if x, err = b.bufs.get(ctx); err != nil {
				return nil, 0, false, err
			}
		}
		var data []byte
		if int(loc.RawLen) <= cap(x) {
			data = x[:loc.RawLen]
		} else {
			data = make([]byte, loc.RawLen)
		}
		_, rerr := io.ReadFull(f, data)
		if pendBuf != nil {
			match, err := settle()
			if err != nil {
				give(x)
				return buf, 0, false, err
			}
			if !match {
				give(x)
				break
			}
		}
		if rerr != nil {
			give(x)
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break // shorter now
			}
			return buf, 0, false, rerr
		}
		h.start(data)
		pendBuf, pendData, pendWant = x, data, want
		if err := ctx.Err(); err != nil {
			return buf, 0, false, err
		}
	}
	if pendBuf != nil {
		if _, err := settle(); err != nil {
			return buf, 0, false, err
		}
	}
	if buf == nil {
		if buf, err = b.bufs.get(ctx); err != nil {
			return nil, 0, false, err
		}
	}
	if tail != nil {
		// The old chunks matched up to off: what follows is the tail if
		// off is where it was cut from, else cut again from off until a
		// cut falls where one of the tail's chunks begins.
		buf, err = tail.finish(ctx, b, ch, f, off, buf, h, rs)
		return buf, off, err == nil, err
	}
	if off == 0 {
		_, err := f.Seek(0, io.SeekStart)
		return buf, 0, false, err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return buf, 0, false, err
	}
	ch.Reset(f)
	if buf, err = b.cutRest(ctx, ch, buf, h, rs.emitID); err != nil {
		return buf, 0, false, err
	}
	return buf, off, true, nil
}

// resumeSink is what resume hands chunks to: emitID adds a chunk to the
// file's content and queues it for storing; queue only queues it (a
// chunk of the tail, until its place is known); account only adds it (a
// tail chunk queued before).
type resumeSink struct {
	emitID  func(buf, data []byte, id chunk.ID) ([]byte, error)
	queue   func(buf, data []byte, id chunk.ID) ([]byte, error)
	account func(id chunk.ID, size int)
}

// tailFirstMin is the least a file must have grown past the start of its
// old last chunk for resume to cut that tail first.
const tailFirstMin = 4 << 20

// cutTail is the tail of a grown file that resume cut before checking the
// file's old chunks: its chunks in order, each with the offset it begins
// at.
type cutTail struct {
	chunks []tailChunk
	used   int // how many of chunks (the last ones) went into the content
}

// chunkAt returns the index of the chunk that begins at off, if one does.
func (t *cutTail) chunkAt(off int64) (int, bool) {
	return slices.BinarySearchFunc(t.chunks, off, func(c tailChunk, off int64) int { return cmp.Compare(c.off, off) })
}

type tailChunk struct {
	off  int64
	size int
	id   chunk.ID
}

// errResynced ends cutting again once a cut falls on a tail chunk's start.
var errResynced = errors.New("cut again up to the tail")

// cutTailFirst cuts f from the start of prev's last chunk to its end, if
// f grew by tailFirstMin or more past it, and queues the chunks for
// storing; nil if it did not (and then f was not read). Where the old
// last chunk began was a cut, so what follows is cut as cutting the whole
// file would cut it, provided the bytes before it are still prev's chunks
// (resume checks them next).
func (b *backup) cutTailFirst(ctx context.Context, ch *chunk.Chunker, f *entryFile, prev *repo.Node, size int64, buf []byte, h *hasher,
	queue func(buf, data []byte, id chunk.ID) ([]byte, error)) (*cutTail, []byte, error) {
	if size <= int64(prev.Size) {
		return nil, buf, nil
	}
	var from int64
	for _, id := range prev.Content[:len(prev.Content)-1] {
		loc, ok := b.r.Index().Lookup(id)
		if !ok || loc.Type != repo.DataBlob || loc.RawLen == 0 || loc.RawLen > uint32(b.params.MaxSize) {
			return nil, buf, nil // resume stops there: nothing after it to cut first
		}
		from += int64(loc.RawLen)
	}
	if size-from < tailFirstMin {
		return nil, buf, nil
	}
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return nil, buf, err
	}
	if buf == nil {
		var err error
		if buf, err = b.bufs.get(ctx); err != nil {
			return nil, nil, err
		}
	}
	t := &cutTail{}
	at := from
	ch.Reset(f)
	buf, err := b.cutRest(ctx, ch, buf, h, func(buf, data []byte, id chunk.ID) ([]byte, error) {
		t.chunks = append(t.chunks, tailChunk{off: at, size: len(data), id: id})
		at += int64(len(data))
		return queue(buf, data, id)
	})
	if err != nil {
		t.drop(b)
		return nil, buf, err
	}
	return t, buf, nil
}

// finish completes the content from off, where the old chunks stopped
// matching: with the whole tail if it was cut from there, else by cutting
// f from off until a cut ends where a tail chunk begins (the chunker keeps
// no state across a cut, so from there on it would cut what the tail
// holds), and the tail's chunks from that one on; or to f's end if no cut
// does.
func (t *cutTail) finish(ctx context.Context, b *backup, ch *chunk.Chunker, f *entryFile, off int64, buf []byte, h *hasher, rs resumeSink) ([]byte, error) {
	from, ok := t.chunkAt(off)
	if !ok {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return buf, err
		}
		ch.Reset(f)
		at := off
		from = len(t.chunks)
		var err error
		buf, err = b.cutRest(ctx, ch, buf, h, func(buf, data []byte, id chunk.ID) ([]byte, error) {
			at += int64(len(data))
			free, err := rs.emitID(buf, data, id)
			if err != nil {
				return free, err
			}
			if i, ok := t.chunkAt(at); ok {
				from = i
				if free != nil {
					b.bufs.put(free)
				}
				return nil, errResynced
			}
			return free, nil
		})
		if err != nil && !errors.Is(err, errResynced) {
			return buf, err
		}
	}
	for _, c := range t.chunks[from:] {
		rs.account(c.id, c.size)
	}
	t.used = len(t.chunks) - from
	if testHookTail != nil {
		testHookTail(t.used, len(t.chunks))
	}
	return buf, nil
}

// testHookTail, if set (by tests), sees each tail resume cut first: how
// many of its chunks went into the content.
var testHookTail func(used, chunks int)

// drop takes the tail's chunks that did not go into the content out of
// the snapshot's blob count (claim counted them; those it stored stay,
// unreferenced, for a prune).
func (t *cutTail) drop(b *backup) {
	if t == nil {
		return
	}
	b.stats.blobs.Add(-int64(len(t.chunks) - t.used))
	t.used = len(t.chunks)
}

// cutRest cuts what ch reads into chunks and emits each with its id,
// hashed by h while the next chunk is cut. buf is a free buffer, and so
// is the one returned.
func (b *backup) cutRest(ctx context.Context, ch *chunk.Chunker, buf []byte, h *hasher,
	emitID func(buf, data []byte, id chunk.ID) ([]byte, error)) ([]byte, error) {
	var pendBuf, pendData []byte // the chunk being hashed
	defer func() {
		if pendBuf != nil {
			h.wait()
			b.bufs.put(pendBuf)
		}
	}()
	for {
		if buf == nil {
			var err error
			if buf, err = b.bufs.get(ctx); err != nil {
				return nil, err
			}
		}
		data, err := ch.Next(buf)
		if err != nil && err != io.EOF {
			return buf, err
		}
		var free []byte
		if pendBuf != nil {
			pb, pd := pendBuf, pendData
			pendBuf, pendData = nil, nil
			var eerr error
			if free, eerr = emitID(pb, pd, h.wait()); eerr != nil {
				return buf, eerr
			}
		}
		if err == io.EOF {
			if free != nil {
				b.bufs.put(free)
			}
			return buf, nil
		}
		h.start(data)
		pendBuf, pendData = buf, data
		buf = free
		if err := ctx.Err(); err != nil {
			return buf, err
		}
	}
}

// chunkBufSize is the size chunk buffers start at: a chunk of the default
// parameters (512 KiB to 8 MiB, 1.5 MiB on average) is larger only about
// one time in twelve.
const chunkBufSize = 3 << 20

// compressor compresses new blobs and adds them to the data packer. In a
// repository with groups, blobs of at most repo.GroupMaxBlob bytes are
// gathered into groups of about repo.GroupTarget bytes, each compressed as
// one frame: small files then compress as if they were one stream.
func (b *backup) compressor(ctx context.Context) error {
	var out, scratch []byte
	var gs *groupSet
	if b.r.Config().Groups() {
		gs = &groupSet{}
	}
	flush := func(g *group) error { return b.flushGroup(ctx, repo.DataBlob, g, &out) }
	for {
		var job blobJob
		select {
		case j, ok := <-b.blobJobs:
			if !ok {
				return gs.flushAll(flush)
			}
			job = j
		case <-ctx.Done():
			return ctx.Err()
		}
		if gs != nil && len(job.data) <= repo.GroupMaxBlob {
			g, err := gs.take(job.kind, flush)
			if err != nil {
				return err
			}
			g.raw = append(g.raw, job.data...)
			g.members = append(g.members, repo.GroupMember{ID: job.id, RawLen: uint32(len(job.data))})
			b.bufs.put(job.buf)
			if len(g.raw) >= repo.GroupTarget || len(g.members) >= repo.GroupMaxMembers {
				if err := flush(g); err != nil {
					return err
				}
				gs.full(g)
			}
			continue
		}
		stored, comp := job.data, chunk.Raw
		var untried bool
		if job.comp.proven() {
			untried, scratch = b.r.Codec().LooksIncompressible(job.data, scratch)
		}
		if untried {
			b.stats.untried.Add(int64(len(job.data)))
		} else {
			out, comp = b.r.Codec().Compress(out[:0], job.data)
			stored = out
			job.comp.record(job.seq, comp)
		}
		err := b.packers[repo.DataBlob].add(ctx, b.uploads, job.id, comp, stored, len(job.data), &b.stats)
		b.bufs.put(job.buf)
		if err != nil {
			return err
		}
	}
}

// groupKinds is how many groups of one name extension each a compressor
// fills at once, beside one for files of any other kind: files of one
// kind compress better side by side. Measured on the generated 100,000
// small files (js, json, ts, md): tar | zstd -1 of them in walk order is
// 161.7 MB, sorted by extension 150.9 MB. An extension holds a group
// until that group is full, or until it has had no blob for groupStale
// blobs while another extension finds no group free: then what it
// gathered moves to the mixed group, and the newcomer takes its place.
// An extension that finds no group free joins the mixed group. So no
// group is closed before it is full, and a rare extension seen first
// does not keep a frequent one out. Each open group holds up to
// GroupTarget+GroupMaxBlob bytes.
const (
	groupKinds = 4
	groupStale = 256
)

// groupSet is a compressor's open groups: one per extension that holds
// one, and the mixed one.
type groupSet struct {
	kinds  [groupKinds]string
	held   [groupKinds]bool
	used   [groupKinds]uint64 // the clock at each group's last blob
	groups [groupKinds]group
	mixed  group
	clock  uint64 // blobs taken
}

// take returns the group for a blob of a file of kind; flush stores a
// group and empties it (to make room in the mixed group).
func (s *groupSet) take(kind string, flush func(*group) error) (*group, error) {
	g, err := s.pick(kind, flush)
	if err != nil {
		return nil, err
	}
	if g.raw == nil {
		// Room for a group's most: it never grows (and overshoots)
		// by appends.
		g.raw = make([]byte, 0, repo.GroupTarget+repo.GroupMaxBlob)
	}
	return g, nil
}

func (s *groupSet) pick(kind string, flush func(*group) error) (*group, error) {
	s.clock++
	free, oldest := -1, 0
	for i := range s.kinds {
		if s.held[i] && s.kinds[i] == kind {
			s.used[i] = s.clock
			return &s.groups[i], nil
		}
		if !s.held[i] && free < 0 {
			free = i
		}
		if s.used[i] < s.used[oldest] {
			oldest = i
		}
	}
	if free < 0 && s.clock-s.used[oldest] > groupStale {
		if err := s.toMixed(&s.groups[oldest], flush); err != nil {
			return nil, err
		}
		free = oldest
	}
	if free < 0 {
		return &s.mixed, nil
	}
	s.kinds[free], s.held[free], s.used[free] = kind, true, s.clock
	return &s.groups[free], nil
}

// toMixed moves the blobs of g (not full) to the end of the mixed group,
// which is stored first if they would not fit.
func (s *groupSet) toMixed(g *group, flush func(*group) error) error {
	m := &s.mixed
	if len(m.raw)+len(g.raw) > repo.GroupTarget || len(m.members)+len(g.members) > repo.GroupMaxMembers {
		if err := flush(m); err != nil {
			return err
		}
	}
	if m.raw == nil {
		m.raw = make([]byte, 0, repo.GroupTarget+repo.GroupMaxBlob)
	}
	m.raw = append(m.raw, g.raw...)
	m.members = append(m.members, g.members...)
	g.raw, g.members = g.raw[:0], g.members[:0]
	return nil
}

// full releases g, which was just stored full, for any extension.
func (s *groupSet) full(g *group) {
	for i := range s.kinds {
		if &s.groups[i] == g {
			s.held[i] = false
		}
	}
}

// flushAll stores every open group (s nil: none).
func (s *groupSet) flushAll(flush func(*group) error) error {
	if s == nil {
		return nil
	}
	for i := range s.groups {
		if err := flush(&s.groups[i]); err != nil {
			return err
		}
	}
	return flush(&s.mixed)
}

// nameKind is what groups a file's small blobs: its name's extension,
// lower-cased, or "" for a name without one.
func nameKind(name string) string {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || len(name)-i-1 > 16 {
		return ""
	}
	return strings.ToLower(name[i+1:])
}

// group is the group a compressor is filling: its members' raw bytes,
// one after another.
type group struct {
	raw     []byte
	members []repo.GroupMember
	out     []byte // the compressed frame's buffer (tree groups)
}

// flushGroup stores the blobs of type t gathered in g (nil: none) and empties it: as
// one group frame, or, when they are one blob or do not compress, each as
// a blob of its own.
func (b *backup) flushGroup(ctx context.Context, t repo.BlobType, g *group, out *[]byte) error {
	if g == nil || len(g.members) == 0 {
		return nil
	}
	defer func() { g.raw, g.members = g.raw[:0], g.members[:0] }()
	data := b.packers[t]
	if len(g.members) > 1 {
		*out = b.r.Codec().CompressFrame((*out)[:0], g.raw)
		if len(*out) < len(g.raw) {
			return data.addGroup(ctx, b.uploads, *out, g.members, &b.stats)
		}
	}
	raw := g.raw
	for _, m := range g.members {
		var comp chunk.Compression
		*out, comp = b.r.Codec().Compress((*out)[:0], raw[:m.RawLen])
		if err := data.add(ctx, b.uploads, m.ID, comp, *out, int(m.RawLen), &b.stats); err != nil {
			return err
		}
		raw = raw[m.RawLen:]
	}
	return nil
}

// uploader stores finished packs.
func (b *backup) uploader(ctx context.Context) error {
	for {
		var p finishedPack
		select {
		case fp, ok := <-b.uploads:
			if !ok {
				return nil
			}
			p = fp
		case <-ctx.Done():
			return ctx.Err()
		}
		var err error
		if b.opts.Throttle != nil {
			err = b.opts.Throttle(ctx, len(p.data))
		}
		if err == nil {
			err = b.r.SavePack(ctx, p.data, p.id, p.entries)
		}
		p.pool.put(p.data[:0])
		if err != nil {
			return err
		}
		b.stats.objects.Add(1)
		if !b.keepInflight {
			b.inflightMu.Lock()
			for _, e := range p.entries {
				delete(b.inflight, e.ID) // indexed: claim finds them there
			}
			b.inflightMu.Unlock()
		}
		if err := b.indexPack(ctx, p); err != nil {
			return err
		}
	}
}

// indexEvery is how many new blobs a backup holds before it writes them
// into an index object: a quarter of what one may hold, so that the
// object (~3 MiB) and its encoding stay small next to the pack buffers.
const indexEvery = repo.MaxIndexBlobs / 4

// splitIndex splits packs into parts of at most n blobs each (n at most
// repo.MaxIndexBlobs; a pack may be spread over parts).
func splitIndex(packs []repo.PackIndex, n int) [][]repo.PackIndex {
	var parts [][]repo.PackIndex
	var cur []repo.PackIndex
	k := 0
	for _, p := range packs {
		for len(p.Blobs) > 0 {
			if k == n {
				parts, cur, k = append(parts, cur), nil, 0
			}
			m := min(len(p.Blobs), n-k)
			cur = append(cur, repo.PackIndex{Pack: p.Pack, Blobs: p.Blobs[:m:m]})
			k += m
			p.Blobs = p.Blobs[m:]
		}
	}
	return append(parts, cur)
}

// indexPack adds a stored pack to newPacks and writes out the index
// objects they fill, keeping the rest: what a backup holds of its new
// blobs' entries is bounded, and a killed backup's packs are indexed up
// to the last full index object.
func (b *backup) indexPack(ctx context.Context, p finishedPack) error {
	b.newPacksMu.Lock()
	b.newPacks = append(b.newPacks, repo.PackIndex{Pack: p.id, Blobs: p.entries})
	b.newBlobs += len(p.entries)
	var full [][]repo.PackIndex
	if b.newBlobs > indexEvery { // and so more packs than that, at most

		full = splitIndex(b.newPacks, indexEvery)
		rest := full[len(full)-1]
		full = full[:len(full)-1]
		b.newPacks, b.newBlobs = slices.Clone(rest), 0
		for _, pi := range rest {
			b.newBlobs += len(pi.Blobs)
		}
	}
	b.newPacksMu.Unlock()
	for _, part := range full {
		ids, err := b.r.SaveIndex(ctx, part)
		if err != nil {
			b.indexLost.Store(true)
			return err
		}
		b.stats.objects.Add(int64(len(ids)))
	}
	return nil
}

// indexPartialTimeout bounds the index write of a failed backup.
const indexPartialTimeout = time.Minute

// indexPartial writes, after the backup failed with err (its goroutines
// all returned, its session still held), the index objects of the packs
// it stored and has not indexed yet, and returns the error to return: an
// *IndexedError when every stored pack is now in an index object.
func (b *backup) indexPartial(ctx context.Context, err error) error {
	if b.indexLost.Load() {
		return err
	}
	b.newPacksMu.Lock()
	packs := b.newPacks
	b.newPacks = nil
	b.newPacksMu.Unlock()
	if len(packs) > 0 {
		// The backup's own context is likely cancelled: the index goes
		// on its own deadline, and a fenced session stops it.
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), indexPartialTimeout)
		defer cancel()
		if context.Cause(ctx) != nil && errors.Is(context.Cause(ctx), repo.ErrSessionFenced) {
			return err
		}
		if _, ierr := b.r.SaveIndex(ictx, packs); ierr != nil {
			return err
		}
	}
	return &IndexedError{Err: err, Packs: len(packs)}
}

// loadExcludes compiles the Exclude patterns and those of the exclude file
// in the backed-up directory d; nil means nothing is excluded. An exclude
// file that is not a regular file (a link, a FIFO) is ignored with a
// warning: the workspace's owner must not be able to stop its backups.
// So is one that cannot be read, unless strict (the walk then lists it
// as unreadable).
func loadExcludes(d *openDir, patterns []string, warn func(string, error), strict bool) (*exclude.Matcher, error) {
	m, err := exclude.New("exclude", patterns)
	if err != nil {
		return nil, err
	}
	path := d.join(exclude.ExcludeFile)
	fd, _, err := openRegular(d.fd, exclude.ExcludeFile, openFlags(false))
	switch {
	case errors.Is(err, unix.ENOENT):
		return orNil(m), nil
	case errors.Is(err, unix.ELOOP), errors.Is(err, errChanged):
		warn(path, errors.New("not a regular file: ignored"))
		return orNil(m), nil
	case err != nil && !strict && entryError(err):
		warn(path, fmt.Errorf("cannot be read, its patterns are not applied: %w", err))
		return orNil(m), nil
	case err != nil:
		return nil, fmt.Errorf("exclude file %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	data, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	f.Close()
	switch {
	case err != nil && !strict && entryError(err):
		warn(path, fmt.Errorf("cannot be read, its patterns are not applied: %w", err))
		return orNil(m), nil
	case err != nil:
	case len(data) > 1<<20:
		err = errors.New("larger than 1 MiB")
	default:
		err = m.Add(exclude.ExcludeFile, strings.Split(string(data), "\n"))
	}
	if err != nil {
		return nil, fmt.Errorf("exclude file %s: %w", path, err)
	}
	return orNil(m), nil
}

// orNil returns m, or nil when it excludes nothing.
func orNil(m *exclude.Matcher) *exclude.Matcher {
	if m.Empty() {
		return nil
	}
	return m
}

// readlinkat reads the target of the symlink name in directory dirfd (or,
// with name "", of the symlink open as dirfd with O_PATH). Targets are at
// most PATH_MAX bytes on Linux.
func readlinkat(dirfd int, name string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dirfd, name, buf)
	if err != nil {
		return "", err
	}
	if n >= len(buf) {
		return "", errors.New("symlink target longer than 4095 bytes")
	}
	return string(buf[:n]), nil
}

// specialKind names a file type backup does not keep.
func specialKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("file type %#o", mode&unix.S_IFMT)
}
