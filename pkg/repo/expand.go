package repo

import (
	"context"
	"errors"
	"fmt"

	"github.com/backupd/backupd/pkg/chunk"
)

// Limits of a snapshot as a whole. Trees are content-addressed, so one tree
// may be named many times (identical directories are stored once): a
// snapshot of a few kilobytes can name the same subtree twice at each of 40
// levels and expand to 2^40 entries. Restore and check measure a snapshot's
// expansion first, at the cost of reading each distinct tree once, and
// refuse what exceeds these bounds before anything is written.
const (
	// MaxTreeDepth bounds how deeply directories nest: backup leaves out,
	// with a warning, directories deeper than this; restore and check
	// refuse a snapshot that reaches deeper. A Linux path of 4096 bytes
	// holds at most 2048 levels; real workspaces stay below 100.
	MaxTreeDepth = 1024
	// MaxExpandedEntries bounds the entries (of every kind) one restore of
	// a whole snapshot writes: 50 times the one-million-file workspace the
	// engine is sized for.
	MaxExpandedEntries = 50_000_000
)

// ErrTooLarge marks a snapshot whose trees exceed the limits above.
var ErrTooLarge = errors.New("snapshot exceeds the limits of a restore")

// Expansion is what restoring a tree would create.
type Expansion struct {
	// Entries counts every entry below the root, each time it appears.
	Entries int64
	// Depth is the deepest nesting of a directory (the root's entries are
	// at depth 1).
	Depth int
	// Trees counts the distinct trees below and including the root.
	Trees int
	// Repeated counts the distinct trees that appear more than once.
	Repeated int
}

// measured is the memo of one tree: its expansion below it, saturated.
type measured struct {
	entries int64
	height  int // 0 for a tree without subdirectories
}

// Measurer measures the expansion of trees, remembering every tree it has
// measured, so that a check of many snapshots reads each tree once.
type Measurer struct {
	r    *Repository
	memo map[chunk.ID]measured
	seen map[chunk.ID]int // how often each tree was reached in the last Measure

	// keep holds decoded trees for the caller that reads them next (a
	// restore), up to keepBudget bytes (roughly): it walks them in the
	// order they were measured, so the first ones kept are its first.
	keep       map[chunk.ID]*Tree
	keepBudget int64
}

// NewMeasurer returns a Measurer reading trees from r.
func (r *Repository) NewMeasurer() *Measurer {
	return &Measurer{r: r, memo: map[chunk.ID]measured{}}
}

// Keep makes the Measurer hold on to the trees it decodes, up to about
// budget bytes of them, for Take.
func (m *Measurer) Keep(budget int64) {
	m.keep, m.keepBudget = map[chunk.ID]*Tree{}, budget
}

// Take returns a tree the Measurer kept and forgets it; without one, it
// loads the tree.
func (m *Measurer) Take(ctx context.Context, id chunk.ID) (*Tree, error) {
	if t, ok := m.keep[id]; ok {
		delete(m.keep, id)
		return t, nil
	}
	return m.r.LoadTree(ctx, id)
}

// treeCost estimates the memory a decoded tree holds.
func treeCost(t *Tree) int64 {
	n := int64(len(t.Nodes)) * 176
	for i := range t.Nodes {
		n += int64(len(t.Nodes[i].Name)+len(t.Nodes[i].Target)) + int64(len(t.Nodes[i].Content))*chunk.IDSize
	}
	return n
}

// Measure returns the expansion of the tree root. It fails with ErrTooLarge
// (naming the limit) when the tree nests deeper than MaxTreeDepth or holds
// more than maxEntries entries (MaxExpandedEntries if maxEntries <= 0), and
// with the error of LoadTree when a tree cannot be read.
func (m *Measurer) Measure(ctx context.Context, root chunk.ID, maxEntries int64) (Expansion, error) {
	if maxEntries <= 0 {
		maxEntries = MaxExpandedEntries
	}
	m.seen = map[chunk.ID]int{}
	res, err := m.measure(ctx, root, 0, maxEntries)
	if errors.Is(err, ErrTooLarge) {
		return Expansion{}, fmt.Errorf("tree %s: %w", root.Short(), err)
	}
	if err != nil {
		return Expansion{}, err
	}
	exp := Expansion{Entries: res.entries, Depth: res.height + 1, Trees: len(m.seen)}
	for _, n := range m.seen {
		if n > 1 {
			exp.Repeated++
		}
	}
	if res.entries == 0 {
		exp.Depth = 0
	}
	if exp.Entries > maxEntries {
		return exp, fmt.Errorf("%w: tree %s expands to more than %d entries", ErrTooLarge, root.Short(), maxEntries)
	}
	return exp, nil
}

// measure returns the memo of tree id, reached at depth (the root at 0; a
// directory's tree at depth d holds entries at depth d+1).
func (m *Measurer) measure(ctx context.Context, id chunk.ID, depth int, limit int64) (measured, error) {
	m.seen[id]++
	if res, ok := m.memo[id]; ok {
		if depth+res.height > MaxTreeDepth {
			return res, fmt.Errorf("%w: directories nest deeper than %d levels", ErrTooLarge, MaxTreeDepth)
		}
		return res, nil
	}
	if depth > MaxTreeDepth {
		return measured{}, fmt.Errorf("%w: directories nest deeper than %d levels", ErrTooLarge, MaxTreeDepth)
	}
	if err := ctx.Err(); err != nil {
		return measured{}, err
	}
	t, err := m.r.LoadTree(ctx, id)
	if err != nil {
		return measured{}, err
	}
	if m.keep != nil {
		if c := treeCost(t); c <= m.keepBudget {
			m.keep[id], m.keepBudget = t, m.keepBudget-c
		}
	}
	res := measured{entries: int64(len(t.Nodes))}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if n.Type != TypeDir {
			continue
		}
		sub, err := m.measure(ctx, n.Subtree, depth+1, limit)
		if err != nil {
			return measured{}, err
		}
		// Saturate: past the limit the exact figure does not matter, and
		// a bomb's would overflow.
		res.entries = min(res.entries+sub.entries, limit+1)
		res.height = max(res.height, sub.height+1)
	}
	m.memo[id] = res
	return res, nil
}
