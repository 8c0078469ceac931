package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	gosync "sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/internal/panics"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
)

// RestoreOptions configures one restore.
type RestoreOptions struct {
	// Downloads is the number of packs fetched and decoded at once; 0 means
	// 2 × GOMAXPROCS.
	Downloads int
	// Progress, if set, is updated as the restore runs.
	Progress *Progress
	// Warn, if set, is told about metadata the target cannot hold (extended
	// attributes on a file system without them). It may be called from
	// several goroutines at once.
	Warn func(path string, err error)
	// UIDMap and GIDMap map the recorded owners (container ids) to the ids
	// written to disk (host ids), when restoring as root.
	UIDMap, GIDMap IDMap
	// Overwrite allows a target that is not empty. An existing file that
	// matches the snapshot's (same size and mtime, or with Verify the same
	// content) is left as it is, apart from its permission bits and owner;
	// any other entry in the snapshot's way is replaced. Blobs found in the
	// existing version of a file are copied from it, not downloaded.
	Overwrite bool
	// Verify, with Overwrite, compares existing files by content, not by
	// size and mtime.
	Verify bool
	// Delete, with Overwrite, removes from the target what the snapshot
	// does not have (only inside the restored part with Include).
	Delete bool
	// Include, if not empty, restores only these paths of the snapshot
	// (slash-separated, relative to its root) with everything below them,
	// and the directories leading to them.
	Include []string
	// MaxEntries bounds the entries the snapshot may expand to (0 means
	// repo.MaxExpandedEntries); a larger one is refused before anything is
	// written.
	MaxEntries int64
	// ReadyBeforeComplete (not with Overwrite) makes the target usable
	// before the restore completes: first the whole tree (directories,
	// symlinks, hard links), the files below .git directories, every file
	// of at most ReadyMaxFileSize bytes, the files matching Priority and
	// the files the snapshot lists as most recently modified
	// (repo.Snapshot.Recent); then Ready is called; then the other ("late")
	// files are written, each to a temporary name in its directory and
	// renamed into place once complete and verified, unless the workspace
	// has created an entry of that name meanwhile: that entry is kept, and
	// counted in RestoreResult.Conflicts. Directory mtimes are set again
	// last. A failed or cancelled restore removes its temporary files.
	ReadyBeforeComplete bool
	// Priority holds patterns in gitignore syntax (package exclude),
	// relative to the snapshot's root, of files restored before Ready.
	Priority []string
	// ReadyMaxFileSize: files of at most this many bytes are restored
	// before Ready; 0 means DefaultReadyMaxFileSize.
	ReadyMaxFileSize int64
	// Late holds patterns in gitignore syntax, relative to the snapshot's
	// root, of files restored after Ready whatever their size (a
	// dependency directory such as node_modules/, many small files the
	// workspace rarely needs in its first seconds); files below .git,
	// matched by Priority or recent stay early.
	Late []string
	// Ready, if set, is called once, with ReadyBeforeComplete, when
	// everything but the late files is in place, with the bytes of the
	// late files (still to come).
	Ready func(bytesLeft int64)
}

// ErrTargetNotEmpty is returned by a restore into a directory that is not
// empty, without RestoreOptions.Overwrite.
var ErrTargetNotEmpty = errors.New("restore target is not empty")

// RestoreResult is what a finished restore reports.
type RestoreResult struct {
	Files, Dirs, Symlinks int64
	Bytes                 int64
	// PackBytes is how much pack data was read from storage.
	PackBytes int64
	// Unchanged counts existing files left as they were (Overwrite);
	// ReusedBytes is content copied from existing files instead of
	// downloaded; Deleted counts entries removed (Delete).
	Unchanged   int64
	ReusedBytes int64
	Deleted     int64
	// Conflicts counts late files and staged directories
	// (ReadyBeforeComplete) whose name the workspace took first, their
	// content dropped; ConflictPaths lists the
	// first MaxConflictPaths of them (display paths).
	Conflicts     int64
	ConflictPaths []string
}

// Limits of one restore batch: files are written batch by batch so that
// the plan held in memory stays bounded whatever the snapshot's size.
// measuredTrees bounds the decoded trees kept from measuring a snapshot
// for its walk. The 103k-file workspace of the benchmarks decodes to ~20
// MiB of trees: keeping the first 8 MiB makes the restore as fast as one
// without the measuring pass, at no measurable cost in peak memory (32 MiB
// added ~35 MiB to a restore over an identical directory).
const measuredTrees = 8 << 20

// Each directory holding a file of a batch stays open until the file is
// written, so batches are bounded in directories too.
const (
	batchMaxFiles = 8192
	batchMaxBlobs = 32768
	batchMaxDirs  = 1024
)

// restoreDir is a directory being restored. Its descriptor stays open
// while its tree is walked and until every file of it in a batch is
// written; then, everything in it being in place, it gets its metadata
// through that descriptor (release). A directory that hard links are still
// to be made in gets it at the end instead, after them, through a
// descriptor opened again below the target and checked to be the same
// directory (finishDir).
type restoreDir struct {
	openDir
	meta *dirMeta
	rs   *restorer
	// ReadyBeforeComplete: below a .git directory, below a directory a
	// priority pattern matches, in a staged subtree (staged.go); a
	// directory opened again for late files.
	git, prio, staged, lateDir bool
}

