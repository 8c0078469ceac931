package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
)

// ErrNoRepository means the owner has no repository yet (no config object).
var ErrNoRepository = errors.New("repository does not exist")

// ErrSnapshotNotFound means no snapshot matched.
var ErrSnapshotNotFound = errors.New("snapshot not found")

const (
	configKey   = "config"
	dataPrefix  = "data/"
	indexPrefix = "index/"
)

// Repository is one owner's repository on a storage. It is safe for
// concurrent use, and operations of one owner may share one (the daemon
// keeps each owner's open, Refresh bringing it up to date):
//   - the index is shared by all: it only grows (SavePack, Refresh), or is
//     replaced whole (ReloadIndex, Refresh), so that a lookup sees the old
//     index or the new, never a mix;
//   - what belongs to one backup is in its Session (the lease, the
//     commit) and in pkg/sync's state, not here;
//   - the condemned blobs are the repository's: each BeginSession puts in
//     place those of the prune state it read, once the index is fresh, so
//     that a backup begun under an older state still avoids what a prune
//     deleted (R2 in FORMAT.md: the fresh index no longer names it);
//   - packs adopted by a load are handed out once (TakeAdopted), and a
//     pack given twice to SaveIndex is written once;
//   - IndexReport is the last whole load's, whoever caused it.
type Repository struct {
	st     storage.Storage
	cfg    Config
	params chunk.Params
	codec  *chunk.Codec
	index  *Index
	trees  *treePackCache
	frames *frameCache // decoded groups of trees
	cache  *Cache      // node-local, may be nil

	adoptMu sync.Mutex
	report  IndexReport // of the last LoadIndex
	adopted []PackIndex // packs indexed from trailers, not yet in a new index object
	// reloadMu serialises loading the index again (ReloadIndex) and
	// refreshing it (Refresh).
	reloadMu sync.Mutex
	// seen holds the keys of the index objects whose packs the in-memory
	// index holds (loaded, or written by SaveIndex): Refresh reads only
	// the others. It is replaced with the index, under seenMu.
	seenMu sync.Mutex
	seen   map[string]bool

	condemned condemnedSet // blobs a standing prune condemned (see Usable)
	// indexPrune is the prune state read just before the index was
	// loaded (nil: unknown); BeginSession loads the index again if it
	// finds another.
	indexPrune atomic.Pointer[pruneState]
}

// SetCache makes the repository keep index objects and tree packs in a
// node-local cache (nil turns it off).
func (r *Repository) SetCache(c *Cache) {
	r.cache = c
	dir := "" // the index spills to the cache's directory, else the system's
	if c != nil {
		dir = c.dir
	}
	r.index.setDir(dir)
}

// Open opens the repository on st (already scoped to the owner). It fails
// with ErrNoRepository when there is none.
func Open(ctx context.Context, st storage.Storage) (*Repository, error) {
	b, err := readObject(ctx, st, configKey, MaxConfigSize)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNoRepository
	}
	if err != nil {
		return nil, fmt.Errorf("read repository config: %w", err)
	}
	cfg, err := decodeConfig(b)
	if err != nil {
		return nil, err
	}
	return newRepository(st, cfg)
}

// Init creates a repository with cfg on st. It refuses to overwrite an
// existing one: the config object is written create-only, so of several
// writers racing to create the repository exactly one succeeds
// (ErrRepositoryExists for the others).
func Init(ctx context.Context, st storage.Storage, cfg Config) (*Repository, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b, err := encodeConfig(cfg)
	if err != nil {
		return nil, err
	}
	if err := st.PutIfAbsent(ctx, configKey, bytes.NewReader(b), int64(len(b))); errors.Is(err, storage.ErrExists) {
		return nil, ErrRepositoryExists
	} else if err != nil {
		return nil, fmt.Errorf("write repository config: %w", err)
	}
	return newRepository(st, cfg)
}

// ErrRepositoryExists means Init found a repository already there.
var ErrRepositoryExists = errors.New("repository already exists")

