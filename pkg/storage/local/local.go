// Package local is a storage.Storage in a directory of the local file
// system. The object at key "a/b/c" is the file <dir>/a/b/c.
//
// Put writes a temporary file next to its target (named ".tmp-" plus a
// random suffix), fsyncs it, renames it over the target and fsyncs the
// directory, so an object is either absent, its previous content or its new
// content, also after a crash. PutIfAbsent writes the temporary file the
// same way but links it to the target (link(2) fails if the target
// exists, so exactly one of racing writers wins) and then removes it; it
// needs a file system with hard links, and fails, never falls back to a
// rename, on one without. Its size is not limited.
//
// List skips temporary files; a crash or kill can leave one behind, which
// wastes space but is never seen as an object. Because of that, keys whose
// last component starts with ".tmp-" are refused by every method with
// storage.ErrInvalidKey. A writer holds an exclusive flock(2) on its
// temporary file from right after creating it until the file is renamed,
// linked or removed; the kernel drops the lock when the process dies, even
// by SIGKILL. CleanUploads removes a temporary file only if it can take
// that lock, so it never removes the file of a live writer, in this
// process or another (on NFS, flock is emulated with byte-range locks,
// which also work between clients). Writers older than this scheme took no
// lock: give CleanUploads a before older than any such writer may run.
//
// An object's Version is its file's inode number, modification time (in
// nanoseconds) and size. Every write puts a new file in place, whose
// modification time it sets from its own nanosecond clock (the kernel's
// timestamps are coarser), so a Version changes with every replacement,
// also by identical bytes. It cannot repeat within a key's life in
// practice: a later file of the key can have an earlier one's inode
// number only once that file is gone (ext4 and xfs reuse numbers, tmpfs
// and btrfs count up), and would then also need the same size and a
// modification time equal to the nanosecond. On a file system that keeps
// coarser times (FAT, ext3, some NFS servers: a second or two), two
// replacements within one tick, the later reusing the earlier's inode,
// could share a Version: keep a repository that several writers update
// on one with nanosecond times (ext4, xfs, btrfs, tmpfs, zfs).
//
// PutIfMatch compares and renames under an exclusive flock(2) of the lock
// file .backupd-lock at the storage's root (created on first use; the key
// ".backupd-lock" is refused, and List does not show it); Put and Delete
// take the same lock shared around their rename or unlink, so they never
// interleave with a PutIfMatch, and do not wait for each other.
// PutIfAbsent needs no lock: link(2) creates only a free name. Readers
// never lock. The lock works across processes on one host, and dies with
// its holder; do not remove the file while writers run. It is the root's:
// processes that open one repository at different roots (one at a
// subdirectory of the other's) do not exclude each other. Before the
// locked comparison PutIfMatch compares once without the lock, so that a
// stale version fails before the body is written. On NFS, flock is
// emulated with byte-range locks, which hold between clients, if the
// mount locks at all (not with nolock, local_lock=flock or
// local_lock=all); PutIfMatch opens the object to compare, so that the
// client revalidates its name and attributes (close-to-open consistency:
// not with nocto), and the server's times decide how fine Versions are
// (see above). Stat and List on NFS may give a cached, older Version,
// which makes a PutIfMatch fail, never succeed wrongly.
//
// A file system cannot hold both a file "a" and a file "a/b", so unlike an
// object store this backend cannot store an object at a key that is a
// directory prefix of another object's key, or the reverse; such a Put
// fails.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/storage"
)

const (
	// tempPrefix starts the name of every temporary file Put writes.
	tempPrefix = ".tmp-"
	// lockName is the lock file at the root (see the package comment).
	lockName = ".backupd-lock"
	// pieceSize is how much Put copies between two checks of its context.
	pieceSize = 1 << 20
	dirMode   = 0o700
)

// Storage is a storage.Storage in a local directory. It is safe for
// concurrent use, also by several processes sharing the directory.
type Storage struct {
	root string // absolute and clean
	// lockWait, if set, is called when a writer finds the lock taken and
	// begins to wait for it (tests synchronise on it).
	lockWait func()
}

