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
}

// RestoreResult is what a finished restore reports.
type RestoreResult struct {
	Files, Dirs, Symlinks int64
	Bytes                 int64
	// PackBytes is how much pack data was read from storage.
	PackBytes int64
}

// Limits of one restore batch: files are written batch by batch so that
// the plan held in memory stays bounded whatever the snapshot's size.
const (
	batchMaxFiles = 8192
	batchMaxBlobs = 32768
)

type restoreFile struct {
	path    string
	node    *repo.Node
	offsets []int64 // file offset of each content blob
}

type blobUse struct {
	file   *restoreFile
	offset int64
}

type dirMeta struct {
	path  string
	mode  uint32
	mtime int64
}

type restorer struct {
	r      *repo.Repository
	opts   RestoreOptions
	target string
	res    RestoreResult
	dirs   []dirMeta

	batch      []*restoreFile
	batchBlobs int
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
	opts.Progress.TotalFiles.Store(snap.Stats.Files)
	opts.Progress.TotalBytes.Store(snap.Stats.Bytes)
	abs, err := filepath.Abs(target)
	if err != nil {
		return nil, err
	}
	if err := prepareTarget(abs); err != nil {
		return nil, err
	}
	rs := &restorer{r: r, opts: opts, target: abs}
	if err := rs.restoreTree(ctx, snap.Tree, abs); err != nil {
		return nil, err
	}
	if err := rs.flush(ctx); err != nil {
		return nil, err
	}
	// Directories last, deepest first, so that setting a directory's mtime
	// or a read-only mode comes after everything inside it is written.
	rs.dirs = append(rs.dirs, dirMeta{path: abs, mode: snap.RootMode, mtime: snap.RootMTime})
	for i := len(rs.dirs) - 1; i >= 0; i-- {
		d := rs.dirs[i]
		if d.mode == 0 && d.mtime == 0 {
			continue
		}
		if err := setMeta(d.path, d.mode, d.mtime); err != nil {
			return nil, err
		}
	}
	return &rs.res, nil
}

func prepareTarget(dir string) error {
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
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("restore target: %w", err)
	}
	defer f.Close()
	if names, _ := f.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("restore target %s is not empty", dir)
	}
	return nil
}

func (rs *restorer) restoreTree(ctx context.Context, id chunk.ID, dir string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, err := rs.r.LoadTree(ctx, id)
	if err != nil {
		return err
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
		switch n.Type {
		case repo.TypeDir:
			if err := os.Mkdir(p, 0o700); err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			rs.dirs = append(rs.dirs, dirMeta{path: p, mode: n.Mode, mtime: n.MTime})
			rs.res.Dirs++
			rs.opts.Progress.Dirs.Add(1)
			if err := rs.restoreTree(ctx, n.Subtree, p); err != nil {
				return err
			}
		case repo.TypeSymlink:
			if err := os.Symlink(n.Target, p); err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			ts := []unix.Timespec{unix.NsecToTimespec(n.MTime), unix.NsecToTimespec(n.MTime)}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("restore: set symlink time %s: %w", p, err)
			}
			rs.res.Symlinks++
		case repo.TypeFile:
			if err := rs.addFile(ctx, p, n); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: entry %q has unknown type %d", repo.ErrCorrupt, n.Name, n.Type)
		}
	}
	return nil
}

