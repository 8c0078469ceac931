// Package dirfd is file-system access anchored to directory file
// descriptors, for code that runs as root in directories that others
// control (a workspace's owner can create links and swap directories at
// any moment).
//
// A Dir is an open directory. Everything below it is reached from its
// descriptor, one component at a time or with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS), and never through a symbolic link: a path checked
// once is never resolved again by name, so swapping a directory for a link
// between a check and a use can at worst make the use fail. Only Open
// resolves a path the ordinary way, for a directory the caller trusts (an
// operator's argument, a configured root).
//
// Callers use the descriptor (Fd) with the *at system calls for single
// names in the directory; this package supplies what needs more than one
// call to be safe: opening below the directory, creating the way to a
// directory, removing a subtree, and reaching the inode of an open
// descriptor through /proc for the calls that have no descriptor form.
package dirfd

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
	gosync "sync"

	"golang.org/x/sys/unix"
)

// ErrLink means a path below a Dir runs through a symbolic link, which is
// never followed.
var ErrLink = errors.New("symbolic link in the path (links are not followed)")

// ErrNotBelow means a path is not a plain relative path below its Dir (it
// is absolute or has a ".." component).
var ErrNotBelow = errors.New("path is not below its directory")

// Dir is an open directory. It is safe for concurrent use; Close it once.
type Dir struct {
	fd   int
	name string // for messages only: never resolved
}

// Open opens the directory at path, following symbolic links in path: for
// a directory the caller trusts. Everything below it is then reached
// through the returned Dir.
func Open(path string) (*Dir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &Dir{fd: fd, name: path}, nil
}

// Fd returns the directory's descriptor, valid until Close.
func (d *Dir) Fd() int { return d.fd }

// Name returns the path the directory was opened as, for messages.
func (d *Dir) Name() string { return d.name }

// Join returns the display name of rel below d; it is never resolved.
func (d *Dir) Join(rel string) string {
	if rel == "" || rel == "." {
		return d.name
	}
	return strings.TrimSuffix(d.name, "/") + "/" + rel
}

// Close closes the descriptor.
func (d *Dir) Close() error { return unix.Close(d.fd) }

// Stat returns the directory's own stat data (fstat).
func (d *Dir) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return st, &fs.PathError{Op: "fstat", Path: d.name, Err: err}
	}
	return st, nil
}

// SplitRel checks that rel is a plain relative path ("a/b/c"; "" and "."
// for the directory itself) and returns its components. Empty components
// and "." are dropped; ".." or a leading slash is ErrNotBelow.
func SplitRel(rel string) ([]string, error) {
	if strings.HasPrefix(rel, "/") || strings.ContainsRune(rel, 0) {
		return nil, fmt.Errorf("%w: %q", ErrNotBelow, rel)
	}
	var out []string
	for _, c := range strings.Split(rel, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, fmt.Errorf("%w: %q", ErrNotBelow, rel)
		}
		out = append(out, c)
	}
	return out, nil
}

// OpenDir opens the directory rel below d without following any symbolic
// link on the way (rel "" opens d itself again).
func (d *Dir) OpenDir(rel string) (*Dir, error) {
	parts, err := SplitRel(rel)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: d.Join(rel), Err: err}
	}
	fd, err := openBeneath(d.fd, parts, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: d.Join(rel), Err: mapErr(err)}
	}
	return &Dir{fd: fd, name: d.Join(path.Join(parts...))}, nil
}

// MkdirAll opens the directory rel below d, creating each missing
// component with mode (before umask), and never following a symbolic link
// on the way.
func (d *Dir) MkdirAll(rel string, mode uint32) (*Dir, error) {
	parts, err := SplitRel(rel)
	if err != nil {
		return nil, &fs.PathError{Op: "mkdir", Path: d.Join(rel), Err: err}
	}
	cur, err := unix.Dup(d.fd)
	if err != nil {
		return nil, &fs.PathError{Op: "mkdir", Path: d.name, Err: err}
	}
	unix.CloseOnExec(cur)
	for i, p := range parts {
		if err := unix.Mkdirat(cur, p, mode); err != nil && err != unix.EEXIST {
			unix.Close(cur)
			return nil, &fs.PathError{Op: "mkdir", Path: d.Join(path.Join(parts[:i+1]...)), Err: err}
		}
		next, err := walkBeneath(cur, []string{p}, unix.O_RDONLY|unix.O_DIRECTORY)
		unix.Close(cur)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: d.Join(path.Join(parts[:i+1]...)), Err: mapErr(err)}
		}
		cur = next
	}
	return &Dir{fd: cur, name: d.Join(path.Join(parts...))}, nil
}

// OpenAt opens the single entry name in directory dirfd, never following a
// symbolic link (O_NOFOLLOW, O_CLOEXEC added) and retrying EINTR. name must
// be one component.
func OpenAt(dirfd int, name string, flags int, mode uint32) (int, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return -1, fmt.Errorf("%w: %q is not one name", ErrNotBelow, name)
	}
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// haveOpenat2 tells whether the kernel (and any seccomp filter in front
// of it) allows openat2; without it paths are opened one component at a
// time.
var haveOpenat2 = gosync.OnceValue(func() bool {
	how := unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH}
	fd, err := unix.Openat2(unix.AT_FDCWD, ".", &how)
	if err != nil {
		return false // ENOSYS, or EPERM from an older container runtime's seccomp profile
	}
	unix.Close(fd)
	return true
})

