package repo

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/backupd/backupd/pkg/chunk"
)

// treePackCacheSize bounds the tree packs kept in memory. Trees are packed
// apart from data, so a snapshot's trees usually sit in a few packs: fetching
// a whole tree pack once, instead of one ranged read per directory, turns
// thousands of round trips to an object store into a handful.
const treePackCacheSize = 64 << 20

// maxWholeTreePack is the largest tree pack read whole; from a larger one
// only the tree blob needed is read.
const maxWholeTreePack = 32<<20 + MaxPackTrailerSize

// treePackCache holds whole tree packs, least recently used evicted first.
type treePackCache = byteLRU[chunk.ID]

func newTreePackCache(max int) *treePackCache { return newByteLRU[chunk.ID](max) }

// byteLRU holds byte slices up to max bytes in all, least recently used
// evicted first.
type byteLRU[K comparable] struct {
	mu    sync.Mutex
	max   int
	size  int
	order *list.List // of K, front = most recent
	items map[K]*lruItem
}

type lruItem struct {
	data []byte
	elem *list.Element
}

func newByteLRU[K comparable](max int) *byteLRU[K] {
	return &byteLRU[K]{max: max, order: list.New(), items: map[K]*lruItem{}}
}

func (c *byteLRU[K]) get(k K) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	it, ok := c.items[k]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(it.elem)
	return it.data, true
}

func (c *byteLRU[K]) put(k K, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[k]; ok || len(data) > c.max {
		return
	}
	c.items[k] = &lruItem{data: data, elem: c.order.PushFront(k)}
	c.size += len(data)
	for c.size > c.max {
		old := c.order.Back()
		ok := old.Value.(K)
		c.size -= len(c.items[ok].data)
		delete(c.items, ok)
		c.order.Remove(old)
	}
}

// loadTreeBlob returns the stored bytes of a tree blob, from a cached tree
// pack or by fetching (and verifying) its whole pack.
func (r *Repository) loadTreeBlob(ctx context.Context, loc Location) ([]byte, error) {
	data, ok := r.trees.get(loc.Pack)
	if !ok {
		data, ok = r.cache.get("trees", loc.Pack)
	}
	if !ok {
		key := PackKey(loc.Pack)
		var err error
		data, err = readObject(ctx, r.st, key, maxWholeTreePack)
		if errors.Is(err, ErrCorrupt) {
			// Too large to hold whole (a repository with huge packs, or a
			// crafted index pointing a tree into a huge object): read the
			// one blob; DecodeBlob verifies it by its hash.
			return readRange(ctx, r.st, key, int64(loc.Offset), int64(loc.StoredLen))
		}
		if err != nil {
			return nil, fmt.Errorf("tree %s: %w", loc.ID.Short(), err)
		}
		if chunk.Hash(data) != loc.Pack {
			return nil, fmt.Errorf("pack %s: %w: content does not match its name", key, ErrCorrupt)
		}
		r.cache.put("trees", loc.Pack, data)
	}
	r.trees.put(loc.Pack, data)
	end := int64(loc.Offset) + int64(loc.StoredLen)
	if end > int64(len(data)) {
		return nil, fmt.Errorf("pack %s: %w: tree %s lies beyond its end", PackKey(loc.Pack), ErrCorrupt, loc.ID.Short())
	}
	return data[loc.Offset:end], nil
}

// frameCacheSize bounds the decoded tree groups kept in memory: a walk
// reads the trees of a group one after another, and without it would
// decompress the whole group for each.
const frameCacheSize = 8 << 20

type frameKey struct {
	pack   chunk.ID
	offset uint32
}

// frameCache holds decoded group frames.
type frameCache = byteLRU[frameKey]

func newFrameCache(max int) *frameCache { return newByteLRU[frameKey](max) }

// treeFromGroup returns the raw bytes of the grouped tree blob loc, whose
// group frame is stored, decoding the frame once for all its trees. The
// frame is cached only once decoded whole and intact; each tree taken
// from it is checked against its id.
func (r *Repository) treeFromGroup(loc Location, stored []byte) ([]byte, error) {
	key := PackKey(loc.Pack)
	k := frameKey{loc.Pack, loc.Offset}
	frame, ok := r.frames.get(k)
	if !ok {
		var err error
		if frame, err = r.DecodeFrame(key, loc.BlobEntry, stored, nil); err != nil {
			return nil, err
		}
		r.frames.put(k, frame)
	}
	return r.BlobFromFrame(key, loc.BlobEntry, frame)
}
