package daemon

import (
	"context"
	"sync"

	"github.com/backupd/backupd/pkg/repo"
)

// repoCache keeps the owners' repositories open between operations, each
// with its index loaded, so that an owner's next operation refreshes the
// index (repo.Repository.Refresh: it reads only the index objects added
// since) instead of loading it whole. Concurrent operations of one owner
// share one repository (safe: see repo.Repository). Repositories no
// operation uses are closed, least recently used first, while the
// estimated memory of all (repo.Repository.MemBytes, those in use
// included) is over the budget (limits.index_memory).
//
// A repository is dropped (the next operation loads it anew; those using
// it go on with theirs) when its owner is deleted, after a prune of it,
// and after a backup of it failed: such a backup may have stored packs
// that are in the index (SavePack) but in no index object, or taken the
// adopted packs without writing them; a new load adopts them again.
type repoCache struct {
	budget  int64 // <= 0: none kept between operations
	metrics *metrics

	mu      sync.Mutex
	entries map[repoKey]*openRepo
	tick    uint64
}

// repoKey names a repository: the storage location and the owner.
type repoKey struct{ location, owner string }

// openRepo is one cached repository.
type openRepo struct {
	key   repoKey
	ready chan struct{} // closed once r or err is set
	r     *repo.Repository
	err   error

	// Guarded by repoCache.mu.
	refs    int    // operations using it
	used    uint64 // the tick of its last release
	mem     int64  // MemBytes when last measured
	dropped bool   // no longer in entries
}

func newRepoCache(budget int64, m *metrics) *repoCache {
	return &repoCache{budget: budget, metrics: m, entries: map[repoKey]*openRepo{}}
}

// acquire returns the open repository of key, loading it with load if
// none is open; loaded reports that this call loaded it, so that it
// needs no refresh. Every acquire that succeeds is followed by one
// release.
func (c *repoCache) acquire(ctx context.Context, key repoKey, load func(context.Context) (*repo.Repository, error)) (e *openRepo, loaded bool, err error) {
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		e, ok := c.entries[key]
		if !ok {
			e = &openRepo{key: key, ready: make(chan struct{}), refs: 1}
			c.entries[key] = e
			c.mu.Unlock()
			e.r, e.err = load(ctx)
			c.mu.Lock()
			if e.err != nil {
				c.removeLocked(e)
			} else {
				e.mem = e.r.MemBytes()
			}
			close(e.ready)
			c.updateLocked()
			c.mu.Unlock()
			if e.err != nil {
				return nil, false, e.err
			}
			c.metrics.indexLoads.WithLabelValues("full").Inc()
			return e, true, nil
		}
		e.refs++
		c.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			c.release(e, false)
			return nil, false, ctx.Err()
		}
		if e.err == nil {
			// Even after waiting for a load, refreshed: that load listed
			// the index before this call's request, and a snapshot this
			// call is to restore may be newer.
			return e, false, nil
		}
		c.release(e, false)
		// The load this call waited for failed: it may have been for
		// another kind of operation (a restore's finds no repository that
		// a backup creates) or ended with its own operation. Once more,
		// this call's own load.
		if attempt > 0 {
			return nil, false, e.err
		}
	}
}

// release ends one operation's use of e; with drop, e is closed so that
// the next operation loads the repository anew.
func (c *repoCache) release(e *openRepo, drop bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	c.tick++
	e.used = c.tick
	if drop {
		c.removeLocked(e)
	}
	if e.refs == 0 && e.r != nil {
		e.r.Trim()
		e.mem = e.r.MemBytes()
	}
	c.evictLocked()
	c.updateLocked()
}

// measure records e's memory after its refresh.
func (c *repoCache) measure(e *openRepo) {
	m := e.r.MemBytes()
	c.mu.Lock()
	defer c.mu.Unlock()
	e.mem = m
	c.evictLocked()
	c.updateLocked()
}

// drop closes owner's repositories: the next operation loads anew.
func (c *repoCache) drop(owner string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.entries {
		if k.owner == owner {
			c.removeLocked(e)
		}
	}
	c.updateLocked()
}

func (c *repoCache) removeLocked(e *openRepo) {
	if !e.dropped && c.entries[e.key] == e {
		delete(c.entries, e.key)
	}
	e.dropped = true
}

// evictLocked closes idle repositories, least recently used first, while
// the total is over the budget.
func (c *repoCache) evictLocked() {
	for {
		var total int64
		var lru *openRepo
		for _, e := range c.entries {
			total += e.mem
			if e.refs == 0 && (lru == nil || e.used < lru.used) {
				lru = e
			}
		}
		if total <= c.budget || lru == nil { // -1: nothing idle stays
			return
		}
		c.removeLocked(lru)
		c.metrics.repoEvictions.Inc()
	}
}

func (c *repoCache) updateLocked() {
	var total int64
	for _, e := range c.entries {
		total += e.mem
	}
	c.metrics.openRepos.Set(float64(len(c.entries)))
	c.metrics.openRepoBytes.Set(float64(total))
}
