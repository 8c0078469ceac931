package repo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
)

// Cache keeps copies of a repository's index objects and tree packs in a
// node-local directory, so that neither a re-backup nor a restore downloads
// them again. Every entry is named by, and checked against, its SHA-256, so
// the cache can only accelerate: a deleted, stale or damaged entry is
// fetched again and never changes a result. Its size is bounded; the
// oldest entries go first.
type Cache struct {
	dir string // this repository's part of the cache
	max int64

	mu   sync.Mutex
	size int64 // -1: unknown, count on next prune
}

// DefaultCacheSize bounds a cache directory unless configured otherwise.
const DefaultCacheSize = 2 << 30

// OpenCache returns the cache for the repository with the given config id
// under dir (created if missing), holding at most max bytes.
func OpenCache(dir, repoID string, max int64) (*Cache, error) {
	if err := ValidateName("repository id", repoID); err != nil {
		return nil, err
	}
	d := filepath.Join(dir, repoID)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &Cache{dir: d, max: max, size: -1}, nil
}

func (c *Cache) path(kind string, id chunk.ID) string {
	return filepath.Join(c.dir, kind, id.String())
}

// get returns the cached object of kind with id, if present and intact.
func (c *Cache) get(kind string, id chunk.ID) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	b, err := os.ReadFile(c.path(kind, id))
	if err != nil {
		return nil, false
	}
	if chunk.Hash(b) != id {
		os.Remove(c.path(kind, id)) // damaged: drop it, the caller fetches
		return nil, false
	}
	return b, true
}

// put stores an object; failures only cost a later download.
func (c *Cache) put(kind string, id chunk.ID, data []byte) {
	if c == nil || int64(len(data)) > c.max {
		return
	}
	p := c.path(kind, id)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), p) != nil {
		os.Remove(tmp.Name())
		return
	}
	c.mu.Lock()
	if c.size >= 0 {
		c.size += int64(len(data))
	}
	over := c.size < 0 || c.size > c.max
	c.mu.Unlock()
	if over {
		c.prune()
	}
}

// CleanCache removes temporary files of the node-local cache last written
// before before: those of a process killed while it wrote an entry. A
// cache write is a few milliseconds; one removed under a live writer
// only makes that write fail, which costs a later download.
func (r *Repository) CleanCache(before time.Time) {
	c := r.cache
	if c == nil {
		return
	}
	filepath.WalkDir(c.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), ".tmp-") {
			return nil
		}
		if fi, err := d.Info(); err == nil && fi.ModTime().Before(before) {
			os.Remove(p)
		}
		return nil
	})
}

// prune removes the oldest entries until the cache fits its bound.
func (c *Cache) prune() {
	c.mu.Lock()
	defer c.mu.Unlock()
	type entry struct {
		path string
		size int64
		mod  int64
	}
	var all []entry
	var total int64
	filepath.WalkDir(c.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			all = append(all, entry{p, fi.Size(), fi.ModTime().UnixNano()})
			total += fi.Size()
		}
		return nil
	})
	sort.Slice(all, func(i, j int) bool { return all[i].mod < all[j].mod })
	for _, e := range all {
		if total <= c.max {
			break
		}
		if err := os.Remove(e.path); err == nil || errors.Is(err, fs.ErrNotExist) {
			total -= e.size
		}
	}
	c.size = total
}
