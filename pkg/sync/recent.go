package sync

import (
	"container/heap"
	"slices"
	gosync "sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/backupd/backupd/pkg/repo"
)

// recentFiles keeps, as a backup walks, the repo.MaxRecent regular files
// of the newest mtimes (a min-heap: its root is the oldest kept). Once it
// is full, a file older than that root costs one atomic load.
type recentFiles struct {
	mu     gosync.Mutex
	heap   recentHeap
	oldest atomic.Int64 // the root's mtime once full; math.MinInt64 before
	full   atomic.Bool
}

type recentFile struct {
	mtime int64
	path  string
}

type recentHeap []recentFile

func (h recentHeap) Len() int           { return len(h) }
func (h recentHeap) Less(i, j int) bool { return h[i].mtime < h[j].mtime }
func (h recentHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *recentHeap) Push(x any)        { *h = append(*h, x.(recentFile)) }
func (h *recentHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// add offers the file at rel (relative to the backed-up directory) with
// mtime.
func (r *recentFiles) add(rel string, mtime int64) {
	if r.full.Load() && mtime <= r.oldest.Load() {
		return
	}
	if len(rel) > repo.MaxPathLen || !utf8.ValidString(rel) {
		return // not listable in a snapshot
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case len(r.heap) < repo.MaxRecent:
		heap.Push(&r.heap, recentFile{mtime, rel})
		if len(r.heap) == repo.MaxRecent {
			r.oldest.Store(r.heap[0].mtime)
			r.full.Store(true)
		}
	case mtime > r.heap[0].mtime:
		r.heap[0] = recentFile{mtime, rel}
		heap.Fix(&r.heap, 0)
		r.oldest.Store(r.heap[0].mtime)
	}
}

// list returns the paths kept, newest first, within repo.MaxRecentBytes.
func (r *recentFiles) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	files := slices.Clone(r.heap)
	slices.SortFunc(files, func(a, b recentFile) int {
		if a.mtime != b.mtime {
			if a.mtime > b.mtime {
				return -1
			}
			return 1
		}
		if a.path < b.path {
			return -1
		}
		if a.path > b.path {
			return 1
		}
		return 0
	})
	var out []string
	total := 0
	for _, f := range files {
		if total+len(f.path) > repo.MaxRecentBytes {
			break
		}
		total += len(f.path)
		out = append(out, f.path)
	}
	return out
}
