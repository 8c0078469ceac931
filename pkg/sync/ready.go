package sync

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	gosync "sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/internal/panics"
	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/exclude"
	"github.com/backupd/backupd/pkg/repo"
)

// A restore with RestoreOptions.ReadyBeforeComplete writes the "early"
// files with the tree, calls Ready, then writes the "late" ones: each to a
// temporary name in its directory (tmpPrefix, random, tmpSuffix), renamed
// into place once complete and verified, never over a file the workspace
// created meanwhile.

// DefaultReadyMaxFileSize is the size up to which every file is restored
// before Ready when RestoreOptions.ReadyMaxFileSize is 0.
const DefaultReadyMaxFileSize = 1 << 20

// MaxConflictPaths bounds RestoreResult.ConflictPaths.
const MaxConflictPaths = 100

const (
	tmpPrefix = ".backupd-restore-"
	tmpSuffix = ".tmp"
)

// readyPlan is the state of a restore with ReadyBeforeComplete.
type readyPlan struct {
	priority *exclude.Matcher // nil: no patterns
	lateGlob *exclude.Matcher // nil: no patterns
	recent   map[string]bool  // the snapshot's most recently modified files
	maxSize  uint64           // files up to this size are early
	late     []*restoreFile   // planned by the walk, written after Ready
	staged   []*stagedTree    // directories left by the walk for after Ready
	bytes    int64            // content of the late files
	dirs     map[*dirMeta]int // late files per directory, as the walk found them
	open     map[*dirMeta]*restoreDir

	mu            gosync.Mutex
	conflicts     int64
	conflictPaths []string
}

func newReadyPlan(snap *repo.Snapshot, opts *RestoreOptions) (*readyPlan, error) {
	p := &readyPlan{maxSize: DefaultReadyMaxFileSize, dirs: map[*dirMeta]int{}, open: map[*dirMeta]*restoreDir{}}
	if opts.ReadyMaxFileSize < 0 {
		return nil, fmt.Errorf("restore: ready max file size %d is negative", opts.ReadyMaxFileSize)
	}
	if opts.ReadyMaxFileSize > 0 {
		p.maxSize = uint64(opts.ReadyMaxFileSize)
	}
	if len(opts.Priority) > 0 {
		m, err := exclude.New("priority", opts.Priority)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if !m.Empty() {
			p.priority = m
		}
	}
	if len(opts.Late) > 0 {
		m, err := exclude.New("late", opts.Late)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if !m.Empty() {
			p.lateGlob = m
		}
	}
	if len(snap.Recent) > 0 {
		p.recent = make(map[string]bool, len(snap.Recent))
		for _, r := range snap.Recent {
			p.recent[r] = true
		}
	}
	return p, nil
}

// subdir sets the flags of sub, the directory rel in d: below a .git
// directory, or matched by a priority pattern (gitignore: everything below
// a matched directory is matched), or in a staged subtree.
func (p *readyPlan) subdir(d, sub *restoreDir, name, rel string) {
	sub.git = d.git || name == ".git"
	sub.prio = d.prio || p.priority.Excluded(rel, true)
	sub.staged = d.staged
}

// isLate reports whether the file n at rel in d is written after Ready:
// one a late pattern matches, unless a priority pattern does too, or one
// over the size threshold, unless a priority pattern matches it or it is
// recent; never a file below .git, one in a staged subtree (written with
// it) or one with other names (hard links: their links are made before
// Ready).
func (p *readyPlan) isLate(d *restoreDir, n *repo.Node, rel string) bool {
	if n.Nlink > 1 || d.git || d.prio || d.staged || p.priority.Excluded(rel, false) {
		return false
	}
	if p.lateGlob.Excluded(rel, false) {
		return true
	}
	return n.Size > p.maxSize && !p.recent[rel]
}