var _ storage.Storage = (*Storage)(nil)

// New opens the directory dir as a storage, creating it (mode 0700) if it
// is missing.
func New(dir string) (*Storage, error) {
	return Open(Config{Dir: dir})
}

// Open opens the storage that cfg describes, creating its directory (mode
// 0700) if it is missing and cfg.MustExist is not set.
func Open(cfg Config) (*Storage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("local: open %s: %w", cfg.Dir, err)
	}
	fi, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		if cfg.MustExist {
			return nil, &missingDirError{root}
		}
		if err := os.MkdirAll(root, dirMode); err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) && pe.Path != root {
				err = fmt.Errorf("%s: %w", pe.Path, pe.Err) // a parent is in the way
			} else if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("local: open %s: %w", root, err)
		}
		fi, err = os.Stat(root)
	}
	if err != nil {
		return nil, fmt.Errorf("local: open %s: %w", root, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("local: open %s: not a directory", root)
	}
	return &Storage{root: root}, nil
}

// missingDirError is the directory of a storage opened with MustExist
// that does not exist; it is storage.ErrNoBucket.
type missingDirError struct{ dir string }

func (e *missingDirError) Error() string { return "local: directory " + e.dir + " does not exist" }

// Is makes the error storage.ErrNoBucket and fs.ErrNotExist.
func (e *missingDirError) Is(target error) bool {
	return target == storage.ErrNoBucket || target == fs.ErrNotExist
}

// Dir returns the absolute path of the storage's directory.
func (s *Storage) Dir() string { return s.root }

// filePath returns the file that holds key, which must be valid.
func (s *Storage) filePath(key string) string {
	return filepath.Join(s.root, filepath.FromSlash(key))
}

// Put atomically stores size bytes read from body under key: it writes and
// fsyncs a temporary file, renames it over the target and fsyncs the
// directory. On failure or cancellation the temporary file is removed and
// the key keeps its previous content, if any.
func (s *Storage) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("local: put: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("local: put %s: negative size %d", key, size)
	}
	if _, err := s.put(ctx, key, body, size, replace, ""); err != nil {
		return fmt.Errorf("local: put %s: %w", key, mapPutErr(err))
	}
	return nil
}

// PutIfAbsent stores size bytes read from body under key if no object is
// there, else fails with storage.ErrExists: it writes and fsyncs a
// temporary file, links it to the target, removes it and fsyncs the
// directory. On failure or cancellation the temporary file is removed and
// nothing is stored.
func (s *Storage) PutIfAbsent(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("local: put-if-absent: %w", err)
	}
	if size < 0 {
		return fmt.Errorf("local: put-if-absent %s: negative size %d", key, size)
	}
	if _, err := s.put(ctx, key, body, size, create, ""); err != nil {
		return fmt.Errorf("local: put-if-absent %s: %w", key, mapPutErr(err))
	}
	return nil
}

// PutIfMatch stores size bytes read from body under key if the object
// there has the version given, and returns the new version: it compares
// once without the lock (a stale version fails before the body is
// written), writes and fsyncs a temporary file, then, holding the
// storage's lock exclusively, compares again and renames the file over the
// target; last it fsyncs the directory. On failure or cancellation the
// temporary file is removed and the object stays as it was.
func (s *Storage) PutIfMatch(ctx context.Context, key string, body io.ReadSeeker, size int64, version string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", fmt.Errorf("local: put-if-match: %w", err)
	}
	if size < 0 {
		return "", fmt.Errorf("local: put-if-match %s: negative size %d", key, size)
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("local: put-if-match %s: %w", key, err)
	}
	if err := checkVersion(s.filePath(key), version); err != nil {
		return "", fmt.Errorf("local: put-if-match %s: %w", key, err)
	}
	v, err := s.put(ctx, key, body, size, replaceIfMatch, version)
	if err != nil {
		return "", fmt.Errorf("local: put-if-match %s: %w", key, mapPutErr(err))
	}
	return v, nil
}

// putMode says how put commits its temporary file.
type putMode int