// OpenOrInit opens the repository on st, creating it with default
// parameters if it does not exist yet. Concurrent first backups of an
// owner all end up with the one config that was written first.
func OpenOrInit(ctx context.Context, st storage.Storage) (*Repository, error) {
	r, err := Open(ctx, st)
	if !errors.Is(err, ErrNoRepository) {
		return r, err
	}
	cfg, err := NewConfig(0, 0)
	if err != nil {
		return nil, err
	}
	r, err = Init(ctx, st, cfg)
	if errors.Is(err, ErrRepositoryExists) {
		// Another backup created it in the meantime (or a retry of ours
		// did, after a lost reply): use what is stored.
		return Open(ctx, st)
	}
	return r, err
}

func newRepository(st storage.Storage, cfg Config) (*Repository, error) {
	params, err := cfg.ChunkParams()
	if err != nil {
		return nil, err
	}
	codec, err := newCodec(cfg)
	if err != nil {
		return nil, err
	}
	return &Repository{st: st, cfg: cfg, params: params, codec: codec, index: NewIndex(), trees: newTreePackCache(treePackCacheSize), frames: newFrameCache(frameCacheSize)}, nil
}

// newCodec returns a compressor for cfg's repository.
func newCodec(cfg Config) (*chunk.Codec, error) {
	return chunk.NewCodecMax(cfg.CompressionLevel, int(max(cfg.MaxBlobSize(DataBlob), MaxTreeSize)))
}

// MemBytes estimates the memory the repository holds: its index
// (Index.MemBytes), the tree packs and decoded tree groups it keeps for
// the operation under way, a standing prune's condemned blobs and the
// index objects it has read.
func (r *Repository) MemBytes() int64 {
	r.seenMu.Lock()
	seen := len(r.seen)
	r.seenMu.Unlock()
	return r.index.MemBytes() + int64(r.trees.bytes()) + int64(r.frames.bytes()) + int64(r.condemned.len())*chunk.IDSize + int64(seen)*160
}

// Trim drops what the repository keeps for the operations that use it,
// not for the next: the tree packs, the decoded tree groups, the
// compressor's state and a standing prune's condemned blobs (the next
// backup's BeginSession reads them again). Call it only when no
// operation uses the repository (nor holds its Codec).
func (r *Repository) Trim() {
	r.trees.clear()
	r.frames.clear()
	r.condemned.set(nil)
	// A compressor that was used keeps its zstd encoders' and decoders'
	// state (megabytes each); a new one allocates them when first used.
	if c, err := newCodec(r.cfg); err == nil {
		r.codec = c
	}
}

// Config returns the repository's config.
func (r *Repository) Config() Config { return r.cfg }

// ChunkParams returns the repository's chunker parameters.
func (r *Repository) ChunkParams() chunk.Params { return r.params }

// Codec returns the repository's compressor.
func (r *Repository) Codec() *chunk.Codec { return r.codec }

// Index returns the in-memory index (filled by LoadIndex and SavePack).
func (r *Repository) Index() *Index { return r.index }

// Storage returns the storage the repository lives on.
func (r *Repository) Storage() storage.Storage { return r.st }

// PackKey returns the storage key of a pack.
func PackKey(id chunk.ID) string {
	s := id.String()
	return dataPrefix + s[:2] + "/" + s
}

// SavePack stores a finished pack and records its blobs in the in-memory
// index once it is durable.
func (r *Repository) SavePack(ctx context.Context, data []byte, id chunk.ID, entries []BlobEntry) error {
	key := PackKey(id)
	// id is the SHA-256 of data: a backend may send it rather than hash
	// the pack again, and the service refuses the pack should they differ.
	if err := r.st.Put(storage.WithContentSHA256(ctx, id), key, bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("store pack: %w", err)
	}
	r.index.AddPack(id, entries)
	if len(entries) > 0 && entries[0].Type == TreeBlob {
		r.cache.put("trees", id, data) // the next backup here compares with these
	}
	return nil
}