// release drops one reference to d; the last one gives d its metadata,
// unless that waits for hard links, and closes it.
func (d *restoreDir) release() error {
	if d.refs.Add(-1) != 0 {
		return nil
	}
	defer unix.Close(d.fd)
	if d.lateDir {
		return d.releaseLate()
	}
	m := d.meta
	if !m.set || m.linked {
		return nil
	}
	m.done = true
	return d.rs.setMeta(d.fd, d.path, m.uid, m.gid, m.xattrs, m.earlyMode(d.rs.chown), m.mtime)
}

// earlyMode is the mode m gets before its late files are written: not as
// root, its owner keeps the right to create them.
func (m *dirMeta) earlyMode(chown bool) uint32 {
	if m.late && !chown {
		return m.mode | 0o700
	}
	return m.mode
}

// dirMeta is what a restored directory gets once everything in it is in
// place, and how to find it again: its path below the target and its
// identity.
type dirMeta struct {
	rel      string // slash-separated below the target; "" is the target
	at       string // in a staged subtree: where it is until that is renamed into place
	dev, ino uint64
	mode     uint32
	mtime    int64
	uid, gid uint32
	xattrs   []repo.Xattr
	set      bool // false: leave as found (an old snapshot without root metadata)
	linked   bool // hard links are to be made in it: metadata at the end
	done     bool // metadata set on release
	late     bool // late files are to be written in it (ReadyBeforeComplete)
}

// where is the path of m below the target as it is now.
func (m *dirMeta) where() string {
	if m.at != "" {
		return m.at
	}
	return m.rel
}

// restoreFile is a file whose content is being written. The pack worker
// that brings its first blob creates it; the one that brings its last sets
// its metadata and releases its directory.
type restoreFile struct {
	dir     *restoreDir
	node    *repo.Node
	offsets []int64         // file offset of each content blob
	locs    []repo.Location // where each is, from planning until its batch is planned
	want    []int           // indices of the content blobs to fetch; nil: all

	mu        gosync.Mutex
	created   bool
	dev, ino  uint64 // once created (or kept): who it is
	remaining int    // content blobs not yet written
	chown     bool   // restore ownership and every xattr (running as root)
	warn      func(path string, err error)

	uidMap, gidMap IDMap

	ready   *readyPlan // a late file (ReadyBeforeComplete); nil otherwise
	tmp     string     // a late file's temporary name while it exists
	dropped bool       // a late file the workspace took the place of
}

func (f *restoreFile) path() string { return f.dir.join(f.node.Name) }

type blobUse struct {
	file   *restoreFile
	offset int64
}

// hardLink is another name of a file restored earlier, made once every
// file is written.
type hardLink struct {
	first *restoreFile
	dir   *dirMeta
	name  string
}

type restorer struct {
	r      *repo.Repository
	trees  *repo.Measurer // measured the snapshot; hands its trees to the walk
	opts   RestoreOptions
	target *dirfd.Dir
	res    RestoreResult
	dirs   []*dirMeta    // in creation order; metadata applied deepest first
	opened []*restoreDir // every directory opened, closed at the end whatever happens

	batch      []*restoreFile
	batchBlobs int
	batchDirs  map[*restoreDir]struct{}
	batches    chan []*restoreFile
	packBytes  atomic.Int64
	linkFirst  map[[2]uint64]*restoreFile // (device, inode) -> first restored
	links      []hardLink
	chown      bool // running as root: restore numeric ownership
	include    *includeSet
	scanBuf    []byte // for reading existing files (Overwrite)
	scanner    *chunk.Chunker
	ready      *readyPlan // ReadyBeforeComplete; nil otherwise

	reloadMu gosync.Mutex
	reloaded map[chunk.ID]bool // packs found gone, after which the index was loaded again
}

// Restore writes snapshot snap into target, which is created (with its
// missing parents) if needed, as RestoreDir does; target itself is opened
// as given, following symbolic links (the caller's own path).
func Restore(ctx context.Context, r *repo.Repository, snap *repo.Snapshot, target string, opts RestoreOptions) (*RestoreResult, error) {
	abs, err := filepath.Abs(target)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("create restore target: %w", err)
	}
	d, err := dirfd.Open(abs)
	if err != nil {
		return nil, fmt.Errorf("restore target: %w", err)
	}
	defer d.Close()
	return RestoreDir(ctx, r, snap, d, opts)
}