const (
	replace        putMode = iota // rename over the target
	create                        // link to the target, which must be free
	replaceIfMatch                // rename over the target if it has a version
)

// put writes the object through a locked temporary file, which it then
// commits as mode says, and returns the version of what it stored.
func (s *Storage) put(ctx context.Context, key string, body io.ReadSeeker, size int64, mode putMode, version string) (_ string, err error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	target := s.filePath(key)
	dir := filepath.Dir(target)
	if err := s.mkdirs(dir); err != nil {
		return "", err
	}
	f, err := createLocked(dir)
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	committed := false
	defer func() {
		if !committed {
			// Removed before the lock goes with the close, so that no
			// cleaner sees an unlocked file of a live writer.
			_ = os.Remove(tmp)
			_ = f.Close() // the write failed anyway
		}
	}()

	for written := int64(0); written < size; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		n, err := io.CopyN(f, body, min(size-written, pieceSize))
		written += n
		if errors.Is(err, io.EOF) {
			return "", fmt.Errorf("body ended after %d of %d bytes: %w", written, size, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return "", err
		}
	}
	// The writer's nanosecond clock, not the kernel's coarser one, so that
	// the file's version is new (see the package comment).
	if err := setModTime(tmp, time.Now()); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	switch mode {
	case create:
		if err := os.Link(tmp, target); err != nil {
			return "", linkErr(err, target)
		}
		committed = true
		// The object is in place. The temporary name is only a second
		// link to it now; should removing it fail, it is garbage that
		// CleanUploads can remove.
		_ = os.Remove(tmp)
	default:
		how := unix.LOCK_SH
		if mode == replaceIfMatch {
			how = unix.LOCK_EX
		}
		unlock, err := s.lock(ctx, how)
		if err != nil {
			return "", err
		}
		if mode == replaceIfMatch {
			err = checkVersion(target, version)
		}
		if err == nil {
			err = os.Rename(tmp, target)
		}
		unlock()
		if err != nil {
			return "", err
		}
		committed = true
	}
	cerr := f.Close() // releases the lock; the data is synced already
	// Make the new directory entry (and the removal) durable.
	if err := syncDir(dir); err != nil {
		return "", err
	}
	return fileVersion(fi), cerr
}

// setModTime sets the modification time of the file p, which is not a
// symbolic link.
func setModTime(p string, t time.Time) error {
	ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(t.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimensat", Path: p, Err: err}
	}
	return nil
}

// fileVersion returns the Version of the object file that fi describes:
// its inode number, modification time in nanoseconds and size.
func fileVersion(fi fs.FileInfo) string {
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = uint64(st.Ino)
	}
	return version(ino, fi.ModTime(), fi.Size())
}

func version(ino uint64, mtime time.Time, size int64) string {
	b := strconv.AppendUint(make([]byte, 0, 40), ino, 16)
	b = append(b, '.')
	b = strconv.AppendInt(b, mtime.UnixNano(), 16)
	b = append(b, '.')
	b = strconv.AppendInt(b, size, 16)
	return string(b)
}

// info describes the object file of key that fi describes.
func info(key string, fi fs.FileInfo) storage.ObjectInfo {
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime(), Version: fileVersion(fi)}
}

// statInfo describes the object file of key that st describes, as info
// does for its fs.FileInfo.
func statInfo(key string, st *unix.Stat_t) storage.ObjectInfo {
	mtime := time.Unix(st.Mtim.Unix())
	return storage.ObjectInfo{Key: key, Size: st.Size, ModTime: mtime, Version: version(uint64(st.Ino), mtime, st.Size)}
}

