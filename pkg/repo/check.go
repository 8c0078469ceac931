package repo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"slices"

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
	// most maxProblems, the last saying how many more there were. A
	// repository with problems has lost or damaged data.
	Problems []string
	// Warnings are findings that lose nothing: packs no index object
	// names yet (left by an interrupted backup, used all the same).
	Warnings                 []string
	Snapshots, Trees, Blobs  int64
	PacksRead, PackBytesRead int64
}

const maxProblems = 100

func (c *CheckResult) problem(format string, args ...any) {
	c.Problems = appendLimited(c.Problems, fmt.Sprintf(format, args...))
}

func (c *CheckResult) warning(format string, args ...any) {
	c.Warnings = appendLimited(c.Warnings, fmt.Sprintf(format, args...))
}

func appendLimited(lines []string, line string) []string {
	switch {
	case len(lines) < maxProblems:
		return append(lines, line)
	case len(lines) == maxProblems:
		return append(lines, "more not shown")
	}
	return lines
}

// Check checks the repository (its index must be loaded): what loading
// the index found (damaged index objects, packs whose trailer cannot be
// read, packs no index object names), that every pack the index names
// exists with a plausible size, that every snapshot reads and matches its
// id, that every tree its snapshots reach reads, that the snapshot stays
// within the limits of a restore (repo.MaxTreeDepth, MaxExpandedEntries),
// and that every file's content is in the index and adds up to its size.
// With readData it also reads every pack and verifies every blob's hash
// and the pack's own. Problems are reported in the result; an error means
// the check itself could not run (storage unreachable, ctx).
func (r *Repository) Check(ctx context.Context, readData bool) (*CheckResult, error) {
	res := &CheckResult{}
	rep := r.IndexReport()
	for _, d := range rep.Damaged {
		res.problem("%s (its packs were indexed from their trailers; `backupctl repair index` replaces it)", d)
	}
	for _, b := range rep.BadPacks {
		res.problem("%s (its blobs are unknown)", b)
	}
	for _, a := range rep.Adopted {
		res.warning("pack %s is in no readable index object (an interrupted backup's, or a damaged index object's): used all the same; the next backup or `backupctl repair index` indexes it", PackKey(a.Pack))
	}
	for _, k := range rep.MissingPacks {
		res.warning("pack %s: named by an index object but missing from storage (ignored: a prune deleted it after that index object was written, or it was lost; a file that needed it is reported)", k)
	}
	packs := r.index.Packs()
	sizes := map[chunk.ID]int64{}
	err := r.st.List(ctx, dataPrefix, func(oi storage.ObjectInfo) error {
		if id, ok := packID(oi.Key); ok {
			sizes[id] = oi.Size
		} else {
			res.warning("%s is not a pack (a stray object under %s)", oi.Key, dataPrefix)
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
	var walkErr error
	var walk func(id chunk.ID, path string)
	walk = func(id chunk.ID, path string) {
		if seen[id] || walkErr != nil {
			return
		}
		if err := ctx.Err(); err != nil {
			walkErr = err
			return
		}
		seen[id] = true
		res.Trees++
		t, err := r.LoadTree(ctx, id)
		if err != nil {
			if !Damaged(err) {
				walkErr = err // the storage, not the tree
				return
			}
			res.problem("tree %s (%s): %v", id.Short(), path, err)
			return
		}
		for _, n := range t.Nodes {
			p := path + "/" + n.Name
			switch n.Type {
			case TypeDir:
				walk(n.Subtree, p)
			case TypeFile:
				var total uint64
				for _, b := range n.Content {
					loc, ok := r.index.Lookup(b)
					if !ok || loc.Type != DataBlob {
						res.problem("file %s: data blob %s is not in the index", p, b.Short())
						total = n.Size // reported already
						break
					}
					total += uint64(loc.RawLen)
				}
				if total != n.Size {
					res.problem("file %s: content adds up to %d bytes, its size is %d", p, total, n.Size)
				}
			}
		}
	}
	m := r.NewMeasurer()
	for _, ref := range refs {
		res.Snapshots++
		s, err := r.LoadSnapshot(ctx, ref)
		if err != nil {
			if !Damaged(err) {
				return nil, fmt.Errorf("check: %w", err)
			}
			res.problem("%v", err) // names the snapshot object
			continue
		}
		name := ref.Workspace + "@" + ref.ID.Short()
		walk(s.Tree, name)
		if walkErr != nil {
			return nil, fmt.Errorf("check: %w", walkErr)
		}
		if _, err := m.Measure(ctx, s.Tree, 0); errors.Is(err, ErrTooLarge) {
			res.problem("snapshot %s (%s): %v: a restore refuses it", ref.Key, name, err)
		} else if err != nil && !Damaged(err) {
			return nil, fmt.Errorf("check: %w", err)
		} // a damaged tree was reported by the walk
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
		if err := r.checkPackData(ctx, id, blobs, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// checkPackData reads one pack as a stream, checking its hash against its
// name and every blob the index locates in it against the blob's own;
// memory is one blob at a time, whatever the pack's size.
func (r *Repository) checkPackData(ctx context.Context, id chunk.ID, blobs []BlobEntry, res *CheckResult) error {
	key := PackKey(id)
	rc, err := r.st.Get(ctx, key, 0, -1)
	if err != nil {
		if !Damaged(err) && !errors.Is(err, storage.ErrNotFound) {
			return fmt.Errorf("check: %w", err)
		}
		res.problem("pack %s: %v", key, err)
		return nil
	}
	defer rc.Close()
	h := sha256.New()
	in := io.TeeReader(rc, h)
	slices.SortFunc(blobs, byOffset)
	var pos int64
	var stored, buf, frame []byte
	frameAt := int64(-1) // where the group frame in frame starts
	for _, b := range blobs {
		if b.Compression == chunk.ZstdGroup && int64(b.Offset) == frameAt {
			if frame == nil {
				continue // the frame is damaged: reported once
			}
			if _, err := r.BlobFromFrame(key, b, frame); err != nil {
				res.problem("%v", err)
			}
			continue
		}
		if int64(b.Offset) < pos {
			res.problem("pack %s: blob %s overlaps the one before it", key, b.ID.Short())
			continue
		}
		if _, err := io.CopyN(io.Discard, in, int64(b.Offset)-pos); err != nil {
			break // short pack: reported by the hash below
		}
		if cap(stored) < int(b.StoredLen) {
			stored = make([]byte, b.StoredLen)
		}
		stored = stored[:b.StoredLen]
		if _, err := io.ReadFull(in, stored); err != nil {
			break
		}
		pos = int64(b.Offset) + int64(b.StoredLen)
		if b.Compression == chunk.ZstdGroup {
			frameAt = int64(b.Offset)
			if frame, err = r.DecodeFrame(key, b, stored, frame[:0]); err != nil {
				res.problem("%v", err)
				frame = nil
				continue
			}
			if _, err := r.BlobFromFrame(key, b, frame); err != nil {
				res.problem("%v", err)
			}
			continue
		}
		if buf, err = r.DecodeBlob(key, b, stored, buf[:0]); err != nil {
			res.problem("%v", err)
		}
	}
	n, err := io.Copy(io.Discard, in)
	if err != nil {
		if ctx.Err() != nil || storage.IsTransient(err) {
			return fmt.Errorf("check: read %s: %w", key, err)
		}
		res.problem("pack %s: %v", key, err)
		return nil
	}
	res.PacksRead++
	res.PackBytesRead += pos + n
	if chunk.ID(h.Sum(nil)) != id {
		res.problem("pack %s: %v: content does not match its id", key, ErrCorrupt)
	}
	return nil
}
