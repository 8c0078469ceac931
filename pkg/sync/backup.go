package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/chunk"
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
	// backup ran). It may be called from several goroutines at once.
	Warn func(path string, err error)
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
}

type backupStats struct {
	files, dirs, symlinks, skipped atomic.Int64
	excluded                       atomic.Int64
	unchanged                      atomic.Int64
	bytes, newBytes, storedBytes   atomic.Int64
	blobs, newBlobs, objects       atomic.Int64
}

type fileJob struct {
	path string
	node *repo.Node
	done chan struct{}
}

type blobJob struct {
	id   chunk.ID
	buf  []byte // owned by the job; returned to the pool when stored
	data []byte
}

type dirFuture struct {
	done chan struct{}
	id   chunk.ID
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

	inflightMu gosync.Mutex
	inflight   map[chunk.ID]struct{}

	packers [2]*packer // by repo.BlobType
	uploads chan finishedPack

	newPacksMu gosync.Mutex
	newPacks   []repo.PackIndex
}

// Backup stores the tree at dir in r as a new snapshot of opts.Workspace.
// The snapshot object is written last, only after every pack and the index
// naming them are stored; on any error no snapshot is written and earlier
// snapshots are untouched. The repository's index must be loaded.
func Backup(ctx context.Context, r *repo.Repository, dir string, opts BackupOptions) (*BackupResult, error) {
	opts.defaults()
	if err := repo.ValidateName("owner", opts.Owner); err != nil {
		return nil, err
	}
	if err := repo.ValidateName("workspace", opts.Workspace); err != nil {
		return nil, err
	}
	start := time.Now()
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	rootInfo, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("backup source: %w", err)
	}
	rootStat := sysStat(rootInfo)
	if !rootInfo.IsDir() {
		return nil, fmt.Errorf("backup source %s is not a directory", abs)
	}
	var parent string
	var parentTree chunk.ID
	var parentStart int64
	{ // the parent is recorded even with Force, which only ignores its metadata
		snap, ref, err := r.FindSnapshot(ctx, opts.Workspace, opts.Parent)
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
	excl, err := loadExcludes(abs, opts.Exclude)
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
	// Chunk buffers in flight: one per reader, one per compressor, and the
	// queue between them. This, with the pack buffers, bounds memory.
	b.bufs = newBufferPool(opts.Readers+2*opts.Compressors, int(b.params.MaxSize))
	packCap := cfg.PackSize + 256<<10 // blobs plus a typical trailer
	// Data packs: the one being filled, those being uploaded, one waiting.
	// Tree packs are usually small: their buffers start at 1 MiB and grow
	// only when a snapshot has that many changed directories.
	b.packers[repo.DataBlob] = &packer{typ: repo.DataBlob, size: cfg.PackSize, pool: newBufferPool(1+opts.Uploads+1, packCap)}
	b.packers[repo.TreeBlob] = &packer{typ: repo.TreeBlob, size: cfg.PackSize, pool: newBufferPool(2, 1<<20)}

	g, gctx := errgroup.WithContext(ctx)
	var readers, compressors gosync.WaitGroup
	for range opts.Uploads {
		g.Go(func() error { return b.uploader(gctx) })
	}
	for range opts.Compressors {
		compressors.Add(1)
		g.Go(func() error { defer compressors.Done(); return b.compressor(gctx) })
	}
	for range opts.Readers {
		readers.Add(1)
		g.Go(func() error { defer readers.Done(); return b.reader(gctx) })
	}
	var rootID chunk.ID
	g.Go(func() error {
		root, err := b.walkDir(gctx, g, abs, "", parentTree)
		if err != nil {
			return err
		}
		if err := wait(gctx, root.done); err != nil {
			return err
		}
		rootID = root.id
		close(b.fileJobs)
		readers.Wait()
		close(b.blobJobs)
		compressors.Wait()
		for _, p := range b.packers {
			if err := p.flush(gctx, b.uploads); err != nil {
				return err
			}
		}
		close(b.uploads)
		return nil
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}

	opts.Progress.Finishing.Store(true)
	if len(b.newPacks) > 0 {
		if _, err := r.SaveIndex(ctx, b.newPacks); err != nil {
			return nil, err
		}
		b.stats.objects.Add(1)
	}
	b.stats.objects.Add(1) // the snapshot object
	st := &b.stats
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
		RootMTime: rootInfo.ModTime().UnixNano(),
		RootUID:   opts.UIDMap.ToContainer(rootStat.Uid),
		RootGID:   opts.GIDMap.ToContainer(rootStat.Gid),
		Stats: repo.Stats{
			Files: st.files.Load(), UnchangedFiles: st.unchanged.Load(), Dirs: st.dirs.Load(), Symlinks: st.symlinks.Load(), Skipped: st.skipped.Load(), Excluded: st.excluded.Load(),
			Bytes: st.bytes.Load(), NewBytes: st.newBytes.Load(), StoredBytes: st.storedBytes.Load(),
			Blobs: st.blobs.Load(), NewBlobs: st.newBlobs.Load(), ObjectsWritten: st.objects.Load(),
			DurationMS: time.Since(start).Milliseconds(),
		},
	}
	id, err := r.SaveSnapshot(ctx, snap)
	if err != nil {
		return nil, err
	}
	return &BackupResult{SnapshotID: id, Snapshot: snap}, nil
}

