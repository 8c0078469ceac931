package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sync/errgroup"

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

// Repository is one owner's repository on a storage.
type Repository struct {
	st     storage.Storage
	cfg    Config
	params chunk.Params
	codec  *chunk.Codec
	index  *Index
	trees  *treePackCache
	cache  *Cache // node-local, may be nil
}

// SetCache makes the repository keep index objects and tree packs in a
// node-local cache (nil turns it off).
func (r *Repository) SetCache(c *Cache) { r.cache = c }

// Open opens the repository on st (already scoped to the owner). It fails
// with ErrNoRepository when there is none.
func Open(ctx context.Context, st storage.Storage) (*Repository, error) {
	b, err := storage.ReadAll(ctx, st, configKey, 0, -1)
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
// existing one.
func Init(ctx context.Context, st storage.Storage, cfg Config) (*Repository, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if _, err := st.Stat(ctx, configKey); err == nil {
		return nil, errors.New("repository already exists")
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("check for existing repository: %w", err)
	}
	b, err := encodeConfig(cfg)
	if err != nil {
		return nil, err
	}
	if err := st.Put(ctx, configKey, bytes.NewReader(b), int64(len(b))); err != nil {
		return nil, fmt.Errorf("write repository config: %w", err)
	}
	return newRepository(st, cfg)
}

// OpenOrInit opens the repository on st, creating it with default
// parameters if it does not exist yet.
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
	if err != nil {
		// Another backup may have created it in the meantime.
		if r2, err2 := Open(ctx, st); err2 == nil {
			return r2, nil
		}
	}
	return r, err
}

func newRepository(st storage.Storage, cfg Config) (*Repository, error) {
	params, err := cfg.ChunkParams()
	if err != nil {
		return nil, err
	}
	codec, err := chunk.NewCodec(cfg.CompressionLevel)
	if err != nil {
		return nil, err
	}
	return &Repository{st: st, cfg: cfg, params: params, codec: codec, index: NewIndex(), trees: newTreePackCache(treePackCacheSize)}, nil
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

// LoadIndex reads every index object into the in-memory index, with up to
// parallel concurrent reads.
func (r *Repository) LoadIndex(ctx context.Context, parallel int) error {
	var keys []string
	err := r.st.List(ctx, indexPrefix, func(oi storage.ObjectInfo) error {
		keys = append(keys, oi.Key)
		return nil
	})
	if err != nil {
		return fmt.Errorf("list index: %w", err)
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(max(parallel, 1))
	for _, key := range keys {
		g.Go(func() error {
			id, err := chunk.ParseID(strings.TrimPrefix(key, indexPrefix))
			if err != nil {
				return fmt.Errorf("index object %s: %w: %v", key, ErrCorrupt, err)
			}
			b, cached := r.cache.get("index", id)
			if !cached {
				if b, err = storage.ReadAll(ctx, r.st, key, 0, -1); err != nil {
					return fmt.Errorf("read index: %w", err)
				}
				if chunk.Hash(b) != id {
					return fmt.Errorf("index object %s: %w: content does not match its id", key, ErrCorrupt)
				}
				r.cache.put("index", id, b)
			}
			packs, err := DecodeIndex(b)
			if err != nil {
				return fmt.Errorf("index object %s: %w", key, err)
			}
			for _, p := range packs {
				r.index.AddPack(p.Pack, p.Blobs)
			}
			return nil
		})
	}
	return g.Wait()
}

// SavePack stores a finished pack and records its blobs in the in-memory
// index once it is durable.
func (r *Repository) SavePack(ctx context.Context, data []byte, id chunk.ID, entries []BlobEntry) error {
	key := PackKey(id)
	if err := r.st.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("store pack: %w", err)
	}
	r.index.AddPack(id, entries)
	if len(entries) > 0 && entries[0].Type == TreeBlob {
		r.cache.put("trees", id, data) // the next backup here compares with these
	}
	return nil
}

// SaveIndex stores an index object for packs and returns its id.
func (r *Repository) SaveIndex(ctx context.Context, packs []PackIndex) (chunk.ID, error) {
	b := EncodeIndex(packs)
	id := chunk.Hash(b)
	if err := r.st.Put(ctx, indexPrefix+id.String(), bytes.NewReader(b), int64(len(b))); err != nil {
		return id, fmt.Errorf("store index: %w", err)
	}
	r.cache.put("index", id, b)
	return id, nil
}

// DecodeBlob decompresses a stored blob read from the pack at key, checks
// it against its id and appends it to buf. Errors name the pack object.
func (r *Repository) DecodeBlob(key string, e BlobEntry, stored, buf []byte) ([]byte, error) {
	if len(stored) != int(e.StoredLen) {
		return nil, fmt.Errorf("pack %s: blob %s: %w: read %d bytes, want %d", key, e.ID.Short(), ErrCorrupt, len(stored), e.StoredLen)
	}
	start := len(buf)
	out, err := r.codec.Decompress(buf, stored, e.Compression, int(e.RawLen))
	if err != nil {
		return nil, fmt.Errorf("pack %s: blob %s: %w: %v", key, e.ID.Short(), ErrCorrupt, err)
	}
	if chunk.Hash(out[start:]) != e.ID {
		return nil, fmt.Errorf("pack %s: blob %s: %w: content does not match its hash", key, e.ID.Short(), ErrCorrupt)
	}
	return out, nil
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
	if err != nil {
		return nil, fmt.Errorf("load tree: %w", err)
	}
	b, err := r.DecodeBlob(PackKey(loc.Pack), loc.BlobEntry, stored, nil)
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
	s.Version = FormatVersion
	if err := ValidateName("owner", s.Owner); err != nil {
		return chunk.ID{}, err
	}
	if err := ValidateName("workspace", s.Workspace); err != nil {
		return chunk.ID{}, err
	}
	if s.Time.UnixNano() <= 0 {
		return chunk.ID{}, fmt.Errorf("snapshot time %v is before 1970", s.Time)
	}
	b, err := encodeSnapshot(s)
	if err != nil {
		return chunk.ID{}, err
	}
	id := chunk.Hash(b)
	if err := r.st.Put(ctx, snapshotKey(s.Workspace, s.Time, id), bytes.NewReader(b), int64(len(b))); err != nil {
		return id, fmt.Errorf("store snapshot: %w", err)
	}
	return id, nil
}

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
	b, err := storage.ReadAll(ctx, r.st, ref.Key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("read snapshot %s: %w", ref.ID.Short(), err)
	}
	if chunk.Hash(b) != ref.ID {
		return nil, fmt.Errorf("snapshot %s: %w: content does not match its id", ref.Key, ErrCorrupt)
	}
	return decodeSnapshot(b)
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
	if err := r.LoadIndex(ctx, 8); err != nil {
		return nil, err
	}
	return r, nil
}
