// Package repo is backupd's repository format: the config, pack, index, tree
// and snapshot objects described in docs/FORMAT.md, and the Repository type
// that reads and writes them through a storage.Storage. It is the only
// package that encodes or decodes these objects.
package repo

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/restic/chunker"
)

// FormatVersion is the repository format this code writes in a new
// repository: version 2 adds groups (small blobs stored together in one
// zstd frame, FORMAT.md "Groups"); version 3 adds compact pack trailers
// (no id for grouped blobs, FORMAT.md "Pack objects"). Older repositories
// are read and written as before, without what their version lacks, so
// that older binaries keep reading them.
const FormatVersion = 3

// MinFormatVersion is the oldest repository format this code reads.
const MinFormatVersion = 1

// SnapshotVersion is the version of snapshot objects, unchanged by format
// version 2.
const SnapshotVersion = 1

// DefaultPackSize is the target size of pack objects: large enough to keep
// objects under 100 per GB, small enough to upload and retry cheaply.
const DefaultPackSize = 16 << 20

// Limits of the repository format (docs/FORMAT.md, "Limits"). Stored objects
// may be damaged or crafted, and one daemon decodes many owners' objects, so
// every decoder refuses an object beyond these before it allocates or works
// for it, and every writer stays within them. Each bounds the memory and
// work that one object can cost.
const (
	// MaxDataBlobSize is the format's hard cap on a data blob's raw length.
	// A repository's own cap is its config's chunk_max_size (8 MiB by
	// default), which may not exceed this; readers that have the config use
	// Config.MaxBlobSize, others this.
	MaxDataBlobSize = chunk.MaxBlobSize // 16 MiB

	// MaxTreeSize is the largest tree blob (raw, encoded): about 80,000
	// entries of typical size (a file with one content blob, times, inode,
	// owner: ~100 bytes), or one file of about 250,000 content blobs. With
	// MaxTreeNodes and MaxTreeXattrs it keeps a decoded tree under ~40 MiB.
	MaxTreeSize = 8 << 20
	// MaxTreeNodes is the most entries one tree (directory) may list; a
	// decoded Node costs 176 bytes whatever its encoded size (6 bytes at
	// least), so this, not MaxTreeSize, bounds a tree of tiny entries.
	MaxTreeNodes = 1 << 17
	// MaxTreeXattrs is the most extended attributes the entries of one tree
	// may carry together (a decoded Xattr costs 40 bytes, 3 encoded at least).
	MaxTreeXattrs = 1 << 17
	// MaxFileBlobs is the most content blobs one file may list.
	MaxFileBlobs = MaxTreeSize / chunk.IDSize
	// MaxNameLen is the longest entry name in bytes (Linux NAME_MAX).
	MaxNameLen = 255
	// MaxTargetLen is the longest symlink target in bytes (Linux PATH_MAX
	// less its NUL); an empty target is refused too.
	MaxTargetLen = 4095
	// MaxXattrNameLen is the longest extended attribute name in bytes (Linux
	// XATTR_NAME_MAX).
	MaxXattrNameLen = 255
	// MaxXattrValueLen is the longest extended attribute value in bytes
	// (Linux XATTR_SIZE_MAX).
	MaxXattrValueLen = 64 << 10
	// MaxXattrListLen bounds the names of one entry's extended attributes,
	// each counted with a terminating NUL, as Linux's listxattr does
	// (XATTR_LIST_MAX).
	MaxXattrListLen = 64 << 10

	// MaxIndexSize is the largest decompressed body of one index object.
	// Decoded, a body costs up to ~2.6 times its size (48 bytes per blob
	// entry of 37 to 49), and a crafted one of counter ids reaches the
	// limit from a fraction of its size in zstd: 16 MiB keeps one object
	// under ~45 MiB however it was made. A reader that meets a larger one
	// (older writers made bodies of up to one backup's whole index) passes
	// it over and indexes its packs from their trailers.
	MaxIndexSize = 16 << 20
	// MaxIndexObjectSize is the largest index object as stored: the magic
	// and a zstd frame of at most MaxIndexSize (stored raw blocks add 3
	// bytes per 128 KiB).
	MaxIndexObjectSize = MaxIndexSize + 1<<20
	// MaxIndexBlobs and MaxIndexPacks are the most blob entries and pack
	// entries a writer puts in one index object: at the largest encoding of
	// each (49 and 35 bytes) they stay under MaxIndexSize. SplitIndex
	// splits a longer list.
	MaxIndexBlobs = 1 << 18
	MaxIndexPacks = 1 << 16

	// MaxGroupSize is the largest raw content of one group frame (the
	// blobs stored together in one zstd frame, FORMAT.md "Groups"): what
	// a reader decompresses to reach any one of them.
	MaxGroupSize = 2 << 20
	// MaxPackBlobs is the most blobs one pack may hold, so that its trailer
	// stays under MaxPackTrailerSize; writers close a pack on reaching it
	// (or pack_size, whichever comes first).
	MaxPackBlobs = 1 << 18
	// MaxPackTrailerSize is the longest pack trailer (10.5 MiB).
	MaxPackTrailerSize = MaxPackBlobs * trailerEntry

	// MaxSnapshotSize is the largest snapshot object.
	MaxSnapshotSize = 1 << 20
	// MaxTags, MaxTagKeyLen and MaxTagValueLen bound a snapshot's tags (the
	// daemon's request limits): keys are 1 to 128 bytes without '=' or NUL.
	MaxTags        = 64
	MaxTagKeyLen   = 128
	MaxTagValueLen = 1024
	// MaxHostLen and MaxPathLen bound a snapshot's host and path.
	MaxHostLen = 255
	MaxPathLen = 4096
	// MaxUnreadable, MaxUnreadableBytes and MaxUnreadableReasonLen bound a
	// snapshot's list of unreadable entries: at most 1,000 entries, of
	// paths and reasons of at most 64 KiB together, reasons of at most 256
	// bytes each. With every other field at its limit and every byte
	// escaped (6 bytes in JSON) the object stays within MaxSnapshotSize.
	MaxUnreadable          = 1000
	MaxUnreadableBytes     = 64 << 10
	MaxUnreadableReasonLen = 256
	// MaxRecent and MaxRecentBytes bound a snapshot's list of recently
	// modified files (Snapshot.Recent): 256 paths, 16 KiB together, which
	// keeps the object within MaxSnapshotSize with every other field at
	// its limit.
	MaxRecent      = 256
	MaxRecentBytes = 16 << 10

	// MaxConfigSize is the largest config object.
	MaxConfigSize = 64 << 10
)

