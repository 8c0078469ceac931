package sync

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/backupd/backupd/pkg/repo"
)

// errNoXattrs marks a file system that does not support extended
// attributes.
var errNoXattrs = errors.New("file system does not support extended attributes")

func xattrsUnsupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// readXattrs returns the extended attributes of the open file fd or, when
// fd < 0, of the inode procPath (a dirfd.ProcPath of a descriptor opened
// with O_PATH, for symlinks and FIFOs, which no other call reaches safely):
// the user. namespace, and every namespace with all (backing up as root).
func readXattrs(fd int, procPath string, all bool) ([]repo.Xattr, error) {
	list := func(buf []byte) (int, error) {
		if fd >= 0 {
			return unix.Flistxattr(fd, buf)
		}
		return unix.Listxattr(procPath, buf)
	}
	get := func(name string, buf []byte) (int, error) {
		if fd >= 0 {
			return unix.Fgetxattr(fd, name, buf)
		}
		return unix.Getxattr(procPath, name, buf)
	}
	var names []byte
	for try := 0; ; try++ {
		n, err := list(nil)
		if xattrsUnsupported(err) {
			return nil, nil
		}
		if err != nil || n == 0 {
			return nil, err
		}
		names = make([]byte, n)
		n, err = list(names)
		if errors.Is(err, unix.ERANGE) && try < 3 {
			continue // grew in between
		}
		if err != nil {
			return nil, err
		}
		names = names[:n]
		break
	}
	var out []repo.Xattr
	for _, name := range strings.Split(strings.TrimRight(string(names), "\x00"), "\x00") {
		if name == "" || (!all && !strings.HasPrefix(name, "user.")) {
			continue
		}
		n, err := get(name, nil)
		if errors.Is(err, unix.ENODATA) {
			continue // removed in between
		}
		if err != nil {
			return nil, fmt.Errorf("xattr %s: %w", name, err)
		}
		val := make([]byte, n)
		if n > 0 {
			if n, err = get(name, val); err != nil {
				return nil, fmt.Errorf("xattr %s: %w", name, err)
			}
		}
		out = append(out, repo.Xattr{Name: name, Value: val[:n]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// setXattrs sets extended attributes on the open file fd or, when fd < 0,
// on the inode procPath (see readXattrs); only user. ones unless all
// (restoring as root). path names the entry in errors. A file system
// without support yields errNoXattrs.
func setXattrs(fd int, procPath, path string, xs []repo.Xattr, all bool) error {
	for _, x := range xs {
		if !all && !strings.HasPrefix(x.Name, "user.") {
			continue
		}
		var err error
		if fd >= 0 {
			err = unix.Fsetxattr(fd, x.Name, x.Value, 0)
		} else {
			err = unix.Setxattr(procPath, x.Name, x.Value, 0)
		}
		if xattrsUnsupported(err) {
			return errNoXattrs
		}
		if err != nil {
			return fmt.Errorf("restore: set xattr %s on %s: %w", x.Name, path, err)
		}
	}
	return nil
}
