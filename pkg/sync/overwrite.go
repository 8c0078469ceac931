package sync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
)

// Restoring over an existing directory (RestoreOptions.Overwrite).
//
// Nothing existing is ever written through: an entry in the way is either
// kept (a real directory where the snapshot has one, an unchanged regular
// file, the same symlink, a FIFO) or removed, and a file whose content
// changed is replaced by a new file (created exclusively, never through a
// link) into which the blobs the old version still has are copied. A hard
// link from the target to a file outside it therefore never carries a
// write out of the target.

// clearFor makes way at p for node n. An existing entry that can serve is
// kept and its stat returned; anything else is removed (a directory with
// everything in it) and nil returned.
func (rs *restorer) clearFor(p string, n *repo.Node) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); errors.Is(err, unix.ENOENT) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("restore: %w", &fs.PathError{Op: "lstat", Path: p, Err: err})
	}
	keep := false
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		keep = n.Type == repo.TypeDir
	case unix.S_IFREG:
		keep = n.Type == repo.TypeFile
	case unix.S_IFIFO:
		keep = n.Type == repo.TypeFIFO
	case unix.S_IFLNK:
		if n.Type == repo.TypeSymlink {
			target, err := os.Readlink(p)
			keep = err == nil && target == n.Target
		}
	}
	if keep {
		return &st, nil
	}
	if err := os.RemoveAll(p); err != nil {
		return nil, fmt.Errorf("restore: replace %s: %w", p, err)
	}
	return nil, nil
}

// makeWritable lets a non-root restore create entries in an existing
// directory it owns but may not write; the directory gets its recorded
// mode at the end like every other.
func (rs *restorer) makeWritable(p string, st *unix.Stat_t) error {
	if rs.chown || st.Mode&0o700 == 0o700 {
		return nil
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, p, st.Mode&07777|0o700, 0); err != nil {
		return fmt.Errorf("restore: chmod %s: %w", p, err)
	}
	return nil
}

// deleteExtra removes the entries of dir that tree t does not have.
func (rs *restorer) deleteExtra(dir string, t *repo.Tree) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("restore: read %s: %w", dir, err)
	}
	for _, name := range names {
		i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
		if i < len(t.Nodes) && t.Nodes[i].Name == name {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("restore: delete: %w", err)
		}
		rs.res.Deleted++
	}
	return nil
}

// clearForLink makes way at p for a hard link to first; done reports that
// p already is one.
func (rs *restorer) clearForLink(first, p string) (done bool, err error) {
	var a, b unix.Stat_t
	if err := unix.Lstat(p, &b); errors.Is(err, unix.ENOENT) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("restore: %w", &fs.PathError{Op: "lstat", Path: p, Err: err})
	}
	if unix.Lstat(first, &a) == nil && a.Dev == b.Dev && a.Ino == b.Ino {
		return true, nil
	}
	if err := os.RemoveAll(p); err != nil {
		return false, fmt.Errorf("restore: replace %s: %w", p, err)
	}
	return false, nil
}

// addExistingFile restores file node n at p, where a regular file (old)
// is: kept if it matches, else replaced, reusing what blobs it holds.
func (rs *restorer) addExistingFile(ctx context.Context, p string, n *repo.Node, old *unix.Stat_t) error {
	rf, err := rs.planFile(p, n)
	if err != nil {
		return err
	}
	if !rs.opts.Verify && old.Size == int64(n.Size) && old.Mtim.Nano() == n.MTime {
		return rs.keepFile(rf, old)
	}
	local, same, err := rs.scanExisting(rf)
	if err != nil {
		return err
	}
	if same {
		return rs.keepFile(rf, old)
	}
	if err := rs.replaceFile(rf, local); err != nil {
		return err
	}
	return rs.enqueue(ctx, rf)
}