// SaveIndex stores index objects for packs, as many as the limits of one
// index object need (SplitIndex), and returns their ids. A pack given
// twice is written once (readers refuse an index object naming a pack
// twice): a backup's own pack may also come back from TakeAdopted when a
// Refresh listed it between its upload and its entry in the index. An
// object whose packs the in-memory index holds is not read again by
// Refresh.
func (r *Repository) SaveIndex(ctx context.Context, packs []PackIndex) ([]chunk.ID, error) {
	packs = uniquePacks(packs)
	var ids []chunk.ID
	for _, part := range SplitIndex(packs) {
		b := EncodeIndex(part)
		id := chunk.Hash(b)
		key := indexPrefix + id.String()
		if err := r.st.Put(storage.WithContentSHA256(ctx, id), key, bytes.NewReader(b), int64(len(b))); err != nil {
			return ids, fmt.Errorf("store index: %w", err)
		}
		r.cache.put("index", id, b)
		r.markSeen(key, part)
		ids = append(ids, id)
	}
	return ids, nil
}

// uniquePacks returns packs with each pack id once (its first entry).
func uniquePacks(packs []PackIndex) []PackIndex {
	seen := make(map[chunk.ID]bool, len(packs))
	dup := false
	for _, p := range packs {
		if seen[p.Pack] {
			dup = true
			break
		}
		seen[p.Pack] = true
	}
	if !dup {
		return packs
	}
	clear(seen)
	out := make([]PackIndex, 0, len(packs))
	for _, p := range packs {
		if !seen[p.Pack] {
			seen[p.Pack] = true
			out = append(out, p)
		}
	}
	return out
}

// DecodeBlob decompresses a stored blob read from the pack at key, checks
// it against its id and appends it to buf. Errors name the pack object.
// A grouped blob's stored bytes are its group's frame, which is
// decompressed whole (DecodeFrame); readers of several blobs of one group
// decode the frame once and take each blob with BlobFromFrame.
func (r *Repository) DecodeBlob(key string, e BlobEntry, stored, buf []byte) ([]byte, error) {
	if len(stored) != int(e.StoredLen) {
		return nil, fmt.Errorf("pack %s: blob %s: %w: read %d bytes, want %d", key, e.ID.Short(), ErrCorrupt, len(stored), e.StoredLen)
	}
	if e.Compression == chunk.ZstdGroup {
		frame, err := r.DecodeFrame(key, e, stored, nil)
		if err != nil {
			return nil, err
		}
		b, err := r.BlobFromFrame(key, e, frame)
		if err != nil {
			return nil, err
		}
		return append(buf, b...), nil
	}
	start := len(buf)
	out, err := r.codec.DecompressMax(buf, stored, e.Compression, int(e.RawLen), int(r.cfg.MaxBlobSize(e.Type)))
	if err != nil {
		return nil, fmt.Errorf("pack %s: blob %s: %w: %v", key, e.ID.Short(), ErrCorrupt, err)
	}
	if chunk.Hash(out[start:]) != e.ID {
		return nil, fmt.Errorf("pack %s: blob %s: %w: content does not match its hash", key, e.ID.Short(), ErrCorrupt)
	}
	return out, nil
}

// DecodeFrame decompresses the group frame that holds the grouped blob e
// (stored: the frame's StoredLen bytes) into buf's memory and returns its
// whole content. The frame must declare its content size, at most
// MaxGroupSize and enough to hold e; it is decoded into exactly that room.
// Errors wrap ErrCorrupt and name the pack object.
func (r *Repository) DecodeFrame(key string, e BlobEntry, stored, buf []byte) ([]byte, error) {
	if len(stored) != int(e.StoredLen) {
		return nil, fmt.Errorf("pack %s: group of blob %s: %w: read %d bytes, want %d", key, e.ID.Short(), ErrCorrupt, len(stored), e.StoredLen)
	}
	var h zstd.Header
	if err := h.Decode(stored); err != nil || !h.HasFCS {
		return nil, fmt.Errorf("pack %s: group of blob %s: %w: zstd frame header without a content size (%v)", key, e.ID.Short(), ErrCorrupt, err)
	}
	if n := h.FrameContentSize; n > MaxGroupSize || n < uint64(e.RawOffset)+uint64(e.RawLen) {
		return nil, fmt.Errorf("pack %s: group of blob %s: %w: frame of %d bytes, want %d to %d", key, e.ID.Short(), ErrCorrupt, n, uint64(e.RawOffset)+uint64(e.RawLen), MaxGroupSize)
	}
	out, err := r.codec.DecompressMax(buf[:0], stored, chunk.Zstd, int(h.FrameContentSize), MaxGroupSize)
	if err != nil {
		return nil, fmt.Errorf("pack %s: group of blob %s: %w: %v", key, e.ID.Short(), ErrCorrupt, err)
	}
	return out, nil
}