// checkVersion compares the version of the object file p with version:
// nil if it has it, else an error wrapping storage.ErrVersionMismatch,
// and storage.ErrNotFound too if there is no object. It opens the file
// (never blocking, should it be a FIFO), so that an NFS client revalidates
// the name and the attributes instead of trusting its cache.
func checkVersion(p, version string) error {
	if version == "" {
		return fmt.Errorf("%w: an empty version matches no object", storage.ErrVersionMismatch)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if isNotExist(err) {
		return fmt.Errorf("%w: %w", storage.ErrVersionMismatch, storage.ErrNotFound)
	}
	if err != nil {
		return mapPermErr(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %w", storage.ErrVersionMismatch, storage.ErrNotFound)
	}
	if v := fileVersion(fi); v != version {
		return fmt.Errorf("%w: the object is at version %s, not %q", storage.ErrVersionMismatch, v, version)
	}
	return nil
}

// lock takes the storage's lock (see the package comment): shared
// (unix.LOCK_SH) around a rename or unlink that replaces or removes an
// object, exclusive (unix.LOCK_EX) around PutIfMatch's comparison and
// rename. It waits as long as ctx allows; the function it returns
// releases the lock.
func (s *Storage) lock(ctx context.Context, how int) (func(), error) {
	p := filepath.Join(s.root, lockName)
	f, err := os.OpenFile(p, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// Never creates the root: O_CREAT fails if it has gone.
		f, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("open the lock file: %w", err)
	}
	release := func() { _ = f.Close() } // which drops the lock
	err = flock(f, how|unix.LOCK_NB)
	if err == nil {
		return release, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	// Held by another writer (for as long as a rename takes): wait, in a
	// goroutine that ctx can give up on.
	if s.lockWait != nil {
		s.lockWait()
	}
	locked := make(chan error, 1)
	go func() { locked <- flock(f, how) }()
	select {
	case err := <-locked:
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		return release, nil
	case <-ctx.Done():
		go func() {
			<-locked
			_ = f.Close() // the lock, if it came, goes with it
		}()
		return nil, ctx.Err()
	}
}

// linkErr explains why linking the temporary file to target failed: an
// object there is storage.ErrExists; anything else in the way (a
// directory, a dangling link) is not an object but blocks the key.
func linkErr(err error, target string) error {
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, serr := os.Stat(target)
	switch {
	case serr == nil && fi.Mode().IsRegular():
		return storage.ErrExists
	case serr == nil && fi.IsDir():
		return fmt.Errorf("%w (a directory holding other keys is in the way)", err)
	}
	return fmt.Errorf("%w (something that is not an object is in the way)", err)
}

// createLocked creates a new temporary file in dir and takes an exclusive
// flock on it. A cleaner may remove the file between its creation and the
// lock (if told to remove files as new as this one); then the file is
// created again.
func createLocked(dir string) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		f, err := os.CreateTemp(dir, tempPrefix+"*")
		if err != nil {
			return nil, err
		}
		err = flock(f, unix.LOCK_EX)
		if err == nil {
			var same bool
			if same, err = stillNamed(f); err == nil && same {
				return f, nil
			}
		}
		_ = f.Close()
		if err != nil {
			_ = os.Remove(f.Name())
			return nil, fmt.Errorf("lock temporary file: %w", err)
		}
		if attempt >= 3 {
			return nil, errors.New("temporary files removed as soon as they are created (CleanUploads with a before in the future?)")
		}
	}
}

// flock applies flock(2) operation how to f, retrying on EINTR.
func flock(f *os.File, how int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) {
		for {
			ferr = unix.Flock(int(fd), how)
			if !errors.Is(ferr, unix.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return ferr
}

// stillNamed reports whether f's name still refers to f's file.
func stillNamed(f *os.File) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	li, err := os.Lstat(f.Name())
	if isNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, li), nil
}

// mkdirs creates dir and its missing parents below the root, fsyncing
// each parent it adds an entry to. It never creates the root itself: if
// the root has gone (an unmounted disk), writing elsewhere would be worse
// than failing.
func (s *Storage) mkdirs(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) || len(dir) <= len(s.root) {
		return err
	}
	parent := filepath.Dir(dir)
	if err := s.mkdirs(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	// Sync even if another Put created dir first: that Put may not have
	// synced parent yet, and ours must not return before it is durable.
	return syncDir(parent)
}

// syncDir fsyncs a directory so that entries added to or removed from it
// survive a crash. File systems that cannot sync directories are accepted.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil // directories cannot be opened for sync there
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if errors.Is(err, errors.ErrUnsupported) || errors.Is(err, syscall.EINVAL) {
		err = nil
	}
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get opens the byte range [offset, offset+length) of the object at key;
// length < 0 reads to the end. Reads fail once ctx is cancelled.
func (s *Storage) Get(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("local: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("local: get %s: %w", key, err)
	}
	f, err := os.Open(s.filePath(key))
	if err != nil {
		return nil, fmt.Errorf("local: get %s: %w", key, mapReadErr(err))
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("local: get %s: %w", key, mapReadErr(err))
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, fmt.Errorf("local: get %s: %w", key, storage.ErrNotFound)
	}
	size := fi.Size()
	if offset < 0 || offset > size {
		_ = f.Close()
		return nil, fmt.Errorf("local: get %s: offset %d of %d bytes: %w", key, offset, size, storage.ErrInvalidRange)
	}
	n := size - offset
	if length >= 0 && length < n {
		n = length
	}
	return &fileReader{ctx: ctx, r: io.NewSectionReader(f, offset, n), f: f}, nil
}

// fileReader reads a section of an open file until its Get's context is
// cancelled.
type fileReader struct {
	ctx context.Context
	r   *io.SectionReader
	f   *os.File
}

func (r *fileReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func (r *fileReader) Close() error { return r.f.Close() }

// GetWithInfo opens the whole object at key and describes the file
// opened: objects are replaced by renaming a new file over them, never
// changed in place, so what the reader returns is that file's content.
func (s *Storage) GetWithInfo(ctx context.Context, key string) (io.ReadCloser, storage.ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("local: get: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("local: get %s: %w", key, err)
	}
	f, err := os.Open(s.filePath(key))
	if err != nil {
		return nil, storage.ObjectInfo{}, fmt.Errorf("local: get %s: %w", key, mapReadErr(err))
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, storage.ObjectInfo{}, fmt.Errorf("local: get %s: %w", key, mapReadErr(err))
	}
	if !fi.Mode().IsRegular() {
		_ = f.Close()
		return nil, storage.ObjectInfo{}, fmt.Errorf("local: get %s: %w", key, storage.ErrNotFound)
	}
	return &fileReader{ctx: ctx, r: io.NewSectionReader(f, 0, fi.Size()), f: f}, info(key, fi), nil
}

// Stat describes the object at key.
func (s *Storage) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := checkKey(key); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("local: stat: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("local: stat %s: %w", key, err)
	}
	fi, err := os.Stat(s.filePath(key))
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("local: stat %s: %w", key, mapReadErr(err))
	}
	if !fi.Mode().IsRegular() {
		return storage.ObjectInfo{}, fmt.Errorf("local: stat %s: %w", key, storage.ErrNotFound)
	}
	return info(key, fi), nil
}

