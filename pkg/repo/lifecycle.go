package repo

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	gosync "sync"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
)

// The objects of the lifecycle (FORMAT.md, "Lifecycle").
const (
	sessionsPrefix = "sessions/"
	prunePrefix    = "prune/"
	pruneStateKey  = "prune/state"
	pruneClockKey  = "prune/clock"

	// MaxSessionSize bounds a session object: a snapshot and a little.
	MaxSessionSize = MaxSnapshotSize + 4<<10
	// MaxPruneStateSize bounds the prune state object.
	MaxPruneStateSize = 64 << 10
	// MaxCondemned bounds the blobs one prune generation condemns (the
	// condemned list is 32 bytes a blob, and every backup that starts
	// while it stands holds it in memory); more wait for the next one.
	MaxCondemned = 1 << 21
	// MaxDeleteList bounds the objects one generation deletes.
	MaxDeleteList = 1 << 20

	// DefaultLease is how long a backup's session or a prune's state
	// stands without being renewed; both renew at a fifth of it.
	DefaultLease = 5 * time.Minute

	condemnedMagic = "BKPDCN01"
	deleteMagic    = "BKPDDL01"
)

// Prune phases, in order; a generation ends back in phaseIdle.
const (
	phaseIdle     = "idle"
	phaseMarking  = "marking"
	phaseMarked   = "marked"
	phaseDeleting = "deleting"
)

// pruneState is the prune/state object, written only by compare-and-swap.
type pruneState struct {
	Generation uint64 `json:"generation"`
	Phase      string `json:"phase"`
	// Prune names the prune that holds the generation (host, pid, a
	// random id); LeaseMS is its lease; Renewals counts its writes, so
	// that every write differs.
	Prune    string `json:"prune,omitempty"`
	LeaseMS  int64  `json:"lease_ms,omitempty"`
	Renewals uint64 `json:"renewals,omitempty"`
	// Condemned is the key of the generation's condemned list (phases
	// marked and deleting); Delete that of its delete list (deleting).
	Condemned string `json:"condemned,omitempty"`
	Delete    string `json:"delete,omitempty"`
}

func (s *pruneState) active() bool { return s.Phase != phaseIdle && s.Phase != "" }

// condemning reports whether backups must treat the condemned list as
// absent blobs.
func (s *pruneState) condemning() bool {
	return (s.Phase == phaseMarked || s.Phase == phaseDeleting) && s.Condemned != ""
}

func decodePruneState(b []byte) (*pruneState, error) {
	var s pruneState
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&s); err != nil {
		return nil, fmt.Errorf("prune state: %w: %v", ErrCorrupt, err)
	}
	switch s.Phase {
	case phaseIdle, phaseMarking, phaseMarked, phaseDeleting:
	default:
		return nil, fmt.Errorf("prune state: %w: unknown phase %q", ErrCorrupt, s.Phase)
	}
	for _, k := range []string{s.Condemned, s.Delete} {
		if k != "" && !validPruneListKey(k) {
			return nil, fmt.Errorf("prune state: %w: list key %q", ErrCorrupt, k)
		}
	}
	if s.LeaseMS < 0 || s.LeaseMS > int64(24*time.Hour/time.Millisecond) {
		return nil, fmt.Errorf("prune state: %w: lease %d ms", ErrCorrupt, s.LeaseMS)
	}
	return &s, nil
}

// readPruneState reads the prune state with its version; a repository
// without one is idle at generation 0 (version "").
func readPruneState(ctx context.Context, st storage.Storage) (*pruneState, storage.ObjectInfo, error) {
	b, oi, err := storage.ReadVersioned(ctx, st, pruneStateKey, MaxPruneStateSize)
	if errors.Is(err, storage.ErrNotFound) {
		return &pruneState{Phase: phaseIdle}, storage.ObjectInfo{}, nil
	}
	if err != nil {
		return nil, oi, fmt.Errorf("read prune state: %w", err)
	}
	s, err := decodePruneState(b)
	return s, oi, err
}