// forceComponentWalk, set by tests, makes openBeneath take the path of
// kernels without openat2.
var forceComponentWalk bool

// openBeneath opens the path of parts below dirfd with flags, following no
// symbolic link.
func openBeneath(dirfd int, parts []string, flags int) (int, error) {
	if len(parts) == 0 {
		fd, err := unix.Openat(dirfd, ".", flags|unix.O_CLOEXEC, 0)
		return fd, err
	}
	if !forceComponentWalk && haveOpenat2() {
		how := unix.OpenHow{
			Flags:   uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
		}
		p := strings.Join(parts, "/")
		for tries := 0; ; tries++ {
			fd, err := unix.Openat2(dirfd, p, &how)
			if (err == unix.EAGAIN || err == unix.EINTR) && tries < 16 {
				continue // a concurrent rename; the kernel asks to retry
			}
			if err == unix.ENOTDIR {
				// A file, or a link (O_DIRECTORY meets it first): the
				// walk one component at a time tells which.
				return walkBeneath(dirfd, parts, flags)
			}
			return fd, err
		}
	}
	return walkBeneath(dirfd, parts, flags)
}

// walkBeneath opens parts below dirfd one component at a time with
// O_NOFOLLOW.
func walkBeneath(dirfd int, parts []string, flags int) (int, error) {
	cur := dirfd
	for i, p := range parts {
		f := unix.O_RDONLY | unix.O_DIRECTORY
		if i == len(parts)-1 {
			f = flags
		}
		next, err := OpenAt(cur, p, f, 0)
		if err == unix.ENOTDIR {
			var st unix.Stat_t
			if unix.Fstatat(cur, p, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK {
				err = unix.ELOOP
			}
		}
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur = next
	}
	return cur, nil
}

// mapErr names the errors a refused link gives.
func mapErr(err error) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return ErrLink
	case errors.Is(err, unix.EXDEV):
		// RESOLVE_BENEATH refuses to leave the directory; with ".." and
		// absolute paths refused before, only a link can lead there.
		return ErrLink
	}
	return err
}

// ErrTooManyEntries means a directory holds more entries than asked for.
var ErrTooManyEntries = errors.New("directory has too many entries")

// ReadNames returns the names in the open directory fd, without "." and
// "..". It reads from the start, whatever was read before.
func ReadNames(fd int) ([]string, error) { return ReadNamesMax(fd, 0) }

// ReadNamesMax is ReadNames failing with ErrTooManyEntries once the
// directory turns out to hold more than max names (0: no limit), so that a
// directory of millions of entries costs bounded memory.
func ReadNamesMax(fd int, max int) ([]string, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, err
	}
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	buf := *bp
	var names []string
	for {
		n, err := unix.ReadDirent(fd, buf)
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
		if max > 0 && len(names) > max {
			return nil, fmt.Errorf("%w: more than %d", ErrTooManyEntries, max)
		}
	}
}

// direntBufs holds getdents buffers: a walk reads thousands of
// directories.
var direntBufs = gosync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// RemoveAll removes the entry name of directory dirfd and, if it is a
// directory, everything in it, never following a symbolic link; a missing
// entry is not an error. maxDepth bounds how deep it descends (each level
// holds a descriptor). display names dirfd in errors.
func RemoveAll(dirfd int, display, name string, maxDepth int) error {
	err := removeAll(dirfd, name, maxDepth)
	if err != nil {
		return &fs.PathError{Op: "remove", Path: strings.TrimSuffix(display, "/") + "/" + name, Err: err}
	}
	return nil
}

func removeAll(dirfd int, name string, depth int) error {
	for tries := 0; ; tries++ {
		err := unix.Unlinkat(dirfd, name, 0)
		if err == nil || err == unix.ENOENT {
			return nil
		}
		if err != unix.EISDIR && err != unix.EPERM {
			return err
		}
		if depth <= 0 {
			return errors.New("directory nesting too deep to remove")
		}
		fd, err := OpenAt(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		switch {
		case err == unix.ENOENT:
			return nil
		case (err == unix.ENOTDIR || err == unix.ELOOP) && tries < 8:
			continue // replaced by a file or link meanwhile: unlink that
		case err != nil:
			return err
		}
		names, err := ReadNames(fd)
		for _, n := range names {
			if err != nil {
				break
			}
			err = removeAll(fd, n, depth-1)
		}
		unix.Close(fd)
		if err != nil {
			return err
		}
		err = unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
		switch {
		case err == nil || err == unix.ENOENT:
			return nil
		case (err == unix.ENOTEMPTY || err == unix.EEXIST || err == unix.ENOTDIR) && tries < 8:
			continue // something was added or swapped meanwhile: again
		default:
			return err
		}
	}
}

// ProcPath returns the /proc path that reaches the inode open as fd
// itself, for the system calls that have no descriptor form (extended
// attributes and times of a symbolic link opened with O_PATH): resolving
// it lands on that inode, never on what a link points to.
func ProcPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// SameFile reports whether two stat results are of the same inode.
func SameFile(a, b *unix.Stat_t) bool { return a.Dev == b.Dev && a.Ino == b.Ino }
