// Package crafted plants hostile objects in real repositories, for the
// acceptance tests of the built binaries (cmd/backupctl, cmd/backupd):
// index bombs, expansion bombs, absurd counts and lengths, truncations.
// Each is built with the repository's own encoders where they can express
// it (repo.EncodeIndex, repo.EncodeTree, repo.NewPackBuilder, zstd) and by
// hand where they refuse, and stored under its correct content-addressed
// key in an owner's repository that a real backup made first, so that the
// config and every other object are genuine.
package crafted

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
)

// Attack is one crafted object (or a few, for a bomb made of many trees).
type Attack struct {
	// Name identifies the attack in test tables.
	Name string
	// Doc says what is planted.
	Doc string
	// Costly marks an attack that by the format's own bounds costs a
	// reader more than 100 MiB (an index object's entries: FORMAT.md,
	// Limits), for tests that order attacks by cost.
	Costly bool
	plant  func(p *planter) (Object, error)
}

// Object is what an attack planted. An error or problem about it names it
// when it holds one of Names: the stored object's key or id (8 hex digits
// suffice, as errors give ids; a key holds its id).
type Object struct {
	Names []string
}

// NamedIn reports whether msg names the object.
func (o Object) NamedIn(msg string) bool {
	for _, n := range o.Names {
		if strings.Contains(msg, n) {
			return true
		}
	}
	return false
}

func (o Object) String() string { return strings.Join(o.Names, " or ") }

// Plant plants the attack in the repository on st (one owner's storage),
// which a real backup of workspace made. Attacks on a snapshot plant a
// snapshot newer than every other, or damage the newest.
func (a Attack) Plant(ctx context.Context, st storage.Storage, owner, workspace string) (Object, error) {
	r, err := repo.Load(ctx, st, false)
	if err != nil {
		return Object{}, err
	}
	p := &planter{ctx: ctx, st: st, r: r, owner: owner, workspace: workspace}
	o, err := a.plant(p)
	if err != nil {
		return Object{}, fmt.Errorf("plant %s: %w", a.Name, err)
	}
	return o, nil
}

// Attacks lists every attack.
var Attacks = []Attack{
	{"index-bomb", "an index object of ~100 KB whose zstd body, one pack entry repeated, decompresses to 400 MiB (MaxIndexSize is 64 MiB)", true, indexBomb},
	{"index-bombs-4", "four index objects of ~20 KB, each a body of distinct pack entries decompressing to 72 MiB (the index is loaded 8 objects at a time)", true, indexBombs},
	{"index-count", "an index object whose pack claims 10^8 blobs in a body of one", false, indexCount},
	{"index-at-limits", "a valid index object at the writer's limits: 1,048,576 blobs in 262,144 packs, at the largest encodings (~58 MiB of body); it must load", true, indexAtLimits},
	{"index-rawlen-4GiB", "an index entry with raw_len and stored_len of 4 GiB - 1", false, indexRawLen},
	{"index-truncated", "the backup's index object cut in half", false, truncate(theIndexObject)},
	{"pack-trailer-4GiB", "a pack no index names whose footer claims a trailer of 4 GiB (102,261,126 entries)", false, packTrailer4GiB},
	{"pack-truncated", "the backup's data pack cut in half", false, truncate(packOf(repo.DataBlob))},
	{"treepack-truncated", "the backup's tree pack cut in half", false, truncate(packOf(repo.TreeBlob))},
	{"snapshot-truncated", "the backup's snapshot object cut in half", false, truncate(latestSnapshot)},
	{"expansion-bomb", "a snapshot whose tree names the same subtree twice at each of 40 levels (2^41 entries from 41 trees)", false, expansionBomb},
	{"depth-bomb", "a snapshot of MaxTreeDepth+1 nested directories", false, depthBomb},
	{"tree-nodes", "a snapshot whose root tree lists MaxTreeNodes+1 entries", false, treeNodes},
	{"tree-count", "a snapshot whose root tree claims 2^60 entries in 3 bytes", false, treeCount},
	{"blob-1000x", "a file whose data blob is a zstd frame of 4 MiB for a raw_len of 4 KiB", false, blob1000x},
	{"file-size", "a file of 1 TiB whose content is one blob of 4 KiB", false, fileSize},
	{"snapshot-100MB", "a snapshot object of 100 MB (MaxSnapshotSize is 1 MiB)", false, snapshot100MB},
	{"snapshot-1e6-tags", "a snapshot object with 10^6 tags (11 MB)", false, snapshotTags(1_000_000)},
	{"snapshot-65-tags", "a snapshot object of 1 KiB with 65 tags (MaxTags is 64)", false, snapshotTags(65)},
	{"config-10MB", "a config object of 10 MB (MaxConfigSize is 64 KiB)", false, config10MB},
}