// RestoreDir writes snapshot snap into the open directory target, which
// must be empty unless opts.Overwrite. Every blob is checked against its
// hash before it is written, and nothing is ever written outside target:
// names come from validated trees, every entry is created and reached from
// its directory's descriptor and never through a link, and metadata is set
// through descriptors of the entries restore created (or checked, when
// overwriting). A snapshot whose trees expand beyond opts.MaxEntries
// entries or repo.MaxTreeDepth levels is refused before anything is
// written. The repository's index must be loaded.
func RestoreDir(ctx context.Context, r *repo.Repository, snap *repo.Snapshot, target *dirfd.Dir, opts RestoreOptions) (*RestoreResult, error) {
	if opts.Downloads <= 0 {
		opts.Downloads = 2 * runtime.GOMAXPROCS(0)
	}
	if opts.Progress == nil {
		opts.Progress = &Progress{}
	}
	if opts.Warn == nil {
		opts.Warn = func(string, error) {}
	}
	opts.Progress.TotalFiles.Store(snap.Stats.Files)
	opts.Progress.TotalBytes.Store(snap.Stats.Bytes)
	var ready *readyPlan
	if opts.ReadyBeforeComplete {
		if opts.Overwrite {
			return nil, errors.New("restore: ready before complete is not possible with overwrite")
		}
		var err error
		if ready, err = newReadyPlan(snap, &opts); err != nil {
			return nil, err
		}
	}
	if err := prepareTarget(target, opts.Overwrite); err != nil {
		return nil, err
	}
	// A snapshot newer than the index (its backup's index objects
	// written after the index was listed, the snapshot just before it
	// was found): the index is loaded again, once. Its root tree is the
	// last tree its backup indexed, so with the root every tree is there.
	if !r.Index().Has(snap.Tree) {
		if err := r.ReloadIndex(ctx); err != nil {
			return nil, fmt.Errorf("snapshot of %s: loading the index again for its root tree %s: %w", snap.Workspace, snap.Tree.Short(), err)
		}
	}
	// The trees measured are kept (within a bound) for the walk, which
	// reads them in the same order: measuring costs little more than one
	// pass over the trees.
	m := r.NewMeasurer()
	m.Keep(measuredTrees)
	if _, err := m.Measure(ctx, snap.Tree, opts.MaxEntries); err != nil {
		return nil, fmt.Errorf("snapshot of %s at %s: %w", snap.Workspace, snap.Time.Format("2006-01-02T15:04:05Z"), err)
	}
	rs := &restorer{r: r, opts: opts, target: target, trees: m, batches: make(chan []*restoreFile, 1), chown: os.Geteuid() == 0,
		linkFirst: map[[2]uint64]*restoreFile{}, batchDirs: map[*restoreDir]struct{}{}, ready: ready}
	defer rs.closeAll()
	var err error
	if len(opts.Include) > 0 {
		if rs.include, err = newIncludeSet(ctx, r, snap.Tree, opts.Include); err != nil {
			return nil, err
		}
		// The snapshot's totals would overstate a partial restore.
		opts.Progress.TotalFiles.Store(0)
		opts.Progress.TotalBytes.Store(0)
	}
	rootFd, err := unix.Dup(target.Fd())
	if err != nil {
		return nil, fmt.Errorf("restore target: %w", err)
	}
	unix.CloseOnExec(rootFd)
	var st unix.Stat_t
	if err := unix.Fstat(rootFd, &st); err != nil {
		unix.Close(rootFd)
		return nil, fmt.Errorf("restore target: %w", err)
	}
	root := rs.track(rootFd, target.Name(), &dirMeta{dev: st.Dev, ino: st.Ino, mode: snap.RootMode, mtime: snap.RootMTime,
		uid: snap.RootUID, gid: snap.RootGID, set: snap.RootMode != 0 || snap.RootMTime != 0})
	rs.res.Dirs = 1 // the target itself, as backup counts the source
	// The tree walk creates directories and links and plans files batch by
	// batch; the writer fetches packs and writes content meanwhile.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(panics.Safe(func() error { return rs.writeBatches(gctx) }))
	g.Go(panics.Safe(func() error {
		defer close(rs.batches)
		if err := rs.restoreTree(gctx, snap.Tree, root, rs.include == nil, 0); err != nil {
			return err
		}
		return rs.flush(gctx)
	}))
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if ready == nil {
		opts.Progress.Finishing.Store(true)
	}
	// Hard links, now that every file is written; only between files this
	// restore created, so nothing outside the target can be linked in.
	for _, l := range rs.links {
		if err := rs.link(l); err != nil {
			return nil, err
		}
	}
	// The directories that got hard links last, deepest first, so that
	// setting a directory's mtime or a read-only mode comes after
	// everything inside it is written (the others got theirs on release).
	for i := len(rs.dirs) - 1; i >= 0; i-- {
		if rs.dirs[i].done {
			continue
		}
		if err := rs.finishDir(rs.dirs[i]); err != nil {
			return nil, err
		}
	}
	if ready != nil {
		if opts.Ready != nil {
			left := ready.bytes
			if len(ready.staged) > 0 {
				// The staged subtrees' sizes are not known before their
				// walk: what the snapshot holds beyond what is written.
				left = max(left, opts.Progress.TotalBytes.Load()-opts.Progress.Bytes.Load())
			}
			opts.Ready(left)
		}
		if err := rs.writeLate(ctx); err != nil {
			ready.cleanupLate()
			return nil, err
		}
		opts.Progress.Finishing.Store(true)
		rs.res.Conflicts, rs.res.ConflictPaths = ready.conflicts, ready.conflictPaths
	}
	rs.res.PackBytes = rs.packBytes.Load()
	return &rs.res, nil
}

// track records a directory restore opened, holding one reference for its
// walk.
func (rs *restorer) track(fd int, path string, m *dirMeta) *restoreDir {
	d := &restoreDir{openDir: openDir{fd: fd, path: path}, meta: m, rs: rs}
	d.refs.Store(1)
	rs.opened = append(rs.opened, d)
	rs.dirs = append(rs.dirs, m)
	return d
}

// closeAll closes what a failed restore left open (a finished one has
// released every directory).
func (rs *restorer) closeAll() {
	for _, d := range rs.opened {
		if d.refs.Load() > 0 {
			d.refs.Store(0)
			unix.Close(d.fd)
		}
	}
}

// reopen opens the directory of m again below the target and checks it is
// the one restore created or checked.
func (rs *restorer) reopen(m *dirMeta) (int, string, error) {
	d, err := rs.target.OpenDir(m.where())
	if err != nil {
		return -1, "", fmt.Errorf("restore: %w", err)
	}
	st, err := d.Stat()
	if err == nil && (st.Dev != m.dev || st.Ino != m.ino) {
		err = fmt.Errorf("%s: %w", d.Name(), errMoved)
	}
	if err != nil {
		d.Close()
		return -1, "", fmt.Errorf("restore: %w", err)
	}
	return d.Fd(), d.Name(), nil
}