// keepFile leaves an existing file's content alone and brings its
// metadata in line with the snapshot.
func (rs *restorer) keepFile(rf *restoreFile, old *unix.Stat_t) error {
	n := rf.node
	rs.res.Unchanged++
	rs.opts.Progress.Files.Add(1)
	rs.opts.Progress.Bytes.Add(int64(n.Size))
	uid, gid := rs.opts.UIDMap.ToHost(n.UID), rs.opts.GIDMap.ToHost(n.GID)
	chowned := rs.chown && (old.Uid != uid || old.Gid != gid)
	if chowned || len(n.Xattrs) > 0 {
		if err := rs.ownAndXattrs(rf.path, n.UID, n.GID, n.Xattrs); err != nil {
			return err
		}
	}
	// After chown, which clears setuid and setgid.
	if chowned || old.Mode&07777 != n.Mode&07777 {
		if err := unix.Fchmodat(unix.AT_FDCWD, rf.path, n.Mode&07777, 0); err != nil {
			return fmt.Errorf("restore: chmod %s: %w", rf.path, err)
		}
	}
	if old.Mtim.Nano() != n.MTime {
		return setMTime(rf.path, n.MTime)
	}
	return nil
}

// scanExisting reads the existing file at rf.path through the repository's
// chunker. It returns where in it each of the node's blobs starts (for
// those it holds) and whether it holds exactly the node's content.
func (rs *restorer) scanExisting(rf *restoreFile) (local map[chunk.ID]int64, same bool, err error) {
	f, err := os.OpenFile(rf.path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, false, fmt.Errorf("restore: read existing: %w", err)
	}
	defer f.Close()
	want := make(map[chunk.ID]bool, len(rf.node.Content))
	for _, id := range rf.node.Content {
		want[id] = true
	}
	if rs.scanner == nil {
		rs.scanner = chunk.NewChunker(rs.r.ChunkParams())
		rs.scanBuf = make([]byte, rs.r.ChunkParams().MaxSize)
	}
	rs.scanner.Reset(f)
	local = map[chunk.ID]int64{}
	same = true
	var off int64
	for i := 0; ; i++ {
		data, err := rs.scanner.Next(rs.scanBuf)
		if err == io.EOF {
			return local, same && i == len(rf.node.Content), nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("restore: read existing %s: %w", rf.path, err)
		}
		id := chunk.Hash(data)
		same = same && i < len(rf.node.Content) && rf.node.Content[i] == id
		if _, seen := local[id]; want[id] && !seen {
			local[id] = off
		}
		off += int64(len(data))
	}
}

// replaceFile replaces the existing file at rf.path with a new one holding
// the blobs found in the old (local), and leaves rf to fetch the rest.
// Every copied blob is hashed again: the old file may have changed since
// it was scanned.
func (rs *restorer) replaceFile(rf *restoreFile, local map[chunk.ID]int64) error {
	if len(local) == 0 {
		if err := os.Remove(rf.path); err != nil {
			return fmt.Errorf("restore: replace: %w", err)
		}
		return nil
	}
	old, err := unix.Open(rf.path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("restore: open %s: %w", rf.path, err)
	}
	defer unix.Close(old)
	// The open descriptor keeps the old content readable.
	if err := unix.Unlink(rf.path); err != nil {
		return fmt.Errorf("restore: replace %s: %w", rf.path, err)
	}
	fd, err := unix.Open(rf.path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("restore: open %s: %w", rf.path, err)
	}
	defer unix.Close(fd)
	n := rf.node
	if err := unix.Ftruncate(fd, int64(n.Size)); err != nil {
		return fmt.Errorf("restore: size %s: %w", rf.path, err)
	}
	rf.created = true
	rf.want = []int{}
	for i, id := range n.Content {
		from, ok := local[id]
		size := int64(n.Size) - rf.offsets[i]
		if i+1 < len(n.Content) {
			size = rf.offsets[i+1] - rf.offsets[i]
		}
		if ok {
			buf := rs.scanBuf[:size]
			k, err := unix.Pread(old, buf, from)
			ok = err == nil && int64(k) == size && chunk.Hash(buf) == id
			if ok && !allZero(buf) {
				if err := pwriteAll(fd, buf, rf.offsets[i]); err != nil {
					return fmt.Errorf("restore: write %s: %w", rf.path, err)
				}
			}
		}
		if ok {
			rs.res.ReusedBytes += size
			rs.opts.Progress.Bytes.Add(size)
		} else {
			rf.want = append(rf.want, i)
		}
	}
	rf.remaining = len(rf.want)
	return nil
}

// pwriteAll writes all of data at off.
func pwriteAll(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		n, err := unix.Pwrite(fd, data, off)
		if err != nil {
			return err
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}
