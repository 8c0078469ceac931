package sync

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	gosync "sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
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
}

// Limits of one restore batch: files are written batch by batch so that
// the plan held in memory stays bounded whatever the snapshot's size.
const (
	batchMaxFiles = 8192
	batchMaxBlobs = 32768
)

// restoreFile is a file whose content is being written. The pack worker
// that brings its first blob creates it; the one that brings its last sets
// its mode and mtime.
type restoreFile struct {
	path    string
	node    *repo.Node
	offsets []int64 // file offset of each content blob
	want    []int   // indices of the content blobs to fetch; nil: all

	mu        gosync.Mutex
	created   bool
	remaining int  // content blobs not yet written
	chown     bool // restore ownership and every xattr (running as root)
	warn      func(path string, err error)

	uidMap, gidMap IDMap
}

type blobUse struct {
	file   *restoreFile
	offset int64
}

type dirMeta struct {
	path     string
	mode     uint32
	mtime    int64
	uid, gid uint32
	xattrs   []repo.Xattr
}

type restorer struct {
	r      *repo.Repository
	opts   RestoreOptions
	target string
	res    RestoreResult
	dirs   []dirMeta

	batch      []*restoreFile
	batchBlobs int
	batches    chan []*restoreFile
	packBytes  atomic.Int64
	linkFirst  map[[2]uint64]string // (device, inode) -> first path restored
	links      [][2]string          // (existing, new) hard links to make last
	chown      bool                 // running as root: restore numeric ownership
	include    *includeSet
	scanBuf    []byte // for reading existing files (Overwrite)
	scanner    *chunk.Chunker
}

// Restore writes snapshot snap into target, which is created if missing and
// must otherwise be an empty directory. Every blob is checked against its
// hash before it is written, and nothing is ever written outside target:
// names come from validated trees, directories are created (never
// followed), files are created exclusively without following links. The
// repository's index must be loaded.
func Restore(ctx context.Context, r *repo.Repository, snap *repo.Snapshot, target string, opts RestoreOptions) (*RestoreResult, error) {
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
	abs, err := filepath.Abs(target)
	if err != nil {
		return nil, err
	}
	if err := prepareTarget(abs, opts.Overwrite); err != nil {
		return nil, err
	}
	rs := &restorer{r: r, opts: opts, target: abs, batches: make(chan []*restoreFile, 1), chown: os.Geteuid() == 0, linkFirst: map[[2]uint64]string{}}
	if len(opts.Include) > 0 {
		if rs.include, err = newIncludeSet(ctx, r, snap.Tree, opts.Include); err != nil {
			return nil, err
		}
		// The snapshot's totals would overstate a partial restore.
		opts.Progress.TotalFiles.Store(0)
		opts.Progress.TotalBytes.Store(0)
	}
	rs.res.Dirs = 1 // the target itself, as backup counts the source
	// The tree walk creates directories and links and plans files batch by
	// batch; the writer fetches packs and writes content meanwhile.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		for b := range rs.batches {
			if err := rs.writeBatch(gctx, b); err != nil {
				return err
			}
		}
		return nil
	})
	g.Go(func() error {
		defer close(rs.batches)
		if err := rs.restoreTree(gctx, snap.Tree, abs, "", rs.include == nil); err != nil {
			return err
		}
		return rs.flush(gctx)
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	rs.res.PackBytes = rs.packBytes.Load()
	opts.Progress.Finishing.Store(true)
	// Hard links, now that every file is written; only between files this
	// restore created, so nothing outside the target can be linked in.
	for _, l := range rs.links {
		if rs.opts.Overwrite {
			if done, err := rs.clearForLink(l[0], l[1]); err != nil || done {
				if err != nil {
					return nil, err
				}
				continue
			}
		}
		if err := os.Link(l[0], l[1]); err != nil {
			return nil, fmt.Errorf("restore: hard link: %w", err)
		}
	}
	// Directories last, deepest first, so that setting a directory's mtime
	// or a read-only mode comes after everything inside it is written.
	rs.dirs = append(rs.dirs, dirMeta{path: abs, mode: snap.RootMode, mtime: snap.RootMTime, uid: snap.RootUID, gid: snap.RootGID})
	for i := len(rs.dirs) - 1; i >= 0; i-- {
		d := rs.dirs[i]
		if d.mode == 0 && d.mtime == 0 {
			continue
		}
		if err := rs.ownAndXattrs(d.path, d.uid, d.gid, d.xattrs); err != nil {
			return nil, err
		}
		if err := setMeta(d.path, d.mode, d.mtime); err != nil {
			return nil, err
		}
	}
	return &rs.res, nil
}

func prepareTarget(dir string, overwrite bool) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create restore target: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore target: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("restore target %s is not a directory", dir)
	}
	if overwrite {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("restore target: %w", err)
	}
	defer f.Close()
	if names, _ := f.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("%w: %s (restore over it with overwrite)", ErrTargetNotEmpty, dir)
	}
	return nil
}

