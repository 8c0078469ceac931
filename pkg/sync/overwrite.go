package sync

import (
	"context"
	"fmt"
	"io"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/repo"
)

// Restoring over an existing directory (RestoreOptions.Overwrite).
//
// Nothing existing is ever written through: an entry in the way is either
// kept (a real directory where the snapshot has one, an unchanged regular
// file, the same symlink, a FIFO; each of the last three with one link) or
// removed, and a file whose content changed is replaced by a new file
// (created exclusively, never through a link) into which the blobs the old
// version still has are copied. Every entry is reached from its directory's descriptor, never
// through a link, and a kept entry is changed only through a descriptor of
// it that was checked to be the entry examined; a regular file with more
// than one link (which might be a file outside the target) is never kept,
// nor is a FIFO or symlink with more than one link (they can be hard-linked
// too, and their metadata is set when kept).

// clearFor makes way in d for node n. An existing entry that can serve is
// kept and its stat returned; anything else is removed (a directory with
// everything in it) and nil returned.
func (rs *restorer) clearFor(d *restoreDir, n *repo.Node) (*unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, n.Name, &st, unix.AT_SYMLINK_NOFOLLOW); err == unix.ENOENT {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("restore: stat %s: %w", d.join(n.Name), err)
	}
	keep := false
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		keep = n.Type == repo.TypeDir
	case unix.S_IFREG:
		keep = n.Type == repo.TypeFile
	case unix.S_IFIFO:
		keep = n.Type == repo.TypeFIFO && st.Nlink == 1
	case unix.S_IFLNK:
		if n.Type == repo.TypeSymlink && st.Nlink == 1 {
			keep = sameLink(d, n, &st)
		}
	}
	if keep {
		return &st, nil
	}
	if err := rs.remove(d, n.Name); err != nil {
		return nil, err
	}
	return nil, nil
}

// sameLink reports whether the symlink of d that st describes (one name)
// points where n does. It reads the target through a descriptor of that
// very link (O_PATH), checked to be it, never by name: a link swapped in
// meanwhile (a second name of a link outside) is not even read.
func sameLink(d *restoreDir, n *repo.Node, st *unix.Stat_t) bool {
	fd, err := dirfd.OpenAt(d.fd, n.Name, unix.O_PATH, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	var now unix.Stat_t
	if unix.Fstat(fd, &now) != nil || !dirfd.SameFile(&now, st) || now.Nlink != 1 {
		return false
	}
	target, err := readlinkat(fd, "")
	return err == nil && target == n.Target
}

// remove removes the entry name of d, a directory with everything in it.
func (rs *restorer) remove(d *restoreDir, name string) error {
	if err := dirfd.RemoveAll(d.fd, d.path, name, repo.MaxTreeDepth); err != nil {
		return fmt.Errorf("restore: replace: %w", err)
	}
	return nil
}

// deleteExtra removes the entries of d that tree t does not have.
func (rs *restorer) deleteExtra(d *restoreDir, t *repo.Tree) error {
	names, err := dirfd.ReadNames(d.fd)
	if err != nil {
		return fmt.Errorf("restore: read %s: %w", d.path, err)
	}
	for _, name := range names {
		i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= name })
		if i < len(t.Nodes) && t.Nodes[i].Name == name {
			continue
		}
		if err := rs.remove(d, name); err != nil {
			return err
		}
		rs.res.Deleted++
	}
	return nil
}

// addExistingFile restores file node n in d, where a regular file (old)
// is: kept if it matches, else replaced, reusing what blobs it holds. It is
// kept only if the file opened is the one examined, has one link, and is
// regular; otherwise it is replaced like any entry in the way.
func (rs *restorer) addExistingFile(ctx context.Context, d *restoreDir, n *repo.Node, old *unix.Stat_t) (*restoreFile, error) {
	fd, st, err := openRegular(d.fd, n.Name, openFlags(false))
	if err != nil || st.Nlink != 1 || !dirfd.SameFile(&st, old) {
		if err == nil {
			unix.Close(fd)
		}
		if err := rs.remove(d, n.Name); err != nil {
			return nil, err
		}
		return rs.addFile(ctx, d, n)
	}
	defer unix.Close(fd)
	rf, err := rs.planFile(d, n)
	if err != nil {
		return nil, err
	}
	if !rs.opts.Verify && st.Size == int64(n.Size) && st.Mtim.Nano() == n.MTime {
		return rf, rs.keepFile(rf, fd, &st)
	}
	local, same, err := rs.scanExisting(rf, fd)
	if err != nil {
		return nil, err
	}
	if same {
		return rf, rs.keepFile(rf, fd, &st)
	}
	if err := rs.replaceFile(rf, fd, local); err != nil {
		return nil, err
	}
	return rf, rs.enqueue(ctx, rf)
}