func wait(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// walkDir reads one directory, queues its changed files for reading,
// recurses into subdirectories, and returns a future for its tree id. A
// goroutine in g finishes the tree once every child is done. rel is the
// directory's path below the backed-up one, "" or ending in a slash;
// parentTree is the same directory in the parent snapshot, or zero.
func (b *backup) walkDir(ctx context.Context, g *errgroup.Group, path, rel string, parentTree chunk.ID) (*dirFuture, error) {
	// Entries are stat'ed relative to the open directory: no path walk
	// per entry, which costs as much as the stat itself in deep trees.
	dirfd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("read directory: %w", &fs.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(dirfd)
	names, err := readDirNames(dirfd)
	if err != nil {
		return nil, fmt.Errorf("read directory: %w", &fs.PathError{Op: "getdents", Path: path, Err: err})
	}
	sort.Strings(names) // as trees are
	var parentNodes []repo.Node
	if !parentTree.IsZero() {
		pt, err := b.r.LoadTree(ctx, parentTree)
		if err != nil {
			// The parent only saves work: read everything below here.
			b.opts.Warn(path, fmt.Errorf("parent snapshot unreadable here, reading all files: %w", err))
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
		err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if errors.Is(err, unix.ENOENT) {
			continue // removed while we walked
		}
		if err != nil {
			return nil, fmt.Errorf("stat %s: %w", filepath.Join(path, name), err)
		}
		if b.exclude != nil && b.exclude.Excluded(rel+name, st.Mode&unix.S_IFMT == unix.S_IFDIR) {
			b.stats.excluded.Add(1)
			continue
		}
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
			if n.Target, err = readlinkat(dirfd, name); err != nil {
				return nil, fmt.Errorf("read symlink %s: %w", filepath.Join(path, name), err)
			}
			b.stats.symlinks.Add(1)
		case unix.S_IFIFO:
			n.Type = repo.TypeFIFO
		default:
			// Devices and sockets: not kept (a socket is meaningless without
			// its process; devices do not belong in a workspace).
			b.stats.skipped.Add(1)
			b.opts.Warn(filepath.Join(path, name), fmt.Errorf("skipped: %s (not kept by this format version)", specialKind(st.Mode)))
			continue
		}
		if n.Type == repo.TypeFile {
			nodes = append(nodes, n) // xattrs: read by the reader, from the open file
			continue
		}
		p := filepath.Join(path, name)
		if n.Xattrs, err = readXattrs(-1, p, b.allXattrs); err != nil {
			b.opts.Warn(p, fmt.Errorf("extended attributes not kept: %w", err))
		}
		nodes = append(nodes, n)
		if n.Type == repo.TypeDir {
			var sub chunk.ID
			if pn := findNode(parentNodes, n.Name); pn != nil && pn.Type == repo.TypeDir {
				sub = pn.Subtree
			}
			f, err := b.walkSubdir(ctx, g, p, rel+n.Name+"/", sub)
			if err != nil {
				return nil, err
			}
			subdirs = append(subdirs, struct {
				i int
				f *dirFuture
			}{len(nodes) - 1, f})
			waits = append(waits, f.done)
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
		if pn := findNode(parentNodes, n.Name); pn != nil && b.unchanged(n, pn) {
			n.Content = pn.Content
			n.Xattrs = pn.Xattrs // an xattr change moves ctime
			b.stats.unchanged.Add(1)
			b.stats.bytes.Add(int64(n.Size))
			b.stats.blobs.Add(int64(len(n.Content)))
			b.opts.Progress.Bytes.Add(int64(n.Size))
			continue
		}
		job := &fileJob{path: filepath.Join(path, n.Name), node: n, done: make(chan struct{})}
		select {
		case b.fileJobs <- job:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		waits = append(waits, job.done)
	}
	fut := &dirFuture{done: make(chan struct{})}
	g.Go(func() error {
		for _, w := range waits {
			if err := wait(ctx, w); err != nil {
				return err
			}
		}
		for _, s := range subdirs {
			nodes[s.i].Subtree = s.f.id
		}
		kept := nodes[:0]
		for _, n := range nodes {
			if n.Type != skippedNode {
				kept = append(kept, n)
			}
		}
		id, err := b.saveTree(ctx, &repo.Tree{Nodes: kept})
		if err != nil {
			return err
		}
		fut.id = id
		b.stats.dirs.Add(1)
		b.opts.Progress.Dirs.Add(1)
		close(fut.done)
		return nil
	})
	return fut, nil
}

// racyWindow is the margin, before the parent backup started, within which
// a file's ctime makes its metadata untrustworthy: timestamps are coarser
// than the time it takes to rewrite a file (as git's "racy git" problem).
var racyWindow = 2 * time.Second

// walkSubdir walks a subdirectory in a goroutine of its own when one of
// the extra walker slots is free (directory reads and lstats are system
// call bound, so walking in parallel uses every core), else inline.
func (b *backup) walkSubdir(ctx context.Context, g *errgroup.Group, path, rel string, parentTree chunk.ID) (*dirFuture, error) {
	select {
	case b.walkers <- struct{}{}:
	default:
		return b.walkDir(ctx, g, path, rel, parentTree)
	}
	fut := &dirFuture{done: make(chan struct{})}
	g.Go(func() error {
		inner, err := b.walkDir(ctx, g, path, rel, parentTree)
		<-b.walkers // the slot is for walking, not for waiting
		if err != nil {
			return err
		}
		if err := wait(ctx, inner.done); err != nil {
			return err
		}
		fut.id = inner.id
		close(fut.done)
		return nil
	})
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
	if pn.Type != repo.TypeFile || n.Size != pn.Size || n.MTime != pn.MTime || n.CTime != pn.CTime || n.Inode != pn.Inode || n.Inode == 0 {
		return false
	}
	if n.CTime >= b.trustBefore || n.MTime >= b.trustBefore {
		return false // "racy": changed too close to when the parent read it
	}
	for _, id := range pn.Content {
		if !b.r.Index().Has(id) {
			return false
		}
	}
	return true
}

func (b *backup) saveTree(ctx context.Context, t *repo.Tree) (chunk.ID, error) {
	data := repo.EncodeTree(t)
	id := chunk.Hash(data)
	if !b.claim(id, int64(len(data))) {
		return id, nil
	}
	stored, comp := b.r.Codec().Compress(nil, data)
	return id, b.packers[repo.TreeBlob].add(ctx, b.uploads, id, comp, stored, len(data), &b.stats)
}

// claim reports whether blob id must be stored, marking it as being stored.
func (b *backup) claim(id chunk.ID, size int64) bool {
	b.stats.blobs.Add(1)
	if b.r.Index().Has(id) {
		return false
	}
	b.inflightMu.Lock()
	defer b.inflightMu.Unlock()
	if _, ok := b.inflight[id]; ok {
		return false
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
			return fmt.Errorf("%s: %w", job.path, err)
		}
		close(job.done)
	}
}

// skippedNode marks a tree node dropped before its tree is written.
const skippedNode repo.NodeType = 0

// testHookBeforeOpen, when set by a test, runs before each file is opened.
var testHookBeforeOpen func(path string)

func (b *backup) readFile(ctx context.Context, ch *chunk.Chunker, job *fileJob) error {
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(job.path)
	}
	f, err := os.OpenFile(job.path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// Deleted since the directory was read: leave it out.
		job.node.Type = skippedNode
		b.stats.files.Add(-1)
		b.stats.skipped.Add(1)
		b.opts.Warn(job.path, errors.New("skipped: deleted during backup"))
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	n := job.node
	if n.Xattrs, err = readXattrs(int(f.Fd()), job.path, b.allXattrs); err != nil {
		b.opts.Warn(job.path, fmt.Errorf("extended attributes not kept: %w", err))
	}
	n.Size = 0
	emit := func(buf, data []byte) ([]byte, error) {
		id := chunk.Hash(data)
		n.Content = append(n.Content, id)
		n.Size += uint64(len(data))
		b.stats.bytes.Add(int64(len(data)))
		b.opts.Progress.Bytes.Add(int64(len(data)))
		if !b.claim(id, int64(len(data))) {
			return buf, nil
		}
		select {
		case b.blobJobs <- blobJob{id: id, buf: buf, data: data}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return b.bufs.get(ctx)
	}
	buf, err := b.bufs.get(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if buf != nil {
			b.bufs.put(buf)
		}
	}()
	min := int(b.params.MinSize)
	// A file that fits in one chunk is read in one go: the chunker would
	// not cut it anyway.
	k, err := io.ReadFull(f, buf[:min+1])
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		if k > 0 {
			buf, err = emit(buf, buf[:k])
		} else {
			err = nil
		}
		return err
	}
	if err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	ch.Reset(f)
	for {
		data, err := ch.Next(buf)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if buf, err = emit(buf, data); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// compressor compresses new blobs and adds them to the data packer.
func (b *backup) compressor(ctx context.Context) error {
	var out []byte
	for {
		var job blobJob
		select {
		case j, ok := <-b.blobJobs:
			if !ok {
				return nil
			}
			job = j
		case <-ctx.Done():
			return ctx.Err()
		}
		var comp chunk.Compression
		out, comp = b.r.Codec().Compress(out[:0], job.data)
		err := b.packers[repo.DataBlob].add(ctx, b.uploads, job.id, comp, out, len(job.data), &b.stats)
		b.bufs.put(job.buf)
		if err != nil {
			return err
		}
	}
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
		err := b.r.SavePack(ctx, p.data, p.id, p.entries)
		p.pool.put(p.data[:0])
		if err != nil {
			return err
		}
		b.stats.objects.Add(1)
		b.newPacksMu.Lock()
		b.newPacks = append(b.newPacks, repo.PackIndex{Pack: p.id, Blobs: p.entries})
		b.newPacksMu.Unlock()
	}
}

// sysStat returns the stat data behind fi (always there for the Lstat of
// Linux; an empty one with fi's permission bits otherwise).
func sysStat(fi fs.FileInfo) *syscall.Stat_t {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st
	}
	return &syscall.Stat_t{Mode: uint32(fi.Mode().Perm())}
}

// loadExcludes compiles the Exclude patterns and those of dir's exclude
// file; nil means nothing is excluded.
func loadExcludes(dir string, patterns []string) (*exclude.Matcher, error) {
	m, err := exclude.New("exclude", patterns)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, exclude.ExcludeFile), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err == nil {
		data, rerr := io.ReadAll(io.LimitReader(f, 1<<20+1))
		f.Close()
		switch {
		case rerr != nil:
			err = rerr
		case len(data) > 1<<20:
			err = errors.New("larger than 1 MiB")
		default:
			err = m.Add(exclude.ExcludeFile, strings.Split(string(data), "\n"))
		}
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("exclude file %s: %w", filepath.Join(dir, exclude.ExcludeFile), err)
	}
	if m.Empty() {
		return nil, nil
	}
	return m, nil
}

// readlinkat reads the target of the symlink name in directory dirfd.
func readlinkat(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
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

// direntBufs holds getdents buffers, one per walker at a time: a walk
// reads thousands of directories.
var direntBufs = gosync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// readDirNames returns the names in the open directory dirfd, without
// "." and "..".
func readDirNames(dirfd int) ([]string, error) {
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	var names []string
	for {
		n, err := unix.ReadDirent(dirfd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