// ErrVersion marks objects of a format version this code does not read.
var ErrVersion = errors.New("unsupported repository format version")

// Config is the repository's config object.
type Config struct {
	Version          int       `json:"version"`
	ID               string    `json:"id"`
	Created          time.Time `json:"created"`
	Polynomial       string    `json:"chunker_polynomial"`
	ChunkMinSize     uint      `json:"chunk_min_size"`
	ChunkMaxSize     uint      `json:"chunk_max_size"`
	ChunkAverageBits int       `json:"chunk_average_bits"`
	Compression      string    `json:"compression"`
	CompressionLevel int       `json:"compression_level"`
	PackSize         int       `json:"pack_size"`
}

// NewConfig returns the config of a new repository: a random id and chunker
// polynomial, default sizes, and the given compression level and pack size
// (zero means the default).
func NewConfig(level, packSize int) (Config, error) {
	p, err := chunk.NewParams()
	if err != nil {
		return Config{}, err
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return Config{}, fmt.Errorf("draw repository id: %w", err)
	}
	if level == 0 {
		level = int(chunk.DefaultLevel)
	}
	if packSize == 0 {
		packSize = DefaultPackSize
	}
	c := Config{
		Version:          FormatVersion,
		ID:               hex.EncodeToString(id[:]),
		Created:          time.Now().UTC(),
		Polynomial:       strconv.FormatUint(uint64(p.Polynomial), 16),
		ChunkMinSize:     p.MinSize,
		ChunkMaxSize:     p.MaxSize,
		ChunkAverageBits: p.AverageBits,
		Compression:      "zstd",
		CompressionLevel: level,
		PackSize:         packSize,
	}
	return c, c.Validate()
}

// ChunkParams returns the chunker parameters the config fixes.
func (c Config) ChunkParams() (chunk.Params, error) {
	k := chunkParamsKey{c.Polynomial, c.ChunkMinSize, c.ChunkMaxSize, c.ChunkAverageBits}
	validChunkParams.mu.Lock()
	p, ok := validChunkParams.m[k]
	validChunkParams.mu.Unlock()
	if ok {
		return p, nil
	}
	p, err := c.chunkParams()
	if err == nil {
		validChunkParams.mu.Lock()
		if len(validChunkParams.m) >= maxChunkParams {
			clear(validChunkParams.m) // a node serving that many owners checks again
		}
		validChunkParams.m[k] = p
		validChunkParams.mu.Unlock()
	}
	return p, err
}