// BlobFromFrame returns the grouped blob e from the content of its frame
// (what DecodeFrame returned), checked against its id. The result is a
// slice of frame.
func (r *Repository) BlobFromFrame(key string, e BlobEntry, frame []byte) ([]byte, error) {
	end := uint64(e.RawOffset) + uint64(e.RawLen)
	if e.Compression != chunk.ZstdGroup || end > uint64(len(frame)) || e.RawLen > r.cfg.MaxBlobSize(e.Type) {
		return nil, fmt.Errorf("pack %s: blob %s: %w: bytes %d to %d of a group of %d", key, e.ID.Short(), ErrCorrupt, e.RawOffset, end, len(frame))
	}
	b := frame[e.RawOffset:end:end]
	if chunk.Hash(b) != e.ID {
		return nil, fmt.Errorf("pack %s: blob %s: %w: content does not match its hash", key, e.ID.Short(), ErrCorrupt)
	}
	return b, nil
}

// LoadTree fetches, verifies and decodes a tree blob. Tree packs are read
// whole and kept in a bounded cache, so walking a snapshot costs about one
// read per tree pack rather than one per directory.
func (r *Repository) LoadTree(ctx context.Context, id chunk.ID) (*Tree, error) {
	loc, ok := r.index.Lookup(id)
	if !ok || loc.Type != TreeBlob {
		return nil, fmt.Errorf("load tree %s: %w: not in the index as a tree", id.Short(), ErrCorrupt)
	}
	stored, err := r.loadTreeBlob(ctx, loc)
	if errors.Is(err, storage.ErrNotFound) {
		// The pack is gone: a prune rewrote it since the index was
		// loaded. The index names where the tree is now.
		if rerr := r.ReloadIndex(ctx); rerr != nil {
			return nil, fmt.Errorf("load tree: %w (loading the index again: %v)", err, rerr)
		}
		if loc, ok = r.index.Lookup(id); !ok || loc.Type != TreeBlob {
			return nil, fmt.Errorf("load tree %s: %w: its pack is gone and no other holds it", id.Short(), ErrCorrupt)
		}
		stored, err = r.loadTreeBlob(ctx, loc)
	}
	if err != nil {
		return nil, fmt.Errorf("load tree: %w", err)
	}
	var b []byte
	if loc.Compression == chunk.ZstdGroup {
		b, err = r.treeFromGroup(loc, stored)
	} else {
		b, err = r.DecodeBlob(PackKey(loc.Pack), loc.BlobEntry, stored, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("load tree: %w", err)
	}
	t, err := DecodeTree(b)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	return t, nil
}

// SaveSnapshot stores a snapshot object (the last write of a backup) and
// returns its id.
func (r *Repository) SaveSnapshot(ctx context.Context, s *Snapshot) (chunk.ID, error) {
	b, key, id, err := prepareSnapshot(s)
	if err != nil {
		return chunk.ID{}, err
	}
	return id, r.putSnapshot(ctx, key, id, b)
}

// prepareSnapshot checks and encodes a snapshot, and returns its bytes,
// key and id.
func prepareSnapshot(s *Snapshot) ([]byte, string, chunk.ID, error) {
	s.Version = SnapshotVersion
	if err := ValidateName("owner", s.Owner); err != nil {
		return nil, "", chunk.ID{}, err
	}
	if err := ValidateName("workspace", s.Workspace); err != nil {
		return nil, "", chunk.ID{}, err
	}
	if s.Time.UnixNano() <= 0 {
		return nil, "", chunk.ID{}, fmt.Errorf("snapshot time %v is before 1970", s.Time)
	}
	b, err := encodeSnapshot(s)
	if err != nil {
		return nil, "", chunk.ID{}, err
	}
	id := chunk.Hash(b)
	return b, snapshotKey(s.Workspace, s.Time, id), id, nil
}

// putSnapshot stores the encoded snapshot b under key.
func (r *Repository) putSnapshot(ctx context.Context, key string, id chunk.ID, b []byte) error {
	err := r.st.Put(ctx, key, bytes.NewReader(b), int64(len(b)))
	if err == nil {
		return nil
	}
	// A failure after the object was stored (a lost reply, a directory
	// fsync that failed after the rename) leaves the snapshot in place:
	// say so, rather than that none was written.
	vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if got, verr := storage.ReadAll(vctx, r.st, key, 0, -1); verr == nil && bytes.Equal(got, b) {
		return fmt.Errorf("%w: snapshot %s (storage reported: %v)", ErrSnapshotUnconfirmed, id.Short(), err)
	}
	return fmt.Errorf("store snapshot: %w", err)
}

// ErrSnapshotUnconfirmed means a snapshot object is stored and reads back
// intact, though the write reported an error (a reply lost, a directory
// sync failed after the object was in place): the backup has its
// snapshot, and durability across a crash of the storage is not confirmed.
var ErrSnapshotUnconfirmed = errors.New("snapshot stored, but its write reported an error")

// ListSnapshots lists the snapshots of one workspace, or of all workspaces
// when workspace is "", oldest first.
func (r *Repository) ListSnapshots(ctx context.Context, workspace string) ([]SnapshotRef, error) {
	p := snapshotsPrefix
	if workspace != "" {
		if err := ValidateName("workspace", workspace); err != nil {
			return nil, err
		}
		p += workspace + "/"
	}
	var refs []SnapshotRef
	err := r.st.List(ctx, p, func(oi storage.ObjectInfo) error {
		ref, err := parseSnapshotKey(oi.Key)
		if err != nil {
			return err
		}
		refs = append(refs, ref)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	sort.Slice(refs, func(i, j int) bool {
		if !refs[i].Time.Equal(refs[j].Time) {
			return refs[i].Time.Before(refs[j].Time)
		}
		return refs[i].Key < refs[j].Key
	})
	return refs, nil
}

// LoadSnapshot reads and verifies one snapshot object.
func (r *Repository) LoadSnapshot(ctx context.Context, ref SnapshotRef) (*Snapshot, error) {
	b, err := readObject(ctx, r.st, ref.Key, MaxSnapshotSize)
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", ref.ID.Short(), err)
	}
	if chunk.Hash(b) != ref.ID {
		return nil, fmt.Errorf("snapshot %s: %w: content does not match its id", ref.Key, ErrCorrupt)
	}
	s, err := decodeSnapshot(b)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", ref.Key, err)
	}
	return s, nil
}

// FindSnapshot resolves "latest", a full id or a unique id prefix (at least
// 4 hex digits) among a workspace's snapshots ("" searches all workspaces).
func (r *Repository) FindSnapshot(ctx context.Context, workspace, idOrLatest string) (*Snapshot, SnapshotRef, error) {
	refs, err := r.ListSnapshots(ctx, workspace)
	if err != nil {
		return nil, SnapshotRef{}, err
	}
	var found []SnapshotRef
	switch {
	case idOrLatest == "" || idOrLatest == "latest":
		if len(refs) > 0 {
			found = refs[len(refs)-1:]
		}
	case len(idOrLatest) < 4:
		return nil, SnapshotRef{}, fmt.Errorf("snapshot id %q too short: give at least 4 hex digits", idOrLatest)
	default:
		for _, ref := range refs {
			if strings.HasPrefix(ref.ID.String(), strings.ToLower(idOrLatest)) {
				found = append(found, ref)
			}
		}
	}
	switch len(found) {
	case 0:
		where := "workspace " + workspace
		if workspace == "" {
			where = "repository"
		}
		return nil, SnapshotRef{}, fmt.Errorf("%w: %s in %s", ErrSnapshotNotFound, idOrLatest, where)
	case 1:
		s, err := r.LoadSnapshot(ctx, found[0])
		return s, found[0], err
	default:
		return nil, SnapshotRef{}, fmt.Errorf("snapshot id prefix %q is ambiguous (%d matches)", idOrLatest, len(found))
	}
}

// Damaged reports whether err, from reading one object, is about that
// object (damaged, crafted, or of a format version this code does not
// read) rather than about reaching the storage: such an object can be
// passed over, named, and repaired, while a storage failure fails the
// whole operation.
func Damaged(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrVersion)
}