// testHookRestore, when set by a test, runs before restore creates or
// opens each entry, with the entry's display path.
var testHookRestore func(path string)

func hookRestore(path string) {
	if testHookRestore != nil {
		testHookRestore(path)
	}
}

// errMoved means an entry restore created was replaced while it ran.
var errMoved = errors.New("replaced or moved while the restore ran")

func prepareTarget(d *dirfd.Dir, overwrite bool) error {
	if overwrite {
		return nil
	}
	names, err := dirfd.ReadNames(d.Fd())
	if err != nil {
		return fmt.Errorf("restore target %s: %w", d.Name(), err)
	}
	if len(names) > 0 {
		return fmt.Errorf("%w: %s (restore over it with overwrite)", ErrTargetNotEmpty, d.Name())
	}
	return nil
}

// restoreTree restores tree id into d and releases d. full is false while
// walking down to included paths, when only the entries on the way are
// restored; depth is d's below the target.
func (rs *restorer) restoreTree(ctx context.Context, id chunk.ID, d *restoreDir, full bool, depth int) (err error) {
	defer func() {
		if rerr := d.release(); err == nil {
			err = rerr
		}
	}()
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := rs.trees.Take(ctx, id)
	if err != nil {
		return err
	}
	if full && rs.opts.Overwrite && rs.opts.Delete {
		if err := rs.deleteExtra(d, t); err != nil {
			return err
		}
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		// DecodeTree has refused names that are not one plain component;
		// check again here, where it matters.
		if err := repo.ValidName(n.Name); err != nil {
			return err
		}
		nrel := path.Join(d.meta.rel, n.Name)
		nfull := full
		if !full {
			var visit bool
			if visit, nfull = rs.include.match(nrel); !visit {
				continue
			}
		}
		// With Overwrite, what is in the way is removed unless it can be
		// kept: old describes what is kept (nil if nothing is there).
		hookRestore(d.join(n.Name))
		var old *unix.Stat_t
		if rs.opts.Overwrite {
			if old, err = rs.clearFor(d, n); err != nil {
				return err
			}
		}
		switch n.Type {
		case repo.TypeDir:
			if depth+1 > repo.MaxTreeDepth {
				return fmt.Errorf("restore %s: %w: directories nest deeper than %d levels", d.join(n.Name), repo.ErrTooLarge, repo.MaxTreeDepth)
			}
			if rs.ready != nil && rs.ready.stage(d, n, nrel) {
				rs.ready.addStaged(d, n, nrel, nfull, depth+1)
				continue
			}
			sub, err := rs.openSubdir(d, n, nrel, old)
			if err != nil {
				return err
			}
			if rs.ready != nil {
				rs.ready.subdir(d, sub, n.Name, nrel)
			}
			rs.res.Dirs++
			rs.opts.Progress.Dirs.Add(1)
			if err := rs.restoreTree(ctx, n.Subtree, sub, nfull, depth+1); err != nil {
				return err
			}
		case repo.TypeSymlink:
			if old == nil {
				if err := unix.Symlinkat(n.Target, d.fd, n.Name); err != nil {
					return fmt.Errorf("restore: symlink %s: %w", d.join(n.Name), err)
				}
			}
			if err := rs.symlinkMeta(d, n, old); err != nil {
				return err
			}
			rs.res.Symlinks++
		case repo.TypeFile:
			var key [2]uint64
			if n.Nlink > 1 && n.Inode != 0 {
				key = [2]uint64{n.Device, n.Inode}
				if first, ok := rs.linkFirst[key]; ok {
					// Another name of a file restored here: linked once
					// its content is written.
					rs.links = append(rs.links, hardLink{first: first, dir: d.meta, name: n.Name})
					d.meta.linked = true
					rs.res.Files++
					continue
				}
			}
			if rs.ready != nil && rs.ready.isLate(d, n, nrel) {
				if err := rs.addLate(d, n); err != nil {
					return err
				}
				continue
			}
			var rf *restoreFile
			if old != nil {
				rf, err = rs.addExistingFile(ctx, d, n, old)
			} else {
				rf, err = rs.addFile(ctx, d, n)
			}
			if err != nil {
				return err
			}
			if key != ([2]uint64{}) {
				rs.linkFirst[key] = rf
			}
		case repo.TypeFIFO:
			if old == nil {
				if err := unix.Mkfifoat(d.fd, n.Name, 0o600); err != nil {
					return fmt.Errorf("restore: mkfifo %s: %w", d.join(n.Name), err)
				}
			}
			if err := rs.fifoMeta(d, n, old); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: entry %q has unknown type %d", repo.ErrCorrupt, n.Name, n.Type)
		}
	}
	return nil
}

// openSubdir creates (unless old is kept) and opens the directory n in d.
func (rs *restorer) openSubdir(d *restoreDir, n *repo.Node, rel string, old *unix.Stat_t) (*restoreDir, error) {
	p := d.join(n.Name)
	if old == nil {
		if err := unix.Mkdirat(d.fd, n.Name, 0o700); err != nil {
			return nil, fmt.Errorf("restore: mkdir %s: %w", p, err)
		}
	}
	fd, err := dirfd.OpenAt(d.fd, n.Name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("restore: open %s: %w", p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("restore: stat %s: %w", p, err)
	}
	if old != nil && !dirfd.SameFile(&st, old) {
		unix.Close(fd)
		return nil, fmt.Errorf("restore: %s: %w", p, errMoved)
	}
	if old != nil && !rs.chown && st.Mode&0o700 != 0o700 {
		// A non-root restore may need to create entries in an existing
		// directory it owns but may not write; it gets its recorded mode
		// at the end like every other.
		if err := unix.Fchmod(fd, st.Mode&07777|0o700); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("restore: chmod %s: %w", p, err)
		}
	}
	var at string
	if d.meta.at != "" {
		at = path.Join(d.meta.at, n.Name)
	}
	return rs.track(fd, p, &dirMeta{rel: rel, at: at, dev: st.Dev, ino: st.Ino, mode: n.Mode, mtime: n.MTime, uid: n.UID, gid: n.GID, xattrs: n.Xattrs, set: true}), nil
}

