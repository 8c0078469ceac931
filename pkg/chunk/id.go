// Package chunk holds the content-level building blocks of backupd: blob ids
// (SHA-256), content-defined chunking (restic/chunker) and per-blob zstd
// compression. It knows nothing of storage, repositories or gRPC.
package chunk

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// IDSize is the length of an ID in bytes.
const IDSize = sha256.Size

// ID is the SHA-256 digest of some content; it names blobs, packs, indexes
// and snapshots.
type ID [IDSize]byte

// Hash returns the ID of data.
func Hash(data []byte) ID { return sha256.Sum256(data) }

// ParseID parses a 64-digit hex string.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*IDSize {
		return id, fmt.Errorf("invalid id %q: want %d hex digits", s, 2*IDSize)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("invalid id %q: %w", s, err)
	}
	return id, nil
}

// String returns the id as 64 lowercase hex digits.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 8 hex digits, for display.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsZero reports whether id is the zero value (no id).
func (id ID) IsZero() bool { return id == ID{} }

// MarshalText encodes the id as hex (for JSON).
func (id ID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText parses a hex id (for JSON).
func (id *ID) UnmarshalText(b []byte) error {
	v, err := ParseID(string(b))
	if err != nil {
		return err
	}
	*id = v
	return nil
}