// planter plants objects in one owner's repository.
type planter struct {
	ctx              context.Context
	st               storage.Storage
	r                *repo.Repository
	owner, workspace string
}

// id returns a deterministic id for a label.
func id(label string) chunk.ID { return chunk.Hash([]byte("crafted: " + label)) }

func short(id chunk.ID) string { return id.Short() }

func (p *planter) put(key string, b []byte) error {
	return p.st.Put(p.ctx, key, bytes.NewReader(b), int64(len(b)))
}

// putIndex stores an index object under its content-addressed key.
func (p *planter) putIndex(obj []byte) (Object, error) {
	key := "index/" + chunk.Hash(obj).String()
	return Object{Names: []string{key}}, p.put(key, obj)
}

// indexObject frames a raw index body as EncodeIndex does: the magic and
// one zstd frame.
func indexObject(body []byte) []byte {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	return enc.EncodeAll(body, []byte("BKPDIX01"))
}

// blobEntry is an index body's encoding of one blob.
func blobEntry(b []byte, e repo.BlobEntry) []byte {
	b = append(b, e.ID[:]...)
	b = append(b, byte(e.Type), byte(e.Compression))
	b = binary.AppendUvarint(b, uint64(e.Offset))
	b = binary.AppendUvarint(b, uint64(e.StoredLen))
	return binary.AppendUvarint(b, uint64(e.RawLen))
}

func indexBomb(p *planter) (Object, error) {
	// One pack entry of one valid blob, repeated: every entry parses, and
	// only the end of the body would show that the pack is listed twice,
	// so the decoder works and allocates until it has read MaxIndexSize.
	pack := id("bomb pack")
	entry := append(pack[:], 1)
	entry = blobEntry(entry, repo.BlobEntry{ID: id("bomb blob"), Type: repo.DataBlob, StoredLen: 1, RawLen: 1})
	obj, err := streamIndex(400, func(int) []byte { return entry })
	if err != nil {
		return Object{}, err
	}
	return p.putIndex(obj)
}

func indexBombs(p *planter) (Object, error) {
	// Distinct pack ids (a counter in the id's first bytes): nothing but
	// MaxIndexSize stops the decoder, as FORMAT.md's Limits reckon.
	var o Object
	for k := range 4 {
		entry := make([]byte, 0, 70)
		obj, err := streamIndex(72, func(i int) []byte {
			pack := id(fmt.Sprintf("bombs pack %d", k))
			binary.BigEndian.PutUint32(pack[:], uint32(i))
			entry = append(append(entry[:0], pack[:]...), 1)
			return blobEntry(entry, repo.BlobEntry{ID: id("bombs blob"), Type: repo.DataBlob, StoredLen: 1, RawLen: 1})
		})
		if err != nil {
			return Object{}, err
		}
		ok, err := p.putIndex(obj)
		if err != nil {
			return Object{}, err
		}
		o.Names = append(o.Names, ok.Names...)
	}
	return o, nil
}

