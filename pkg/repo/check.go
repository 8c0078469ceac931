package repo

import (
	"context"
	"fmt"
	"strings"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
)

// DeleteSnapshot deletes one snapshot object. The blobs only it used stay
// until a prune removes them; other snapshots are unaffected.
func (r *Repository) DeleteSnapshot(ctx context.Context, ref SnapshotRef) error {
	if err := r.st.Delete(ctx, ref.Key); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", ref.ID.Short(), err)
	}
	return nil
}

// CheckResult is what Check found.
type CheckResult struct {
	// Problems holds one line per problem found, naming the object; at
	// most maxProblems, the last saying how many more there were.
	Problems                 []string
	Snapshots, Trees, Blobs  int64
	PacksRead, PackBytesRead int64
}

const maxProblems = 100

func (c *CheckResult) problem(format string, args ...any) {
	switch {
	case len(c.Problems) < maxProblems:
		c.Problems = append(c.Problems, fmt.Sprintf(format, args...))
	case len(c.Problems) == maxProblems:
		c.Problems = append(c.Problems, "more problems not shown")
	}
}

// Check checks the repository (its index must be loaded): every pack the
// index names exists with a plausible size, every snapshot reads and
// matches its id, and every tree and content blob its trees reach is in
// the index. With readData it also reads every pack and verifies every
// blob's hash and the pack's own. Problems are reported in the result; an
// error means the check itself could not run (storage unreachable, ctx).
func (r *Repository) Check(ctx context.Context, readData bool) (*CheckResult, error) {
	res := &CheckResult{}
	packs := r.index.Packs()
	sizes := map[chunk.ID]int64{}
	err := r.st.List(ctx, dataPrefix, func(oi storage.ObjectInfo) error {
		name := oi.Key[strings.LastIndexByte(oi.Key, '/')+1:]
		if id, err := chunk.ParseID(name); err == nil {
			sizes[id] = oi.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("check: list packs: %w", err)
	}
	for id, blobs := range packs {
		size, ok := sizes[id]
		if !ok {
			res.problem("pack %s: in the index but missing from storage", PackKey(id))
			continue
		}
		for _, b := range blobs {
			if int64(b.Offset)+int64(b.StoredLen) > size {
				res.problem("pack %s: blob %s lies beyond the pack's end (%d bytes)", PackKey(id), b.ID.Short(), size)
				break
			}
		}
	}

	refs, err := r.ListSnapshots(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("check: %w", err)
	}
	seen := map[chunk.ID]bool{}
	var walk func(id chunk.ID, path string)
	walk = func(id chunk.ID, path string) {
		if seen[id] || ctx.Err() != nil {
			return
		}
		seen[id] = true
		res.Trees++
		t, err := r.LoadTree(ctx, id)
		if err != nil {
			res.problem("tree %s (%s): %v", id.Short(), path, err)
			return
		}
		for _, n := range t.Nodes {
			p := path + "/" + n.Name
			switch n.Type {
			case TypeDir:
				walk(n.Subtree, p)
			case TypeFile:
				for _, b := range n.Content {
					if loc, ok := r.index.Lookup(b); !ok || loc.Type != DataBlob {
						res.problem("file %s: data blob %s is not in the index", p, b.Short())
					}
				}
			}
		}
	}
	for _, ref := range refs {
		res.Snapshots++
		s, err := r.LoadSnapshot(ctx, ref)
		if err != nil {
			res.problem("snapshot %s: %v", ref.Key, err)
			continue
		}
		walk(s.Tree, ref.Workspace+"@"+ref.ID.Short())
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, blobs := range packs {
		res.Blobs += int64(len(blobs))
	}
	if !readData {
		return res, nil
	}
	for id, blobs := range packs {
		if _, ok := sizes[id]; !ok {
			continue // reported above
		}
		key := PackKey(id)
		data, err := storage.ReadAll(ctx, r.st, key, 0, -1)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			res.problem("pack %s: %v", key, err)
			continue
		}
		res.PacksRead++
		res.PackBytesRead += int64(len(data))
		if chunk.Hash(data) != id {
			res.problem("pack %s: %v: content does not match its id", key, ErrCorrupt)
		}
		var buf []byte
		for _, b := range blobs {
			end := int64(b.Offset) + int64(b.StoredLen)
			if end > int64(len(data)) {
				continue // reported above
			}
			if buf, err = r.DecodeBlob(key, b, data[b.Offset:end], buf[:0]); err != nil {
				res.problem("%v", err)
			}
		}
	}
	return res, nil
}