// addLate plans the late file n in d.
func (rs *restorer) addLate(d *restoreDir, n *repo.Node) error {
	rf, err := rs.planFile(d, n)
	if err != nil {
		return err
	}
	rf.ready = rs.ready
	rs.ready.late = append(rs.ready.late, rf)
	rs.ready.bytes += int64(n.Size)
	rs.ready.dirs[d.meta]++
	d.meta.late = true
	return nil
}

// conflict records that the workspace took the name of late file path.
func (p *readyPlan) conflict(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conflicts++
	if len(p.conflictPaths) < MaxConflictPaths {
		p.conflictPaths = append(p.conflictPaths, path)
	}
}

// writeLate writes the late files, batch by batch as the first pass does,
// each directory opened again below the target (and checked to be the one
// restore created) for as long as late files of it are being written. A
// directory no longer there, or replaced, is the workspace's doing: its
// late files are conflicts. The last late file of a directory sets its
// mtime (and, not as root, its mode) again.
func (rs *restorer) writeLate(ctx context.Context) error {
	p := rs.ready
	links, dirs := len(rs.links), len(rs.dirs) // the first pass's
	rs.batches = make(chan []*restoreFile, 1)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(panics.Safe(func() error { return rs.writeBatches(gctx) }))
	g.Go(panics.Safe(func() error {
		defer close(rs.batches)
		for _, rf := range p.late {
			m := rf.dir.meta
			d, err := p.openParent(rs, m) // nil: gone
			if err != nil {
				return err
			}
			left := p.dirs[m] - 1
			p.dirs[m] = left
			if d == nil {
				p.conflict(rf.path())
				continue
			}
			rf.dir = d
			if err := rs.enqueue(gctx, rf); err != nil {
				return err
			}
			if left == 0 {
				// The walk's reference: the directory's last file holds it now.
				if err := d.release(); err != nil {
					return err
				}
			}
		}
		if err := rs.walkStaged(gctx); err != nil {
			return err
		}
		return rs.flush(gctx)
	}))
	if err := g.Wait(); err != nil {
		return err
	}
	if len(p.staged) == 0 {
		return nil
	}
	// The staged subtrees' hard links and the directories that got them,
	// deepest first, as the first pass does; then each subtree goes into
	// place.
	for _, l := range rs.links[links:] {
		if err := rs.link(l); err != nil {
			return err
		}
	}
	for i := len(rs.dirs) - 1; i >= dirs; i-- {
		if !rs.dirs[i].done {
			if err := rs.finishDir(rs.dirs[i]); err != nil {
				return err
			}
		}
	}
	return rs.commitStaged()
}

// reopenLate opens the directory of m again for its late files; nil (no
// error) when it is no longer where restore made it.
func (rs *restorer) reopenLate(m *dirMeta) (*restoreDir, error) {
	fd, p, err := rs.reopen(m)
	if err != nil {
		if errors.Is(err, errMoved) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, dirfd.ErrLink) {
			return nil, nil
		}
		return nil, err
	}
	d := &restoreDir{openDir: openDir{fd: fd, path: p}, meta: m, rs: rs, lateDir: true}
	d.refs.Store(1)
	rs.opened = append(rs.opened, d)
	return d, nil
}

// releaseLate gives a directory whose late files are all written its
// mtime again (renames changed it) and, not as root, its mode (it was
// kept writable for them).
func (d *restoreDir) releaseLate() error {
	m := d.meta
	if !m.set {
		return nil
	}
	if !d.rs.chown && m.mode&0o700 != 0o700 {
		if err := unix.Fchmod(d.fd, m.mode&07777); err != nil {
			return fmt.Errorf("restore: chmod %s: %w", d.path, err)
		}
	}
	if err := futimens(d.fd, m.mtime); err != nil {
		return fmt.Errorf("restore: set mtime %s: %w", d.path, err)
	}
	return nil
}