// keepFile leaves an existing file's content alone and brings its
// metadata in line with the snapshot, through its descriptor fd.
func (rs *restorer) keepFile(rf *restoreFile, fd int, old *unix.Stat_t) error {
	n := rf.node
	rf.dev, rf.ino, rf.created = old.Dev, old.Ino, true
	rs.res.Unchanged++
	rs.opts.Progress.Files.Add(1)
	rs.opts.Progress.Bytes.Add(int64(n.Size))
	uid, gid := rs.opts.UIDMap.ToHost(n.UID), rs.opts.GIDMap.ToHost(n.GID)
	chowned := rs.chown && (old.Uid != uid || old.Gid != gid)
	if chowned {
		if err := unix.Fchown(fd, int(uid), int(gid)); err != nil {
			return fmt.Errorf("restore: chown %s: %w", rf.path(), err)
		}
	}
	if err := rs.xattrs(fd, "", rf.path(), n.Xattrs); err != nil {
		return err
	}
	// After chown, which clears setuid and setgid.
	if chowned || old.Mode&07777 != n.Mode&07777 {
		if err := unix.Fchmod(fd, n.Mode&07777); err != nil {
			return fmt.Errorf("restore: chmod %s: %w", rf.path(), err)
		}
	}
	if old.Mtim.Nano() != n.MTime {
		if err := futimens(fd, n.MTime); err != nil {
			return fmt.Errorf("restore: set mtime %s: %w", rf.path(), err)
		}
	}
	return nil
}

// scanExisting reads the existing file open as fd through the repository's
// chunker. It returns where in it each of the node's blobs starts (for
// those it holds) and whether it holds exactly the node's content.
func (rs *restorer) scanExisting(rf *restoreFile, fd int) (local map[chunk.ID]int64, same bool, err error) {
	want := make(map[chunk.ID]bool, len(rf.node.Content))
	for _, id := range rf.node.Content {
		want[id] = true
	}
	if rs.scanner == nil {
		rs.scanner = chunk.NewChunker(rs.r.ChunkParams())
		rs.scanBuf = make([]byte, rs.r.ChunkParams().MaxSize)
	}
	rs.scanner.Reset(&preader{fd: fd})
	local = map[chunk.ID]int64{}
	same = true
	var off int64
	for i := 0; ; i++ {
		data, err := rs.scanner.Next(rs.scanBuf)
		if err == io.EOF {
			return local, same && i == len(rf.node.Content), nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("restore: read existing %s: %w", rf.path(), err)
		}
		id := chunk.Hash(data)
		same = same && i < len(rf.node.Content) && rf.node.Content[i] == id
		if _, seen := local[id]; want[id] && !seen {
			local[id] = off
		}
		off += int64(len(data))
	}
}

// preader reads an open file from its start with pread, leaving its
// offset alone.
type preader struct {
	fd  int
	off int64
}

func (r *preader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Pread(r.fd, p, r.off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		r.off += int64(n)
		return n, nil
	}
}

// replaceFile replaces the existing file (open as old) with a new one
// holding the blobs found in the old (local), and leaves rf to fetch the
// rest. Every copied blob is hashed again: the old file may have changed
// since it was scanned.
func (rs *restorer) replaceFile(rf *restoreFile, old int, local map[chunk.ID]int64) error {
	d, name := rf.dir, rf.node.Name
	// The open descriptor keeps the old content readable.
	if err := unix.Unlinkat(d.fd, name, 0); err != nil {
		return fmt.Errorf("restore: replace %s: %w", rf.path(), err)
	}
	if len(local) == 0 {
		return nil
	}
	fd, err := rf.open(false)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	n := rf.node
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
					return fmt.Errorf("restore: write %s: %w", rf.path(), err)
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