// validPruneListKey reports whether key names a list of prune/: a
// generation, a kind and a hash.
func validPruneListKey(key string) bool {
	rest, ok := strings.CutPrefix(key, prunePrefix)
	if !ok {
		return false
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 3 || (parts[1] != "condemned" && parts[1] != "delete") {
		return false
	}
	for _, c := range parts[0] {
		if c < '0' || c > '9' {
			return false
		}
	}
	_, err := chunk.ParseID(parts[2])
	return err == nil && parts[0] != ""
}

// encodeIDList encodes a sorted, duplicate-free list of ids.
func encodeIDList(magic string, ids []chunk.ID) []byte {
	b := make([]byte, 0, len(magic)+len(ids)*chunk.IDSize)
	b = append(b, magic...)
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	return b
}

// decodeIDList decodes what encodeIDList wrote, refusing anything else:
// a wrong magic, a length that is not whole ids, more than maxIDs ids,
// ids out of order or repeated.
func decodeIDList(magic string, b []byte, maxIDs int) ([]chunk.ID, error) {
	if len(b) < len(magic) || string(b[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: not a list (magic)", ErrCorrupt)
	}
	b = b[len(magic):]
	if len(b)%chunk.IDSize != 0 || len(b)/chunk.IDSize > maxIDs {
		return nil, fmt.Errorf("%w: list of %d bytes", ErrCorrupt, len(b))
	}
	ids := make([]chunk.ID, len(b)/chunk.IDSize)
	for i := range ids {
		copy(ids[i][:], b[i*chunk.IDSize:])
		if i > 0 && bytes.Compare(ids[i-1][:], ids[i][:]) >= 0 {
			return nil, fmt.Errorf("%w: list not sorted", ErrCorrupt)
		}
	}
	return ids, nil
}

func compareIDs(a, b chunk.ID) int { return bytes.Compare(a[:], b[:]) }

// saveList stores the body of a prune list under
// prune/<generation>-<kind>-<hash>, create-only (the same content is the
// same key), and returns its key.
func saveList(ctx context.Context, st storage.Storage, gen uint64, kind string, b []byte) (string, error) {
	key := fmt.Sprintf("%s%d-%s-%s", prunePrefix, gen, kind, chunk.Hash(b))
	err := st.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b)))
	if errors.Is(err, storage.ErrExists) {
		err = nil // the same bytes, by their name (a retry's, a lost reply's)
	}
	if err != nil {
		return "", fmt.Errorf("store %s list: %w", kind, err)
	}
	return key, nil
}

// loadList reads a list saved by saveList, of at most limit bytes, and
// checks it against its name.
func loadList(ctx context.Context, st storage.Storage, key string, limit int64) ([]byte, error) {
	if !validPruneListKey(key) {
		return nil, fmt.Errorf("prune list %q: %w: bad key", key, ErrCorrupt)
	}
	b, err := readObject(ctx, st, key, limit)
	if err != nil {
		return nil, fmt.Errorf("prune list %s: %w", key, err)
	}
	if chunk.Hash(b).String() != key[strings.LastIndexByte(key, '-')+1:] {
		return nil, fmt.Errorf("prune list %s: %w: content does not match its name", key, ErrCorrupt)
	}
	return b, nil
}

// saveIDList stores a sorted list of ids (saveList).
func saveIDList(ctx context.Context, st storage.Storage, gen uint64, kind, magic string, ids []chunk.ID) (string, error) {
	return saveList(ctx, st, gen, kind, encodeIDList(magic, ids))
}

// loadIDList reads and verifies a list saved by saveIDList.
func loadIDList(ctx context.Context, st storage.Storage, key, magic string, maxIDs int) ([]chunk.ID, error) {
	b, err := loadList(ctx, st, key, int64(len(magic)+maxIDs*chunk.IDSize))
	if err != nil {
		return nil, err
	}
	ids, err := decodeIDList(magic, b, maxIDs)
	if err != nil {
		return nil, fmt.Errorf("prune list %s: %w", key, err)
	}
	return ids, nil
}