// openEntry opens the entry n of d with flags, never following it, and
// checks it is of kind (S_IFLNK, S_IFIFO) with no second name (a hard link
// to an entry outside the target is never touched) and, when overwriting,
// the one kept (old).
func (rs *restorer) openEntry(d *restoreDir, n *repo.Node, flags int, kind uint32, old *unix.Stat_t) (int, error) {
	p := d.join(n.Name)
	fd, err := dirfd.OpenAt(d.fd, n.Name, flags, 0)
	if err != nil {
		return -1, fmt.Errorf("restore: open %s: %w", p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("restore: stat %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != kind || st.Nlink != 1 || (old != nil && !dirfd.SameFile(&st, old)) {
		unix.Close(fd)
		return -1, fmt.Errorf("restore: %s: %w", p, errMoved)
	}
	return fd, nil
}

// symlinkMeta gives the symlink n in d its owner, extended attributes and
// mtime. These have no call relative to a directory that leaves a link
// alone, so the link itself is opened (O_PATH, not followed), checked
// (openEntry), and changed through that descriptor: a link swapped for
// another file meanwhile is never touched.
func (rs *restorer) symlinkMeta(d *restoreDir, n *repo.Node, old *unix.Stat_t) error {
	fd, err := rs.openEntry(d, n, unix.O_PATH, unix.S_IFLNK, old)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	p := d.join(n.Name)
	if rs.chown {
		if err := unix.Fchownat(fd, "", int(rs.opts.UIDMap.ToHost(n.UID)), int(rs.opts.GIDMap.ToHost(n.GID)), unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("restore: chown %s: %w", p, err)
		}
	}
	proc := dirfd.ProcPath(fd)
	if err := rs.xattrs(-1, proc, p, n.Xattrs); err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, proc, ts, 0); err != nil {
		return fmt.Errorf("restore: set mtime %s: %w", p, err)
	}
	return nil
}

// fifoMeta gives the FIFO n in d its metadata through a descriptor of it,
// opened for reading without blocking (which a FIFO allows) and checked
// (openEntry).
func (rs *restorer) fifoMeta(d *restoreDir, n *repo.Node, old *unix.Stat_t) error {
	fd, err := rs.openEntry(d, n, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, unix.S_IFIFO, old)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return rs.setMeta(fd, d.join(n.Name), n.UID, n.GID, n.Xattrs, n.Mode, n.MTime)
}

// setMeta sets owner (as root), extended attributes, permission bits and
// mtime through the open descriptor fd of path.
func (rs *restorer) setMeta(fd int, path string, uid, gid uint32, xs []repo.Xattr, mode uint32, mtime int64) error {
	return setMetaFd(fd, path, rs.chown, rs.opts.UIDMap, rs.opts.GIDMap, uid, gid, xs, mode, mtime, rs.opts.Warn)
}

// setMetaFd is setMeta for callers without a restorer (the file writers).
func setMetaFd(fd int, path string, chown bool, uidMap, gidMap IDMap, uid, gid uint32, xs []repo.Xattr, mode uint32, mtime int64, warn func(string, error)) error {
	if chown {
		// Before chmod: chown clears setuid and setgid.
		if err := unix.Fchown(fd, int(uidMap.ToHost(uid)), int(gidMap.ToHost(gid))); err != nil {
			return fmt.Errorf("restore: chown %s: %w", path, err)
		}
	}
	if err := setXattrs(fd, "", path, xs, chown); errors.Is(err, errNoXattrs) {
		warn(path, err)
	} else if err != nil {
		return err
	}
	if err := unix.Fchmod(fd, mode&07777); err != nil {
		return fmt.Errorf("restore: chmod %s: %w", path, err)
	}
	if err := futimens(fd, mtime); err != nil {
		return fmt.Errorf("restore: set mtime %s: %w", path, err)
	}
	return nil
}

// xattrs sets extended attributes; a target without xattr support is a
// warning, not a failure.
func (rs *restorer) xattrs(fd int, procPath, path string, xs []repo.Xattr) error {
	err := setXattrs(fd, procPath, path, xs, rs.chown)
	if errors.Is(err, errNoXattrs) {
		rs.opts.Warn(path, err)
		return nil
	}
	return err
}

// futimens sets the modification time (and the access time, which is not
// kept, to the same) of the open file fd.
func futimens(fd int, mtime int64) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(mtime), unix.NsecToTimespec(mtime)}
	// utimensat(fd, NULL, times, 0) is futimens(3); x/sys has no wrapper
	// with nanoseconds for it.
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// finishDir gives a restored directory its metadata, through a descriptor
// opened again below the target and checked to be the same directory.
func (rs *restorer) finishDir(m *dirMeta) error {
	if !m.set {
		return nil
	}
	fd, p, err := rs.reopen(m)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return rs.setMeta(fd, p, m.uid, m.gid, m.xattrs, m.earlyMode(rs.chown), m.mtime)
}