// restoreTree restores tree id into dir, which exists. rel is dir's path
// in the snapshot ("" for the root); full is false while walking down to
// included paths, when only the entries on the way are restored.
func (rs *restorer) restoreTree(ctx context.Context, id chunk.ID, dir, rel string, full bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := rs.r.LoadTree(ctx, id)
	if err != nil {
		return err
	}
	if full && rs.opts.Overwrite && rs.opts.Delete {
		if err := rs.deleteExtra(dir, t); err != nil {
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
		p := filepath.Join(dir, n.Name)
		if filepath.Dir(p) != dir {
			return fmt.Errorf("%w: entry %q escapes %s", repo.ErrCorrupt, n.Name, dir)
		}
		nrel := path.Join(rel, n.Name)
		nfull := full
		if !full {
			var visit bool
			if visit, nfull = rs.include.match(nrel); !visit {
				continue
			}
		}
		// With Overwrite, what is in the way is removed unless it can be
		// kept: old describes what is kept (nil if nothing is there).
		var old *unix.Stat_t
		if rs.opts.Overwrite {
			if old, err = rs.clearFor(p, n); err != nil {
				return err
			}
		}
		switch n.Type {
		case repo.TypeDir:
			if old == nil {
				if err := os.Mkdir(p, 0o700); err != nil {
					return fmt.Errorf("restore: %w", err)
				}
			} else if err := rs.makeWritable(p, old); err != nil {
				return err
			}
			rs.dirs = append(rs.dirs, dirMeta{path: p, mode: n.Mode, mtime: n.MTime, uid: n.UID, gid: n.GID, xattrs: n.Xattrs})
			rs.res.Dirs++
			rs.opts.Progress.Dirs.Add(1)
			if err := rs.restoreTree(ctx, n.Subtree, p, nrel, nfull); err != nil {
				return err
			}
		case repo.TypeSymlink:
			if old == nil {
				if err := os.Symlink(n.Target, p); err != nil {
					return fmt.Errorf("restore: %w", err)
				}
			}
			if err := rs.ownAndXattrs(p, n.UID, n.GID, n.Xattrs); err != nil {
				return err
			}
			if err := setMTime(p, n.MTime); err != nil {
				return err
			}
			rs.res.Symlinks++
		case repo.TypeFile:
			if n.Nlink > 1 && n.Inode != 0 {
				key := [2]uint64{n.Device, n.Inode}
				if first, ok := rs.linkFirst[key]; ok {
					// Another name of a file restored here: linked once
					// its content is written.
					rs.links = append(rs.links, [2]string{first, p})
					rs.res.Files++
					continue
				}
				rs.linkFirst[key] = p
			}
			if old != nil {
				if err := rs.addExistingFile(ctx, p, n, old); err != nil {
					return err
				}
				continue
			}
			if err := rs.addFile(ctx, p, n); err != nil {
				return err
			}
		case repo.TypeFIFO:
			if old == nil {
				if err := unix.Mkfifo(p, 0o600); err != nil {
					return fmt.Errorf("restore: mkfifo %s: %w", p, err)
				}
			}
			if err := rs.ownAndXattrs(p, n.UID, n.GID, n.Xattrs); err != nil {
				return err
			}
			if err := setMeta(p, n.Mode, n.MTime); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: entry %q has unknown type %d", repo.ErrCorrupt, n.Name, n.Type)
		}
	}
	return nil
}

// planFile checks that every content blob of file node n is in the index
// and places it in the file.
func (rs *restorer) planFile(p string, n *repo.Node) (*restoreFile, error) {
	rf := &restoreFile{path: p, node: n, offsets: make([]int64, len(n.Content)), remaining: len(n.Content), chown: rs.chown, warn: rs.opts.Warn, uidMap: rs.opts.UIDMap, gidMap: rs.opts.GIDMap}
	var off int64
	for i, id := range n.Content {
		loc, ok := rs.r.Index().Lookup(id)
		if !ok || loc.Type != repo.DataBlob {
			return nil, fmt.Errorf("restore %s: %w: data blob %s is not in the index", p, repo.ErrCorrupt, id.Short())
		}
		rf.offsets[i] = off
		off += int64(loc.RawLen)
	}
	if off != int64(n.Size) {
		return nil, fmt.Errorf("restore %s: %w: content adds up to %d bytes, tree says %d", p, repo.ErrCorrupt, off, n.Size)
	}
	rs.res.Files++
	rs.res.Bytes += off
	return rf, nil
}

// addFile restores file node n at p, where nothing is.
func (rs *restorer) addFile(ctx context.Context, p string, n *repo.Node) error {
	rf, err := rs.planFile(p, n)
	if err != nil {
		return err
	}
	return rs.enqueue(ctx, rf)
}

// enqueue adds a file to the current batch, or finishes it at once when
// nothing is left to fetch.
func (rs *restorer) enqueue(ctx context.Context, rf *restoreFile) error {
	if rf.remaining == 0 {
		return rf.writeBlob(nil, false, 0, rs.opts.Progress)
	}
	rs.batch = append(rs.batch, rf)
	rs.batchBlobs += rf.remaining
	if len(rs.batch) >= batchMaxFiles || rs.batchBlobs >= batchMaxBlobs {
		return rs.flush(ctx)
	}
	return nil
}

// writeBlob writes one blob's content at off, creating the file on the
// first call (exclusively, never through a link, sized at once) and
// finishing it on the last; a file without content is created and finished
// by one call with nil. A blob of only zeros (zero) is not written: it
// stays, or becomes, a hole.
func (f *restoreFile) writeBlob(data []byte, zero bool, off int64, prog *Progress) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	flags := os.O_WRONLY | syscall.O_NOFOLLOW | syscall.O_CLOEXEC
	if !f.created {
		flags |= os.O_CREATE | os.O_EXCL
	}
	fd, err := unix.Open(f.path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("restore: open %s: %w", f.path, err)
	}
	if !f.created && f.node.Size > 0 {
		if err := unix.Ftruncate(fd, int64(f.node.Size)); err != nil {
			unix.Close(fd)
			return fmt.Errorf("restore: size %s: %w", f.path, err)
		}
	}
	f.created = true
	if zero {
		data = nil // a hole
	}
	if err := pwriteAll(fd, data, off); err != nil {
		unix.Close(fd)
		return fmt.Errorf("restore: write %s: %w", f.path, err)
	}
	if f.remaining > 0 {
		f.remaining--
	}
	if f.remaining == 0 && f.chown {
		// Before chmod: chown clears setuid and setgid.
		if err := unix.Fchown(fd, int(f.uidMap.ToHost(f.node.UID)), int(f.gidMap.ToHost(f.node.GID))); err != nil {
			unix.Close(fd)
			return fmt.Errorf("restore: chown %s: %w", f.path, err)
		}
	}
	if f.remaining == 0 {
		if err := setXattrs(fd, f.path, f.node.Xattrs, f.chown); errors.Is(err, errNoXattrs) {
			f.warn(f.path, err)
		} else if err != nil {
			unix.Close(fd)
			return err
		}
		if err := unix.Fchmod(fd, f.node.Mode&07777); err != nil {
			unix.Close(fd)
			return fmt.Errorf("restore: chmod %s: %w", f.path, err)
		}
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("restore: close %s: %w", f.path, err)
	}
	if f.remaining == 0 {
		prog.Files.Add(1)
		return setMTime(f.path, f.node.MTime)
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
	return nil
}

// writeBatch writes the content of every file in a batch, fetching each
// pack it needs once, packs in parallel.
func (rs *restorer) writeBatch(ctx context.Context, batch []*restoreFile) error {
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
			loc, _ := rs.r.Index().Lookup(id)
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
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rs.opts.Downloads)
	for _, pl := range plans {
		sort.Slice(pl.blobs, func(i, j int) bool { return pl.blobs[i].Offset < pl.blobs[j].Offset })
		for _, span := range spans(pl.blobs) {
			g.Go(func() error {
				return rs.restoreSpan(gctx, pl, span)
			})
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, f := range batch {
		if f.remaining != 0 {
			return fmt.Errorf("restore %s: internal error: %d blobs not written", f.path, f.remaining)
		}
	}
	return nil
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
// each blob and writes it wherever it is used.
func (rs *restorer) restoreSpan(ctx context.Context, pl *packPlan, blobs []repo.Location) error {
	var stored, raw []byte
	key := repo.PackKey(pl.pack)
	first := int64(blobs[0].Offset)
	last := blobs[len(blobs)-1]
	end := int64(last.Offset) + int64(last.StoredLen)
	rc, err := rs.r.Storage().Get(ctx, key, first, end-first)
	if err != nil {
		return fmt.Errorf("read pack %s: %w", key, err)
	}
	defer rc.Close()
	rs.packBytes.Add(end - first)
	pos := first
	for _, loc := range blobs {
		if gap := int64(loc.Offset) - pos; gap > 0 {
			if _, err := io.CopyN(io.Discard, rc, gap); err != nil {
				return fmt.Errorf("read pack %s: %w", key, err)
			}
		}
		if cap(stored) < int(loc.StoredLen) {
			stored = make([]byte, loc.StoredLen)
		}
		stored = stored[:loc.StoredLen]
		if _, err := io.ReadFull(rc, stored); err != nil {
			return fmt.Errorf("read pack %s: %w", key, err)
		}
		pos = int64(loc.Offset) + int64(loc.StoredLen)
		raw, err = rs.r.DecodeBlob(key, loc.BlobEntry, stored, raw[:0])
		if err != nil {
			return err
		}
		uses := pl.uses[loc.ID]
		zero := allZero(raw)
		for _, u := range uses {
			if err := u.file.writeBlob(raw, zero, u.offset, rs.opts.Progress); err != nil {
				return err
			}
		}
		rs.opts.Progress.Bytes.Add(int64(len(raw)) * int64(len(uses)))
	}
	return nil
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

// ownAndXattrs gives an entry restore created (by path, never following a
// link) its owner, when restoring as root, and its extended attributes; a
// target without xattr support is a warning, not a failure.
func (rs *restorer) ownAndXattrs(path string, uid, gid uint32, xs []repo.Xattr) error {
	if rs.chown {
		if err := unix.Lchown(path, int(rs.opts.UIDMap.ToHost(uid)), int(rs.opts.GIDMap.ToHost(gid))); err != nil {
			return fmt.Errorf("restore: chown %s: %w", path, err)
		}
	}
	err := setXattrs(-1, path, xs, rs.chown)
	if errors.Is(err, errNoXattrs) {
		rs.opts.Warn(path, err)
		return nil
	}
	return err
}

// setMeta sets permission bits and mtime of a directory restore created
// (never a symlink: chmod would follow it).
func setMeta(path string, mode uint32, mtime int64) error {
	if err := unix.Fchmodat(unix.AT_FDCWD, path, mode&07777, 0); err != nil {
		return fmt.Errorf("restore: chmod %s: %w", path, err)
	}
	return setMTime(path, mtime)
}

// setMTime sets the modification time (and the access time, which is not
// kept, to the same) of path itself, never following a link.
func setMTime(path string, mtime int64) error {
	ts := []unix.Timespec{unix.NsecToTimespec(mtime), unix.NsecToTimespec(mtime)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("restore: set mtime %s: %w", path, err)
	}
	return nil
}
