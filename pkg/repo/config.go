// Package repo is backupd's repository format: the config, pack, index, tree
// and snapshot objects described in docs/FORMAT.md, and the Repository type
// that reads and writes them through a storage.Storage. It is the only
// package that encodes or decodes these objects.
package repo

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/restic/chunker"
)

// FormatVersion is the repository format this code reads and writes.
const FormatVersion = 1

// DefaultPackSize is the target size of pack objects: large enough to keep
// objects under 100 per GB, small enough to upload and retry cheaply.
const DefaultPackSize = 16 << 20

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

// Validate checks the config, naming the offending field.
func (c Config) Validate() error {
	if c.Version != FormatVersion {
		return fmt.Errorf("config: repository format version %d is not supported (this backupd reads version %d)", c.Version, FormatVersion)
	}
	if _, err := c.ChunkParams(); err != nil {
		return err
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

func decodeConfig(b []byte) (Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	return c, c.Validate()
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
