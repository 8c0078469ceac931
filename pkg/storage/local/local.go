// Package local is a storage.Storage in a directory of the local file
// system. The object at key "a/b/c" is the file <dir>/a/b/c.
//
// Put writes a temporary file next to its target (named ".tmp-" plus a
// random suffix), fsyncs it, renames it over the target and fsyncs the
// directory, so an object is either absent, its previous content or its new
// content, also after a crash. List skips temporary files; a crash can
// leave one behind, which wastes space but is never seen as an object.
// Because of that, keys whose last component starts with ".tmp-" are
// refused by every method with storage.ErrInvalidKey.
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
	"strings"
	"syscall"

	"github.com/backupd/backupd/pkg/storage"
)

const (
	// tempPrefix starts the name of every temporary file Put writes.
	tempPrefix = ".tmp-"
	// pieceSize is how much Put copies between two checks of its context.
	pieceSize = 1 << 20
	dirMode   = 0o700
)

// Storage is a storage.Storage in a local directory. It is safe for
// concurrent use, also by several processes sharing the directory.
type Storage struct {
	root string // absolute and clean
}

var _ storage.Storage = (*Storage)(nil)

// New opens the directory dir as a storage, creating it (mode 0700) if it
// is missing.
func New(dir string) (*Storage, error) {
	return Open(Config{Dir: dir})
}

// Open opens the storage that cfg describes, creating its directory (mode
// 0700) if it is missing.
func Open(cfg Config) (*Storage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	root, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("local: open %s: %w", cfg.Dir, err)
	}
	if err := os.MkdirAll(root, dirMode); err != nil {
		return nil, fmt.Errorf("local: open %s: %w", root, err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("local: open %s: %w", root, err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("local: open %s: not a directory", root)
	}
	return &Storage{root: root}, nil
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
	if err := s.put(ctx, key, body, size); err != nil {
		return fmt.Errorf("local: put %s: %w", key, mapPutErr(err))
	}
	return nil
}

func (s *Storage) put(ctx context.Context, key string, body io.ReadSeeker, size int64) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	target := s.filePath(key)
	dir := filepath.Dir(target)
	if err := s.mkdirs(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	committed := false
	defer func() {
		if !committed {
			_ = f.Close() // may already be closed; the write failed anyway
			_ = os.Remove(tmp)
		}
	}()

	for written := int64(0); written < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.CopyN(f, body, min(size-written, pieceSize))
		written += n
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("body ended after %d of %d bytes: %w", written, size, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Rename(tmp, target); err != nil {
		return err
	}
	committed = true
	// The object is in place; make its directory entry durable.
	return syncDir(dir)
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
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
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
	if err := os.Remove(p); err != nil && !isNotExist(err) {
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
			p := filepath.Join(dir, name)
			mode := e.Type()
			var fi fs.FileInfo
			if mode&fs.ModeSymlink != 0 || mode.IsRegular() {
				fi, err = os.Stat(p) // follows links; the size for files
				if isNotExist(err) {
					continue // deleted meanwhile, or a dangling link
				}
				if err != nil {
					return err
				}
				mode = fi.Mode().Type()
			}
			switch {
			case mode.IsDir():
				if err := s.walk(ctx, p, key, "", fn); err != nil {
					return err
				}
			case mode.IsRegular():
				if strings.HasPrefix(name, tempPrefix) || storage.ValidateKey(key) != nil {
					continue
				}
				if err := fn(storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}); err != nil {
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

// checkKey validates key and refuses the names of temporary files.
func checkKey(key string) error {
	if err := storage.ValidateKey(key); err != nil {
		return err
	}
	if strings.HasPrefix(path.Base(key), tempPrefix) {
		return fmt.Errorf("%w: %q: names starting with %q are reserved for temporary files",
			storage.ErrInvalidKey, key, tempPrefix)
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