// LatestSnapshot returns the newest snapshot of workspace that can be
// read. Newer ones that are damaged are passed over, each reported to
// skipped (which may be nil); a storage failure is an error. With no
// readable snapshot it fails with ErrSnapshotNotFound.
func (r *Repository) LatestSnapshot(ctx context.Context, workspace string, skipped func(SnapshotRef, error)) (*Snapshot, SnapshotRef, error) {
	refs, err := r.ListSnapshots(ctx, workspace)
	if err != nil {
		return nil, SnapshotRef{}, err
	}
	for i := len(refs) - 1; i >= 0; i-- {
		s, err := r.LoadSnapshot(ctx, refs[i])
		switch {
		case err == nil:
			return s, refs[i], nil
		case Damaged(err) || errors.Is(err, storage.ErrNotFound):
			if skipped != nil {
				skipped(refs[i], err)
			}
		default:
			return nil, SnapshotRef{}, err
		}
	}
	return nil, SnapshotRef{}, fmt.Errorf("%w: no readable snapshot of workspace %s", ErrSnapshotNotFound, workspace)
}

// ListOwners returns the owners that have a repository under root. It lists
// every key under root, so it is meant for inspection, not hot paths.
func ListOwners(ctx context.Context, root storage.Storage) ([]string, error) {
	var owners []string
	err := root.List(ctx, "", func(oi storage.ObjectInfo) error {
		if o, ok := strings.CutSuffix(oi.Key, "/"+configKey); ok && !strings.Contains(o, "/") {
			owners = append(owners, o)
		}
		return nil
	})
	sort.Strings(owners)
	return owners, err
}