// chunkParamsKey is what of a config makes its chunker parameters.
type chunkParamsKey struct {
	polynomial       string
	minSize, maxSize uint
	averageBits      int
}

// validChunkParams remembers the chunker parameters of the configs
// checked: telling that a polynomial is irreducible takes milliseconds of
// CPU, and the daemon reads and checks a config for every ListSnapshots.
// One entry per repository (each config has a random polynomial), at
// most maxChunkParams.
var validChunkParams = struct {
	mu sync.Mutex
	m  map[chunkParamsKey]chunk.Params
}{m: map[chunkParamsKey]chunk.Params{}}

const maxChunkParams = 1 << 14

func (c Config) chunkParams() (chunk.Params, error) {
	pol, err := strconv.ParseUint(c.Polynomial, 16, 64)
	if err != nil {
		return chunk.Params{}, fmt.Errorf("config: chunker_polynomial %q: %w", c.Polynomial, err)
	}
	p := chunk.Params{Polynomial: chunker.Pol(pol), MinSize: c.ChunkMinSize, MaxSize: c.ChunkMaxSize, AverageBits: c.ChunkAverageBits}
	if err := p.Validate(); err != nil {
		return chunk.Params{}, fmt.Errorf("config: %w", err)
	}
	return p, nil
}

// MaxBlobSize returns the largest raw length a blob of type t may have in
// this repository: chunk_max_size for data, MaxTreeSize for trees, 0 for
// an unknown type.
func (c Config) MaxBlobSize(t BlobType) uint32 {
	switch t {
	case DataBlob:
		return uint32(min(c.ChunkMaxSize, MaxDataBlobSize))
	case TreeBlob:
		return MaxTreeSize
	}
	return 0
}

// Groups reports whether writers may store small blobs in groups (format
// version 2 and later).
func (c Config) Groups() bool { return c.Version >= 2 }

// CompactTrailers reports whether writers write compact pack trailers
// (format version 3 and later).
func (c Config) CompactTrailers() bool { return c.Version >= 3 }

// Validate checks the config, naming the offending field. An unsupported
// version is ErrVersion.
func (c Config) Validate() error {
	if c.Version < MinFormatVersion || c.Version > FormatVersion {
		return fmt.Errorf("config: %w %d (this backupd reads versions %d to %d)", ErrVersion, c.Version, MinFormatVersion, FormatVersion)
	}
	if len(c.ID) != 32 || strings.Trim(c.ID, "0123456789abcdef") != "" {
		return fmt.Errorf("config: id %q: want 32 lowercase hex digits", c.ID)
	}
	if _, err := c.ChunkParams(); err != nil {
		return err
	}
	if c.ChunkMaxSize > MaxDataBlobSize {
		return fmt.Errorf("config: chunk_max_size %d above the format's limit %d", c.ChunkMaxSize, MaxDataBlobSize)
	}
	if c.Compression != "zstd" {
		return fmt.Errorf("config: compression %q is not supported", c.Compression)
	}
	if c.CompressionLevel < 1 || c.CompressionLevel > 4 {
		return fmt.Errorf("config: compression_level %d out of range 1..4", c.CompressionLevel)
	}
	if c.PackSize < 1<<20 || c.PackSize > 1<<30 {
		return fmt.Errorf("config: pack_size %d out of range 1 MiB..1 GiB", c.PackSize)
	}
	return nil
}

func encodeConfig(c Config) ([]byte, error) { return json.MarshalIndent(c, "", "  ") }

// decodeConfig parses and validates a config object. Errors wrap ErrCorrupt,
// except an unsupported version (ErrVersion).
func decodeConfig(b []byte) (Config, error) {
	if len(b) > MaxConfigSize {
		return Config{}, fmt.Errorf("%w: config object of %d bytes exceeds %d", ErrCorrupt, len(b), MaxConfigSize)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("%w: config: %v", ErrCorrupt, err)
	}
	if err := c.Validate(); err != nil {
		if errors.Is(err, ErrVersion) {
			return Config{}, err
		}
		return Config{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return c, nil
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateName checks an owner or workspace identifier against the
// documented syntax ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$; what names the
// field ("owner", "workspace") for the error.
func ValidateName(what, name string) error {
	if !idPattern.MatchString(name) {
		return fmt.Errorf("invalid %s %q: must match %s", what, name, idPattern)
	}
	return nil
}