// streamIndex returns an index object whose body is about mib MiB of the
// entries entry(0), entry(1), ..., in one streamed zstd frame (the header
// gives no content size, so the decoder finds out only as it goes).
func streamIndex(mib int, entry func(i int) []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("BKPDIX01")
	w, err := zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	unit := make([]byte, 0, 1<<20+100)
	for i, n := 0, 0; n < mib; n++ {
		unit = unit[:0]
		for len(unit) < 1<<20 {
			unit = append(unit, entry(i)...)
			i++
		}
		if _, err := w.Write(unit); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func indexCount(p *planter) (Object, error) {
	pack := id("count pack")
	body := append(pack[:], binary.AppendUvarint(nil, 100_000_000)...)
	body = blobEntry(body, repo.BlobEntry{ID: id("count blob"), Type: repo.DataBlob, StoredLen: 1, RawLen: 1})
	return p.putIndex(indexObject(body))
}

func indexAtLimits(p *planter) (Object, error) {
	// Offsets from 256 MiB (5-byte varints) and lengths of 8 MiB, the
	// repository's chunk_max_size (4-byte varints): 47 bytes per blob.
	max := p.r.Config().MaxBlobSize(repo.DataBlob)
	const perPack = repo.MaxIndexBlobs / repo.MaxIndexPacks
	packs := make([]repo.PackIndex, repo.MaxIndexPacks)
	entries := make([]repo.BlobEntry, repo.MaxIndexBlobs)
	var seed [8]byte
	for i := range packs {
		binary.LittleEndian.PutUint64(seed[:], uint64(i))
		packs[i].Pack = sha256.Sum256(append([]byte("limits pack "), seed[:]...))
		packs[i].Blobs = entries[i*perPack : (i+1)*perPack : (i+1)*perPack]
		for j := range packs[i].Blobs {
			binary.LittleEndian.PutUint64(seed[:], uint64(i*perPack+j))
			packs[i].Blobs[j] = repo.BlobEntry{ID: sha256.Sum256(append([]byte("limits blob "), seed[:]...)), Type: repo.DataBlob,
				Offset: 1<<28 + uint32(j)*max, StoredLen: max, RawLen: max}
		}
	}
	if parts := repo.SplitIndex(packs); len(parts) != 1 {
		return Object{}, fmt.Errorf("%d index objects, want one at the limits", len(parts))
	}
	return p.putIndex(repo.EncodeIndex(packs))
}

func indexRawLen(p *planter) (Object, error) {
	return p.putIndex(repo.EncodeIndex([]repo.PackIndex{{Pack: id("rawlen pack"), Blobs: []repo.BlobEntry{
		{ID: id("rawlen blob"), Type: repo.DataBlob, StoredLen: math.MaxUint32, RawLen: math.MaxUint32},
	}}}))
}

func packTrailer4GiB(p *planter) (Object, error) {
	blob := bytes.Repeat([]byte("trailer "), 16)
	b := repo.NewPackBuilder(1 << 10)
	b.Add(chunk.Hash(blob), repo.DataBlob, chunk.Raw, blob, len(blob))
	data, _, _ := b.Finish()
	const tlen = math.MaxUint32 / 42 * 42 // a whole number of entries, just under 4 GiB
	binary.LittleEndian.PutUint32(data[len(data)-repo.PackFooterSize:], tlen)
	key := repo.PackKey(chunk.Hash(data))
	return Object{Names: []string{key}}, p.put(key, data)
}

// truncate cuts the object found by find in half, under its key.
func truncate(find func(p *planter) (string, error)) func(p *planter) (Object, error) {
	return func(p *planter) (Object, error) {
		key, err := find(p)
		if err != nil {
			return Object{}, err
		}
		b, err := storage.ReadAll(p.ctx, p.st, key, 0, -1)
		if err != nil {
			return Object{}, err
		}
		return Object{Names: []string{key}}, p.put(key, b[:len(b)/2])
	}
}

func theIndexObject(p *planter) (string, error) {
	var keys []string
	err := p.st.List(p.ctx, "index/", func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err == nil && len(keys) != 1 {
		err = fmt.Errorf("%d index objects, want the backup's one", len(keys))
	}
	if err != nil {
		return "", err
	}
	return keys[0], nil
}

func packOf(t repo.BlobType) func(p *planter) (string, error) {
	return func(p *planter) (string, error) {
		var keys []string
		for pack, blobs := range p.r.Index().Packs() {
			if blobs[0].Type == t {
				keys = append(keys, repo.PackKey(pack))
			}
		}
		if len(keys) != 1 {
			return "", fmt.Errorf("%d %v packs, want the backup's one", len(keys), t)
		}
		return keys[0], nil
	}
}

func latestSnapshot(p *planter) (string, error) {
	refs, err := p.r.ListSnapshots(p.ctx, p.workspace)
	if err != nil {
		return "", err
	}
	if len(refs) == 0 {
		return "", errors.New("no snapshot")
	}
	return refs[len(refs)-1].Key, nil
}

// snapshotOf stores trees (leaves first, the root last; each encoded) in
// one tree pack with its index object, then a snapshot of the root, and
// returns the snapshot's id and the root's.
func (p *planter) snapshotOf(trees ...[]byte) (snap, root chunk.ID, err error) {
	b := repo.NewPackBuilder(1 << 20)
	for _, t := range trees {
		root = chunk.Hash(t)
		stored, comp := p.r.Codec().Compress(nil, t)
		b.Add(root, repo.TreeBlob, comp, stored, len(t))
	}
	if _, err = p.savePack(b); err != nil {
		return
	}
	snap, err = p.r.SaveSnapshot(p.ctx, &repo.Snapshot{Time: time.Now(), Tree: root, Owner: p.owner, Workspace: p.workspace,
		Host: "crafted", RootMode: 0o755})
	return snap, root, err
}

// savePack stores a pack and an index object naming it.
func (p *planter) savePack(b *repo.PackBuilder) (chunk.ID, error) {
	data, pack, entries := b.Finish()
	if err := p.r.SavePack(p.ctx, data, pack, entries); err != nil {
		return pack, err
	}
	_, err := p.r.SaveIndex(p.ctx, []repo.PackIndex{{Pack: pack, Blobs: entries}})
	return pack, err
}

func dir(name string, sub []byte) repo.Node {
	return repo.Node{Name: name, Type: repo.TypeDir, Mode: 0o755, Subtree: chunk.Hash(sub)}
}

func expansionBomb(p *planter) (Object, error) {
	trees := [][]byte{repo.EncodeTree(&repo.Tree{})}
	for range 40 {
		sub := trees[len(trees)-1]
		trees = append(trees, repo.EncodeTree(&repo.Tree{Nodes: []repo.Node{dir("a", sub), dir("b", sub)}}))
	}
	snap, root, err := p.snapshotOf(trees...)
	return Object{Names: []string{short(snap), short(root)}}, err
}

func depthBomb(p *planter) (Object, error) {
	trees := [][]byte{repo.EncodeTree(&repo.Tree{})}
	for range repo.MaxTreeDepth + 1 {
		trees = append(trees, repo.EncodeTree(&repo.Tree{Nodes: []repo.Node{dir("d", trees[len(trees)-1])}}))
	}
	snap, root, err := p.snapshotOf(trees...)
	return Object{Names: []string{short(snap), short(root)}}, err
}

func treeNodes(p *planter) (Object, error) {
	t := &repo.Tree{Nodes: make([]repo.Node, repo.MaxTreeNodes+1)}
	for i := range t.Nodes {
		t.Nodes[i] = repo.Node{Name: fmt.Sprintf("f%06d", i), Type: repo.TypeFIFO}
	}
	_, root, err := p.snapshotOf(repo.EncodeTree(t)) // EncodeTree does not count; EncodeTreeChecked would refuse
	return Object{Names: []string{short(root)}}, err
}

func treeCount(p *planter) (Object, error) {
	t := binary.AppendUvarint([]byte("BKPDTR01"), 1<<60)
	t = append(t, 1, 1, 'a')
	_, root, err := p.snapshotOf(t)
	return Object{Names: []string{short(root)}}, err
}

func blob1000x(p *planter) (Object, error) {
	raw := bytes.Repeat([]byte("1000x   "), 512) // 4 KiB
	var frame bytes.Buffer
	w, err := zstd.NewWriter(&frame, zstd.WithEncoderConcurrency(1)) // streamed: no content size in the header
	if err != nil {
		return Object{}, err
	}
	w.Write(make([]byte, 1000*len(raw)))
	if err := w.Close(); err != nil {
		return Object{}, err
	}
	b := repo.NewPackBuilder(1 << 10)
	b.Add(chunk.Hash(raw), repo.DataBlob, chunk.Zstd, frame.Bytes(), len(raw))
	pack, err := p.savePack(b)
	if err != nil {
		return Object{}, err
	}
	root := repo.EncodeTree(&repo.Tree{Nodes: []repo.Node{
		{Name: "bomb", Type: repo.TypeFile, Mode: 0o644, Size: uint64(len(raw)), Content: []chunk.ID{chunk.Hash(raw)}},
	}})
	_, _, err = p.snapshotOf(root)
	return Object{Names: []string{repo.PackKey(pack)}}, err
}

func fileSize(p *planter) (Object, error) {
	raw := bytes.Repeat([]byte("filesize"), 512)
	b := repo.NewPackBuilder(1 << 13)
	b.Add(chunk.Hash(raw), repo.DataBlob, chunk.Raw, raw, len(raw))
	if _, err := p.savePack(b); err != nil {
		return Object{}, err
	}
	root := repo.EncodeTree(&repo.Tree{Nodes: []repo.Node{
		{Name: "big", Type: repo.TypeFile, Mode: 0o644, Size: 1 << 40, Content: []chunk.ID{chunk.Hash(raw)}},
	}})
	snap, tree, err := p.snapshotOf(root)
	return Object{Names: []string{short(snap), short(tree)}}, err
}

// snapshotJSON is the newest genuine snapshot object as JSON, without its
// closing brace, dated now.
func (p *planter) snapshotJSON() ([]byte, error) {
	key, err := latestSnapshot(p)
	if err != nil {
		return nil, err
	}
	b, err := storage.ReadAll(p.ctx, p.st, key, 0, -1)
	if err != nil {
		return nil, err
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	s["time"] = time.Now().UTC()
	delete(s, "tags")
	if b, err = json.Marshal(s); err != nil {
		return nil, err
	}
	return b[:len(b)-1], nil
}

// putSnapshot stores a snapshot object under its content-addressed key,
// dated now.
func (p *planter) putSnapshot(obj []byte) (Object, error) {
	id := chunk.Hash(obj)
	key := fmt.Sprintf("snapshots/%s/%020d-%s", p.workspace, time.Now().UnixNano(), id)
	return Object{Names: []string{key, short(id)}}, p.put(key, obj)
}

func snapshot100MB(p *planter) (Object, error) {
	b, err := p.snapshotJSON()
	if err != nil {
		return Object{}, err
	}
	b = append(b, `,"path":"`...)
	b = append(b, bytes.Repeat([]byte{'a'}, 100_000_000)...)
	return p.putSnapshot(append(b, `"}`...))
}

func snapshotTags(n int) func(p *planter) (Object, error) {
	return func(p *planter) (Object, error) {
		b, err := p.snapshotJSON()
		if err != nil {
			return Object{}, err
		}
		b = append(b, `,"tags":{`...)
		for i := range n {
			if i > 0 {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `"t%d":"v"`, i)
		}
		b = append(b, "}}"...)
		return p.putSnapshot(b)
	}
}

func config10MB(p *planter) (Object, error) {
	b, err := storage.ReadAll(p.ctx, p.st, "config", 0, -1)
	if err != nil {
		return Object{}, err
	}
	b = bytes.TrimRight(b, "\n }")
	b = append(b, `,"padding":"`...)
	b = append(b, bytes.Repeat([]byte{'x'}, 10_000_000)...)
	b = append(b, `"}`...)
	return Object{Names: []string{"config"}}, p.put("config", b)
}