// Delete removes the object at key and fsyncs its directory; a missing
// object is not an error. Directories are left in place.
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("local: delete: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local: delete %s: %w", key, err)
	}
	p := s.filePath(key)
	fi, err := os.Lstat(p)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("local: delete %s: %w", key, mapPermErr(err))
	}
	if fi.IsDir() {
		return nil // a prefix of other keys, not an object
	}
	unlock, err := s.lock(ctx, unix.LOCK_SH)
	if err != nil {
		return fmt.Errorf("local: delete %s: %w", key, mapPermErr(err))
	}
	err = os.Remove(p)
	unlock()
	if err != nil && !isNotExist(err) {
		return fmt.Errorf("local: delete %s: %w", key, mapPermErr(err))
	}
	if err := syncDir(filepath.Dir(p)); err != nil {
		return fmt.Errorf("local: delete %s: %w", key, err)
	}
	return nil
}

// List calls fn for every object whose key starts with prefix. It reads
// only the directory that prefix names up to its last slash, and below it.
// Symbolic links are followed, so an operator may place part of the tree
// on another disk.
func (s *Storage) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("local: list %q: %w", prefix, err)
	}
	dirKey, base := "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirKey, base = prefix[:i], prefix[i+1:]
		if storage.ValidateKey(dirKey) != nil {
			return nil // no valid key starts with prefix
		}
	}
	dir := s.root
	if dirKey != "" {
		dir = s.filePath(dirKey)
	}
	var fnErr error
	err := s.walk(ctx, dir, dirKey, base, func(oi storage.ObjectInfo) error {
		fnErr = fn(oi)
		return fnErr
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("local: list %q: %w", prefix, mapPermErr(err))
	}
	return nil
}