// link makes the hard link l: the first name is opened again below the
// target (O_PATH, never following a link) and checked to be the file this
// restore wrote, and the new name made from that descriptor.
func (rs *restorer) link(l hardLink) error {
	fdir, _, err := rs.reopen(l.first.dir.meta)
	if err != nil {
		return err
	}
	defer unix.Close(fdir)
	first := l.first.path()
	ffd, err := dirfd.OpenAt(fdir, l.first.node.Name, unix.O_PATH, 0)
	if err != nil {
		return fmt.Errorf("restore: hard link: open %s: %w", first, err)
	}
	defer unix.Close(ffd)
	var st unix.Stat_t
	if err := unix.Fstat(ffd, &st); err != nil || st.Dev != l.first.dev || st.Ino != l.first.ino {
		return fmt.Errorf("restore: hard link to %s: %w", first, errMoved)
	}
	dfd, dpath, err := rs.reopen(l.dir)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	p := dpath + "/" + l.name
	if rs.opts.Overwrite {
		var cur unix.Stat_t
		err := unix.Fstatat(dfd, l.name, &cur, unix.AT_SYMLINK_NOFOLLOW)
		if err == nil && dirfd.SameFile(&cur, &st) {
			return nil // already this link
		}
		if err == nil {
			if err := dirfd.RemoveAll(dfd, dpath, l.name, repo.MaxTreeDepth); err != nil {
				return fmt.Errorf("restore: replace: %w", err)
			}
		}
	}
	if rs.chown {
		err = unix.Linkat(ffd, "", dfd, l.name, unix.AT_EMPTY_PATH) // needs CAP_DAC_READ_SEARCH
	} else {
		err = unix.Linkat(unix.AT_FDCWD, dirfd.ProcPath(ffd), dfd, l.name, unix.AT_SYMLINK_FOLLOW)
	}
	if err != nil {
		return fmt.Errorf("restore: hard link %s: %w", p, err)
	}
	return nil
}

// planFile checks that every content blob of file node n is in the index
// and places it in the file.
func (rs *restorer) planFile(d *restoreDir, n *repo.Node) (*restoreFile, error) {
	rf := &restoreFile{dir: d, node: n, offsets: make([]int64, len(n.Content)), locs: make([]repo.Location, len(n.Content)),
		remaining: len(n.Content), chown: rs.chown, warn: rs.opts.Warn, uidMap: rs.opts.UIDMap, gidMap: rs.opts.GIDMap}
	var off int64
	for i, id := range n.Content {
		loc, ok := rs.r.Index().Lookup(id)
		if !ok || loc.Type != repo.DataBlob {
			return nil, fmt.Errorf("restore %s: %w: data blob %s is not in the index", rf.path(), repo.ErrCorrupt, id.Short())
		}
		rf.offsets[i] = off
		rf.locs[i] = loc
		off += int64(loc.RawLen)
	}
	if off != int64(n.Size) {
		return nil, fmt.Errorf("restore %s: %w: content adds up to %d bytes, tree says %d", rf.path(), repo.ErrCorrupt, off, n.Size)
	}
	rs.res.Files++
	rs.res.Bytes += off
	return rf, nil
}

// addFile restores file node n in d, where nothing is.
func (rs *restorer) addFile(ctx context.Context, d *restoreDir, n *repo.Node) (*restoreFile, error) {
	rf, err := rs.planFile(d, n)
	if err != nil {
		return nil, err
	}
	return rf, rs.enqueue(ctx, rf)
}

// enqueue adds a file to the current batch, or finishes it at once when
// nothing is left to fetch. Its directory stays open until it is finished.
func (rs *restorer) enqueue(ctx context.Context, rf *restoreFile) error {
	rf.dir.hold()
	if rf.remaining == 0 {
		return rf.writeBlob(nil, false, 0, rs.opts.Progress)
	}
	rs.batch = append(rs.batch, rf)
	rs.batchBlobs += rf.remaining
	rs.batchDirs[rf.dir] = struct{}{}
	if len(rs.batch) >= batchMaxFiles || rs.batchBlobs >= batchMaxBlobs || len(rs.batchDirs) >= batchMaxDirs {
		return rs.flush(ctx)
	}
	return nil
}

