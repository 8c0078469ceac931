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
type treePackCache struct {
	mu    sync.Mutex
	max   int
	size  int
	order *list.List // of chunk.ID, front = most recent
	packs map[chunk.ID]*cachedPack
}

type cachedPack struct {
	data []byte
	elem *list.Element
}

func newTreePackCache(max int) *treePackCache {
	return &treePackCache{max: max, order: list.New(), packs: map[chunk.ID]*cachedPack{}}
}

func (c *treePackCache) get(id chunk.ID) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.packs[id]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(p.elem)
	return p.data, true
}

// bytes returns the size of the packs held.
func (c *treePackCache) bytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// clear drops every pack held.
func (c *treePackCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order.Init()
	clear(c.packs)
	c.size = 0
}

func (c *treePackCache) put(id chunk.ID, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.packs[id]; ok || len(data) > c.max {
		return
	}
	c.packs[id] = &cachedPack{data: data, elem: c.order.PushFront(id)}
	c.size += len(data)
	for c.size > c.max {
		old := c.order.Back()
		oid := old.Value.(chunk.ID)
		c.size -= len(c.packs[oid].data)
		delete(c.packs, oid)
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