// walk calls fn for every object in dir (whose key is dirKey) and below
// it, considering only entries of dir whose names start with base.
func (s *Storage) walk(ctx context.Context, dir, dirKey, base string, fn func(storage.ObjectInfo) error) error {
	if len(dirKey) >= 1024 {
		return nil // no valid key is longer; also ends symlink loops
	}
	d, err := os.Open(dir)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	// Entries are stat'ed by name from the directory's descriptor: a path
	// lookup from the root per entry costs several times more, and a
	// listing of an owner's snapshots stats a thousand.
	dfd := int(d.Fd())
	for {
		entries, rerr := d.ReadDir(256)
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			name := e.Name()
			if !strings.HasPrefix(name, base) {
				continue
			}
			key := name
			if dirKey != "" {
				key = dirKey + "/" + name
			}
			mode := e.Type()
			var st unix.Stat_t
			if mode&fs.ModeSymlink != 0 || mode.IsRegular() {
				err := ignoringEINTR(func() error { return unix.Fstatat(dfd, name, &st, 0) }) // follows links; the size for files
				if errors.Is(err, unix.ENOENT) {
					continue // deleted meanwhile, or a dangling link
				}
				if err != nil {
					return &fs.PathError{Op: "stat", Path: filepath.Join(dir, name), Err: err}
				}
				switch st.Mode & unix.S_IFMT {
				case unix.S_IFDIR:
					mode = fs.ModeDir
				case unix.S_IFREG:
					mode = 0
				default:
					mode = fs.ModeIrregular
				}
			}
			switch {
			case mode.IsDir():
				if err := s.walk(ctx, filepath.Join(dir, name), key, "", fn); err != nil {
					return err
				}
			case mode.IsRegular():
				if strings.HasPrefix(name, tempPrefix) || key == lockName || storage.ValidateKey(key) != nil {
					continue
				}
				if err := fn(statInfo(key, &st)); err != nil {
					return err
				}
			}
		}
		if errors.Is(rerr, io.EOF) || isNotExist(rerr) {
			return nil // done, or dir is a file or was removed meanwhile
		}
		if rerr != nil {
			return rerr
		}
	}
}

// CleanUploads removes the temporary files under prefix that dead
// writers left: those last modified before before on which it can take
// the writer's lock (see the package comment). A temporary file counts as
// under prefix when its own key-like path does ("data/ab/.tmp-123" is
// under "data/", "data/ab/" and "data/ab/.tmp"); as it sits next to its
// target, a prefix that ends in "/" covers every upload below it. Like
// List, it reads only the directory that prefix names up to its last
// slash and below it, and follows symbolic links.
func (s *Storage) CleanUploads(ctx context.Context, prefix string, before time.Time) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("local: clean uploads %q: %w", prefix, err)
	}
	dirKey, base := "", prefix
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		dirKey, base = prefix[:i], prefix[i+1:]
		if storage.ValidateKey(dirKey) != nil {
			return 0, nil // no valid key starts with prefix
		}
	}
	dir := s.root
	if dirKey != "" {
		dir = s.filePath(dirKey)
	}
	n, err := s.clean(ctx, dir, dirKey, base, before)
	if err != nil {
		return n, fmt.Errorf("local: clean uploads %q: %w", prefix, mapPermErr(err))
	}
	return n, nil
}