// open opens the file for writing: on the first call it creates it
// (exclusively, so never through a link or over anything) and sizes it; on
// later ones it opens it again relative to its directory and checks it is
// still the file it created. whole says the caller writes all of the
// file's content with this descriptor and finishes it: a file nothing
// opens again (one blob, no hard link to make) needs neither its identity
// recorded nor a size set beforehand.
func (f *restoreFile) open(whole bool) (int, error) {
	hookRestore(f.path())
	if !f.created {
		var fd int
		var err error
		if f.ready != nil {
			fd, err = f.createTemp()
		} else {
			fd, err = dirfd.OpenAt(f.dir.fd, f.node.Name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
		}
		if err != nil {
			return -1, fmt.Errorf("restore: create %s: %w", f.path(), err)
		}
		f.created = true
		if whole && f.node.Nlink <= 1 && f.ready == nil {
			return fd, nil
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("restore: stat %s: %w", f.path(), err)
		}
		f.dev, f.ino = st.Dev, st.Ino
		if f.node.Size > 0 && !whole {
			if err := unix.Ftruncate(fd, int64(f.node.Size)); err != nil {
				unix.Close(fd)
				return -1, fmt.Errorf("restore: size %s: %w", f.path(), err)
			}
		}
		return fd, nil
	}
	name := f.node.Name
	if f.ready != nil {
		name = f.tmp
	}
	fd, err := dirfd.OpenAt(f.dir.fd, name, unix.O_WRONLY, 0)
	if err != nil {
		return -1, fmt.Errorf("restore: open %s: %w", f.path(), err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Dev != f.dev || st.Ino != f.ino {
		unix.Close(fd)
		return -1, fmt.Errorf("restore: %s: %w", f.path(), errMoved)
	}
	return fd, nil
}

// writeBlob writes one blob's content at off, creating the file on the
// first call and finishing it on the last (owner, xattrs, mode and mtime
// through its descriptor; its directory released); a file without content
// is created and finished by one call with nil. A blob of only zeros
// (zero) is not written: it stays, or becomes, a hole.
func (f *restoreFile) writeBlob(data []byte, zero bool, off int64, prog *Progress) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dropped {
		return f.dropLate(prog)
	}
	whole := f.remaining <= 1 && !zero && off == 0 && uint64(len(data)) == f.node.Size
	fd, err := f.open(whole)
	if err != nil {
		if f.ready != nil && workspaceTook(err) {
			return f.dropLate(prog)
		}
		return err
	}
	if zero {
		data = nil // a hole
	}
	if err := pwriteAll(fd, data, off); err != nil {
		unix.Close(fd)
		return fmt.Errorf("restore: write %s: %w", f.path(), err)
	}
	if f.remaining > 0 {
		f.remaining--
	}
	if f.remaining == 0 {
		n := f.node
		if err := setMetaFd(fd, f.path(), f.chown, f.uidMap, f.gidMap, n.UID, n.GID, n.Xattrs, n.Mode, n.MTime, f.warn); err != nil {
			unix.Close(fd)
			return err
		}
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("restore: close %s: %w", f.path(), err)
	}
	if f.remaining == 0 {
		if f.ready != nil {
			if err := f.commitLate(); err != nil {
				return err
			}
		}
		prog.Files.Add(1)
		return f.dir.release()
	}
	return nil
}

type packPlan struct {
	pack  chunk.ID
	blobs []repo.Location // sorted by offset, unique
	uses  map[chunk.ID][]blobUse
}

// flush hands the current batch to the writer.
func (rs *restorer) flush(ctx context.Context) error {
	if len(rs.batch) == 0 {
		return nil
	}
	select {
	case rs.batches <- rs.batch:
	case <-ctx.Done():
		return ctx.Err()
	}
	rs.batch, rs.batchBlobs = nil, 0
	clear(rs.batchDirs)
	return nil
}

// batchesInFlight is how many batches the writer works on at once: the
// next one starts while the last spans of the one before finish, so the
// pack workers never wait for a batch's slowest span, and the directories
// held open stay within twice a batch's.
const batchesInFlight = 2

// writeBatches writes the content of every file of every batch, fetching
// each pack a batch needs once, spans in parallel (opts.Downloads at once,
// across batches).
func (rs *restorer) writeBatches(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rs.opts.Downloads)
	slots := make(chan struct{}, batchesInFlight)
	for b := range rs.batches {
		select {
		case slots <- struct{}{}:
		case <-gctx.Done():
		}
		if gctx.Err() != nil {
			break
		}
		rs.writeBatch(gctx, g, b, gosync.OnceFunc(func() { <-slots }))
	}
	return g.Wait()
}

// writeBatch starts, in g, the reads of every span of the packs a batch
// needs; the span that ends the batch checks every file of it is written
// and calls done (once: a failing span calls it too).
func (rs *restorer) writeBatch(ctx context.Context, g *errgroup.Group, batch []*restoreFile, done func()) {
	plans := map[chunk.ID]*packPlan{}
	for _, f := range batch {
		count := len(f.node.Content)
		if f.want != nil {
			count = len(f.want)
		}
		for k := range count {
			i := k
			if f.want != nil {
				i = f.want[k]
			}
			id := f.node.Content[i]
			loc := f.locs[i]
			pl := plans[loc.Pack]
			if pl == nil {
				pl = &packPlan{pack: loc.Pack, uses: map[chunk.ID][]blobUse{}}
				plans[loc.Pack] = pl
			}
			if _, seen := pl.uses[id]; !seen {
				pl.blobs = append(pl.blobs, loc)
			}
			pl.uses[id] = append(pl.uses[id], blobUse{file: f, offset: f.offsets[i]})
		}
		f.locs = nil
	}
	var all [][]repo.Location
	var of []*packPlan
	for _, pl := range plans {
		sort.Slice(pl.blobs, func(i, j int) bool { return pl.blobs[i].Offset < pl.blobs[j].Offset })
		for _, span := range spans(pl.blobs) {
			all, of = append(all, span), append(of, pl)
		}
	}
	var pending atomic.Int64
	pending.Store(int64(len(all)))
	finish := func() error {
		defer done()
		for _, f := range batch {
			if f.remaining != 0 {
				return fmt.Errorf("restore %s: internal error: %d blobs not written", f.path(), f.remaining)
			}
		}
		return nil
	}
	if len(all) == 0 {
		g.Go(finish)
		return
	}
	for i, span := range all {
		pl := of[i]
		g.Go(panics.Safe(func() error {
			if err := rs.restoreSpan(ctx, pl, span); err != nil {
				done() // the batch will not finish; g is failing
				return err
			}
			if pending.Add(-1) == 0 {
				return finish()
			}
			return nil
		}))
	}
}

// Spans: the wanted blobs of a pack are read in spans, each one ranged
// read. A span ends before a gap of more than maxGap unwanted bytes (cheaper
// to skip with a new request) and once it holds maxSpan bytes (so that the
// workers share a pack full of small files).
const (
	maxGap  = 1 << 20
	maxSpan = 4 << 20
)

// spans cuts blobs (sorted by offset) into spans.
func spans(blobs []repo.Location) [][]repo.Location {
	var out [][]repo.Location
	start := 0
	for i := 1; i <= len(blobs); i++ {
		if i < len(blobs) {
			prevEnd := int64(blobs[i-1].Offset) + int64(blobs[i-1].StoredLen)
			gap := int64(blobs[i].Offset) - prevEnd
			size := prevEnd - int64(blobs[start].Offset)
			if gap <= maxGap && size < maxSpan {
				continue
			}
		}
		out = append(out, blobs[start:i])
		start = i
	}
	return out
}

// restoreSpan reads one span of a pack in a single ranged read, verifies
// each blob and writes it wherever it is used. A pack that is gone (a
// prune rewrote it since the index was loaded) makes it load the index
// again and fetch the span's remaining blobs from where they are now.
func (rs *restorer) restoreSpan(ctx context.Context, pl *packPlan, blobs []repo.Location) error {
	done, err := rs.readSpan(ctx, pl, blobs)
	if err == nil || !errors.Is(err, storage.ErrNotFound) {
		return err
	}
	if err := rs.reloadIndex(ctx, pl.pack); err != nil {
		return err
	}
	for _, old := range blobs[done:] {
		loc, ok := rs.r.Index().Lookup(old.ID)
		if !ok || loc.Pack == pl.pack {
			return fmt.Errorf("restore: pack %s is gone and no other pack holds blob %s: %w", repo.PackKey(pl.pack), old.ID.Short(), err)
		}
		if _, err := rs.readSpan(ctx, &packPlan{pack: loc.Pack, uses: pl.uses}, []repo.Location{loc}); err != nil {
			return err
		}
	}
	return nil
}

// reloadIndex loads the index again, once per pack found gone.
func (rs *restorer) reloadIndex(ctx context.Context, gone chunk.ID) error {
	rs.reloadMu.Lock()
	defer rs.reloadMu.Unlock()
	if rs.reloaded[gone] {
		return nil
	}
	if err := rs.r.ReloadIndex(ctx); err != nil {
		return fmt.Errorf("restore: pack %s is gone: loading the index again: %w", repo.PackKey(gone), err)
	}
	if rs.reloaded == nil {
		rs.reloaded = map[chunk.ID]bool{}
	}
	rs.reloaded[gone] = true
	return nil
}

// readSpan reads blobs (a span of pack pl.pack) and writes each where it
// is used; it returns how many it wrote.
func (rs *restorer) readSpan(ctx context.Context, pl *packPlan, blobs []repo.Location) (int, error) {
	var stored, decoded, frame, raw []byte
	frameAt := int64(-1) // where the group frame in frame starts
	key := repo.PackKey(pl.pack)
	first := int64(blobs[0].Offset)
	last := blobs[len(blobs)-1]
	end := int64(last.Offset) + int64(last.StoredLen)
	rc, err := rs.r.Storage().Get(ctx, key, first, end-first)
	if err != nil {
		return 0, rs.packReadErr(ctx, key, end, err)
	}
	defer rc.Close()
	rs.packBytes.Add(end - first)
	pos := first
	for i, loc := range blobs {
		// The blobs of one group are next to each other (sorted by
		// offset, they share their frame's): the frame is read and
		// decompressed once for all of them.
		grouped := loc.Compression == chunk.ZstdGroup
		if !grouped || int64(loc.Offset) != frameAt {
			if gap := int64(loc.Offset) - pos; gap > 0 {
				if _, err := io.CopyN(io.Discard, rc, gap); err != nil {
					return i, rs.packReadErr(ctx, key, end, err)
				}
			}
			if cap(stored) < int(loc.StoredLen) {
				stored = make([]byte, loc.StoredLen)
			}
			stored = stored[:loc.StoredLen]
			if _, err := io.ReadFull(rc, stored); err != nil {
				return i, rs.packReadErr(ctx, key, end, err)
			}
			pos = int64(loc.Offset) + int64(loc.StoredLen)
			if grouped {
				frameAt = -1
				if frame, err = rs.r.DecodeFrame(key, loc.BlobEntry, stored, frame); err != nil {
					return i, err
				}
				frameAt = int64(loc.Offset)
			}
		}
		if grouped {
			raw, err = rs.r.BlobFromFrame(key, loc.BlobEntry, frame)
		} else {
			decoded, err = rs.r.DecodeBlob(key, loc.BlobEntry, stored, decoded[:0])
			raw = decoded
		}
		if err != nil {
			return i, err
		}
		uses := pl.uses[loc.ID]
		zero := allZero(raw)
		for _, u := range uses {
			if err := u.file.writeBlob(raw, zero, u.offset, rs.opts.Progress); err != nil {
				return i, err
			}
		}
		rs.opts.Progress.Bytes.Add(int64(len(raw)) * int64(len(uses)))
	}
	return len(blobs), nil
}

// packReadErr is the error of a read of the pack at key, up to end, that
// failed with err: a pack shorter than the index says (the read ended
// early, or started past the end) is damaged, ErrCorrupt, as its size
// confirms; any other failure is the storage's.
func (rs *restorer) packReadErr(ctx context.Context, key string, end int64, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, storage.ErrInvalidRange) {
		if oi, serr := rs.r.Storage().Stat(ctx, key); serr == nil && oi.Size < end {
			return fmt.Errorf("pack %s: %w: %d bytes, the index places blobs up to %d", key, repo.ErrCorrupt, oi.Size, end)
		}
	}
	return fmt.Errorf("read pack %s: %w", key, err)
}

var zeros [64 << 10]byte

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