// Load opens the repository on st (one owner's storage) and loads its
// index. With create (a first backup), a missing repository is created;
// without, it is ErrNoRepository.
func Load(ctx context.Context, st storage.Storage, create bool) (*Repository, error) {
	return LoadCached(ctx, st, create, "", 0)
}

// LoadCached is Load with a node-local cache of index objects and tree
// packs under cacheDir ("" for none), bounded to cacheSize bytes (0 for
// DefaultCacheSize).
func LoadCached(ctx context.Context, st storage.Storage, create bool, cacheDir string, cacheSize int64) (*Repository, error) {
	r, err := OpenCached(ctx, st, create, cacheDir, cacheSize)
	if err != nil {
		return nil, err
	}
	if err := r.LoadIndex(ctx, 8); err != nil {
		return nil, err
	}
	return r, nil
}

// OpenCached is LoadCached without loading the index, for what loads the
// index its own way (Prune).
func OpenCached(ctx context.Context, st storage.Storage, create bool, cacheDir string, cacheSize int64) (*Repository, error) {
	var r *Repository
	var err error
	if create {
		r, err = OpenOrInit(ctx, st)
	} else {
		r, err = Open(ctx, st)
	}
	if errors.Is(err, ErrNoRepository) {
		return nil, fmt.Errorf("%w (it is created by the first backup)", err)
	}
	if err != nil {
		return nil, err
	}
	if cacheDir != "" {
		if cacheSize <= 0 {
			cacheSize = DefaultCacheSize
		}
		c, err := OpenCache(cacheDir, r.cfg.ID, cacheSize)
		if err != nil {
			return nil, err
		}
		r.SetCache(c)
	}
	return r, nil
}