// listSessions lists the session objects under st.
func listSessions(ctx context.Context, st storage.Storage) ([]string, error) {
	var keys []string
	err := st.List(ctx, sessionsPrefix, func(oi storage.ObjectInfo) error {
		if sessionKey(oi.Key) {
			keys = append(keys, oi.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list sessions: %w", err)
	}
	return keys, nil
}

// casPut writes b at key by compare-and-swap: create-only when version is
// "", else only over version. It returns the new Version, taken from a
// read that returned exactly b whenever the write does not give it: after
// a create (PutIfAbsent reports none), and after a mismatch, which is our
// own write when its reply was lost (the object then holds exactly b).
// Any other mismatch, or a created object that holds something else by
// the time it is read, is an error wrapping storage.ErrVersionMismatch.
func casPut(ctx context.Context, st storage.Storage, key string, b []byte, version string, maxSize int64) (string, error) {
	var v string
	var err error
	if version == "" {
		if err = st.PutIfAbsent(ctx, key, bytes.NewReader(b), int64(len(b))); errors.Is(err, storage.ErrExists) {
			err = fmt.Errorf("%w: %w", storage.ErrVersionMismatch, err)
		}
	} else {
		v, err = st.PutIfMatch(ctx, key, bytes.NewReader(b), int64(len(b)), version)
	}
	if err == nil && v != "" {
		return v, nil
	}
	if err != nil && !errors.Is(err, storage.ErrVersionMismatch) {
		return "", err
	}
	got, oi, rerr := storage.ReadVersioned(ctx, st, key, maxSize)
	switch {
	case rerr == nil && bytes.Equal(got, b):
		return oi.Version, nil
	case err != nil:
		return "", err
	case rerr != nil:
		return "", rerr
	}
	return "", fmt.Errorf("%w: %s holds something else right after it was written", storage.ErrVersionMismatch, key)
}

// fenceSession replaces the session at key, if it is still at version, by
// a fenced one, so that its backup can neither renew nor commit it; a
// mismatch (renewed or committed meanwhile) is ErrVersionMismatch.
func fenceSession(ctx context.Context, st storage.Storage, key, version string) error {
	fence := []byte(`{"state":"fenced"}`)
	_, err := st.PutIfMatch(ctx, key, bytes.NewReader(fence), int64(len(fence)), version)
	return err
}

// condemnedSet is a sorted list of blob ids a backup must treat as absent.
type condemnedSet struct {
	mu  gosync.RWMutex
	ids []chunk.ID
}

func (c *condemnedSet) has(id chunk.ID) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := slices.BinarySearchFunc(c.ids, id, compareIDs)
	return ok
}

func (c *condemnedSet) set(ids []chunk.ID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ids = ids
}

func (c *condemnedSet) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.ids)
}

// Usable reports whether a backup may reference blob id without storing
// it: the index knows it and no prune has condemned it (FORMAT.md,
// "Lifecycle": a backup that starts while a prune stands treats the
// prune's condemned blobs as absent).
func (r *Repository) Usable(id chunk.ID) bool {
	return r.index.Has(id) && !r.condemned.has(id)
}

// Condemned returns how many blobs this repository treats as absent
// because a prune has condemned them.
func (r *Repository) Condemned() int { return r.condemned.len() }

// storageNow returns the storage's clock: the modification time of an
// object written now. Leases are judged by it, never by a node's clock.
func storageNow(ctx context.Context, st storage.Storage) (time.Time, error) {
	b := []byte(randomHex(16))
	if err := st.Put(ctx, pruneClockKey, bytes.NewReader(b), int64(len(b))); err != nil {
		return time.Time{}, fmt.Errorf("read the storage's clock: %w", err)
	}
	oi, err := st.Stat(ctx, pruneClockKey)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the storage's clock: %w", err)
	}
	if oi.ModTime.IsZero() {
		return time.Time{}, errors.New("read the storage's clock: the storage gives no modification times")
	}
	return oi.ModTime, nil
}

// clockSlack is how much later than t an object that reads as written at
// t may have been written: a storage that gives whole seconds (S3's
// Last-Modified, an HTTP date) truncates, so its times read up to a
// second early, and a lease judged by them must stand a second longer.
func clockSlack(t time.Time) time.Duration {
	if t.Nanosecond() == 0 {
		return time.Second
	}
	return 0
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