// createTemp creates the temporary file of late file f in its directory,
// exclusively (never through a link or over anything).
func (f *restoreFile) createTemp() (int, error) {
	fd := -1
	name, err := createTempName(func(name string) (err error) {
		fd, err = dirfd.OpenAt(f.dir.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("restore: create a temporary file for %s: %w", f.path(), err)
	}
	f.tmp = name
	return fd, nil
}

// createTempName calls create with random temporary names (tmpPrefix,
// 16 hex digits, tmpSuffix) until one is not taken (EEXIST), at most 9
// times, and returns the name it made.
func createTempName(create func(name string) error) (string, error) {
	var b [8]byte
	for tries := 0; ; tries++ {
		rand.Read(b[:])
		name := tmpPrefix + hex.EncodeToString(b[:]) + tmpSuffix
		err := create(name)
		if err == unix.EEXIST && tries < 8 {
			continue
		}
		return name, err
	}
}

// renameNoReplace renames from to to in directory dir unless to exists
// (EEXIST); EINVAL or ENOSYS where the file system or kernel cannot.
// Tests replace it to take the fallbacks.
var renameNoReplace = func(dir int, from, to string) error {
	return unix.Renameat2(dir, from, dir, to, unix.RENAME_NOREPLACE)
}

// commitLate moves the written late file f from its temporary name to its
// own, unless the workspace has made an entry of that name meanwhile: then
// the workspace's entry stays, the temporary file goes, and the conflict is
// recorded. f.mu is held.
func (f *restoreFile) commitLate() error {
	if err := hookLateRename(f.path()); err != nil {
		return err
	}
	err := renameNoReplace(f.dir.fd, f.tmp, f.node.Name)
	if err == unix.EINVAL || err == unix.ENOSYS {
		// A file system without RENAME_NOREPLACE: a link fails the same
		// way over an existing name.
		if err = unix.Linkat(f.dir.fd, f.tmp, f.dir.fd, f.node.Name, 0); err == nil {
			f.removeTemp()
		}
	}
	switch {
	case err == unix.EEXIST:
		f.removeTemp()
		f.ready.conflict(f.path())
	case err == unix.ENOENT:
		// The workspace removed the directory or the temporary file.
		f.ready.conflict(f.path())
	case err != nil:
		return fmt.Errorf("restore: rename into place %s: %w", f.path(), err)
	}
	f.tmp = ""
	return nil
}

// workspaceTook reports whether err, of opening a late file's directory
// entry, means the workspace has removed or replaced what restore made.
func workspaceTook(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ELOOP) || errors.Is(err, errMoved) || errors.Is(err, dirfd.ErrLink)
}

// dropLate gives up late file f, whose directory or temporary file the
// workspace removed or replaced (a conflict, counted once): its remaining
// blobs are skipped. f.mu is held.
func (f *restoreFile) dropLate(prog *Progress) error {
	if !f.dropped {
		f.dropped = true
		f.ready.conflict(f.path())
		if f.tmp != "" {
			f.removeTemp()
		}
	}
	if f.remaining > 0 {
		f.remaining--
	}
	if f.remaining == 0 {
		prog.Files.Add(1)
		return f.dir.release()
	}
	return nil
}

// removeTemp removes f's temporary file if it is still the file restore
// created. f.mu is held, or the writers are done.
func (f *restoreFile) removeTemp() {
	var st unix.Stat_t
	if unix.Fstatat(f.dir.fd, f.tmp, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Dev == f.dev && st.Ino == f.ino {
		unix.Unlinkat(f.dir.fd, f.tmp, 0)
	}
	f.tmp = ""
}

// cleanupLate removes the temporary files of a failed or cancelled late
// pass (their directories are still open: an unfinished file holds its
// own).
func (p *readyPlan) cleanupLate() {
	for _, f := range p.late {
		f.mu.Lock()
		if f.tmp != "" {
			f.removeTemp()
		}
		f.mu.Unlock()
	}
	for _, s := range p.staged {
		s.remove() // best effort: the restore has failed already
	}
}

// testHookLateRename, when set by a test, runs just before a late file is
// renamed into place, with its display path; an error fails the restore
// there.
var testHookLateRename func(path string) error

func hookLateRename(path string) error {
	if testHookLateRename != nil {
		return testHookLateRename(path)
	}
	return nil
}