func (rs *restorer) addFile(ctx context.Context, p string, n *repo.Node) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	rf := &restoreFile{path: p, node: n, offsets: make([]int64, len(n.Content))}
	var off int64
	for i, id := range n.Content {
		loc, ok := rs.r.Index().Lookup(id)
		if !ok || loc.Type != repo.DataBlob {
			f.Close()
			return fmt.Errorf("restore %s: %w: data blob %s is not in the index", p, repo.ErrCorrupt, id.Short())
		}
		rf.offsets[i] = off
		off += int64(loc.RawLen)
	}
	if off != int64(n.Size) {
		f.Close()
		return fmt.Errorf("restore %s: %w: content adds up to %d bytes, tree says %d", p, repo.ErrCorrupt, off, n.Size)
	}
	if off > 0 {
		// Size the file up front: blobs arrive in pack order, not file order.
		if err := f.Truncate(off); err != nil {
			f.Close()
			return fmt.Errorf("restore: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	rs.res.Files++
	rs.res.Bytes += off
	if len(n.Content) == 0 {
		rs.opts.Progress.Files.Add(1)
		return setMeta(p, n.Mode, n.MTime)
	}
	rs.batch = append(rs.batch, rf)
	rs.batchBlobs += len(n.Content)
	if len(rs.batch) >= batchMaxFiles || rs.batchBlobs >= batchMaxBlobs {
		return rs.flush(ctx)
	}
	return nil
}

type packPlan struct {
	pack  chunk.ID
	blobs []repo.Location // sorted by offset, unique
	uses  map[chunk.ID][]blobUse
}

// flush writes the content of every file in the current batch, fetching
// each pack it needs once, in parallel.
func (rs *restorer) flush(ctx context.Context) error {
	if len(rs.batch) == 0 {
		return nil
	}
	plans := map[chunk.ID]*packPlan{}
	for _, f := range rs.batch {
		for i, id := range f.node.Content {
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
	ordered := make([]*packPlan, 0, len(plans))
	for _, pl := range plans {
		sort.Slice(pl.blobs, func(i, j int) bool { return pl.blobs[i].Offset < pl.blobs[j].Offset })
		ordered = append(ordered, pl)
	}
	sort.Slice(ordered, func(i, j int) bool { return string(ordered[i].pack[:]) < string(ordered[j].pack[:]) })

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(rs.opts.Downloads)
	read := make([]int64, len(ordered))
	for i, pl := range ordered {
		g.Go(func() error {
			n, err := rs.restorePack(gctx, pl)
			read[i] = n
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, n := range read {
		rs.res.PackBytes += n
	}
	for _, f := range rs.batch {
		if err := setMeta(f.path, f.node.Mode, f.node.MTime); err != nil {
			return err
		}
		rs.opts.Progress.Files.Add(1)
	}
	rs.batch, rs.batchBlobs = rs.batch[:0], 0
	return nil
}

// restorePack reads the span of one pack that holds the wanted blobs in a
// single ranged read, verifies each blob and writes it wherever it is used.
func (rs *restorer) restorePack(ctx context.Context, pl *packPlan) (int64, error) {
	key := repo.PackKey(pl.pack)
	first := int64(pl.blobs[0].Offset)
	last := pl.blobs[len(pl.blobs)-1]
	end := int64(last.Offset) + int64(last.StoredLen)
	rc, err := rs.r.Storage().Get(ctx, key, first, end-first)
	if err != nil {
		return 0, fmt.Errorf("read pack %s: %w", key, err)
	}
	defer rc.Close()
	pos := first
	var stored, raw []byte
	for _, loc := range pl.blobs {
		if gap := int64(loc.Offset) - pos; gap > 0 {
			if _, err := io.CopyN(io.Discard, rc, gap); err != nil {
				return 0, fmt.Errorf("read pack %s: %w", key, err)
			}
		}
		if cap(stored) < int(loc.StoredLen) {
			stored = make([]byte, loc.StoredLen)
		}
		stored = stored[:loc.StoredLen]
		if _, err := io.ReadFull(rc, stored); err != nil {
			return 0, fmt.Errorf("read pack %s: %w", key, err)
		}
		pos = int64(loc.Offset) + int64(loc.StoredLen)
		raw, err = rs.r.DecodeBlob(key, loc.BlobEntry, stored, raw[:0])
		if err != nil {
			return 0, err
		}
		for _, u := range pl.uses[loc.ID] {
			if err := writeAt(u.file.path, raw, u.offset); err != nil {
				return 0, err
			}
		}
		rs.opts.Progress.Bytes.Add(int64(len(raw)) * int64(len(pl.uses[loc.ID])))
	}
	return end - first, nil
}

func writeAt(path string, data []byte, off int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return fmt.Errorf("restore: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

// setMeta sets permission bits and mtime of a file or directory restore
// created (never a symlink: chmod would follow it).
func setMeta(path string, mode uint32, mtime int64) error {
	if err := unix.Fchmodat(unix.AT_FDCWD, path, mode&07777, 0); err != nil {
		return fmt.Errorf("restore: chmod %s: %w", path, err)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(mtime), unix.NsecToTimespec(mtime)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("restore: set mtime %s: %w", path, err)
	}
	return nil
}