// clean removes the dead temporary files in dir (whose key is dirKey) and
// below it, considering only entries of dir whose names start with base.
func (s *Storage) clean(ctx context.Context, dir, dirKey, base string, before time.Time) (int, error) {
	if len(dirKey) >= 1024 {
		return 0, nil // no valid key is longer; also ends symlink loops
	}
	d, err := os.Open(dir)
	if isNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer d.Close()
	removed := 0
	synced := true
	for {
		entries, rerr := d.ReadDir(256)
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return removed, err
			}
			name := e.Name()
			if !strings.HasPrefix(name, base) {
				continue
			}
			p := filepath.Join(dir, name)
			mode := e.Type()
			if mode&fs.ModeSymlink != 0 {
				fi, err := os.Stat(p) // follows links, as List does
				if isNotExist(err) {
					continue
				}
				if err != nil {
					return removed, err
				}
				if !fi.IsDir() {
					continue // a temporary file is never a link
				}
				mode = fs.ModeDir
			}
			switch {
			case mode.IsDir():
				key := name
				if dirKey != "" {
					key = dirKey + "/" + name
				}
				n, err := s.clean(ctx, p, key, "", before)
				removed += n
				if err != nil {
					return removed, err
				}
			case mode.IsRegular() && strings.HasPrefix(name, tempPrefix):
				ok, err := removeDead(p, before)
				if err != nil {
					return removed, err
				}
				if ok {
					removed++
					synced = false
				}
			}
		}
		if errors.Is(rerr, io.EOF) || isNotExist(rerr) {
			break // done, or dir is a file or was removed meanwhile
		}
		if rerr != nil {
			return removed, rerr
		}
	}
	if !synced {
		if err := syncDir(dir); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// removeDead removes the temporary file p if it was last modified before
// before and no live writer holds its lock. It reports whether it removed
// it; a file that went meanwhile is not an error.
func removeDead(p string, before time.Time) (bool, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if isNotExist(err) || errors.Is(err, syscall.ELOOP) {
		return false, nil // gone, or replaced by a link: not ours
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || !fi.ModTime().Before(before) {
		return false, nil
	}
	err = flock(f, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return false, nil // a live writer holds it
	}
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", filepath.Base(p), err)
	}
	// With the lock held, the writer is dead: check that the name is
	// still this file's and that it was not written to meanwhile.
	same, err := stillNamed(f)
	if err != nil || !same {
		return false, err
	}
	if fi, err = f.Stat(); err != nil || !fi.ModTime().Before(before) {
		return false, err
	}
	if err := os.Remove(p); err != nil {
		if isNotExist(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// checkKey validates key and refuses the names of temporary files.
func checkKey(key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	if strings.HasPrefix(path.Base(key), tempPrefix) {
		return fmt.Errorf("%w: %q: names starting with %q are reserved for temporary files",
			storage.ErrInvalidKey, key, tempPrefix)
	}
	if key == lockName {
		return fmt.Errorf("%w: %q is the storage's lock file", storage.ErrInvalidKey, key)
	}
	return nil
}

// Close does nothing; a local storage holds no resources between calls.
func (s *Storage) Close() error { return nil }

// isNotExist reports whether err means a path does not exist, including
// because one of its parents is a file, or because its name is too long to
// exist at all.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.ENAMETOOLONG)
}

// mapReadErr turns a missing file into storage.ErrNotFound and a refusal
// into storage.ErrPermission.
func mapReadErr(err error) error {
	if isNotExist(err) {
		return storage.ErrNotFound
	}
	return mapPermErr(err)
}

// mapPutErr marks a name too long for the file system as an invalid key.
func mapPutErr(err error) error {
	if errors.Is(err, syscall.ENAMETOOLONG) {
		return fmt.Errorf("%w: too long for the file system: %w", storage.ErrInvalidKey, err)
	}
	return mapPermErr(err)
}

// mapPermErr marks a permission error with storage.ErrPermission.
func mapPermErr(err error) error {
	if errors.Is(err, fs.ErrPermission) && !errors.Is(err, storage.ErrPermission) {
		return fmt.Errorf("%w: %w", storage.ErrPermission, err)
	}
	return err
}

// ignoringEINTR calls fn again while it fails with EINTR.
func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
