package repo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/backupd/backupd/pkg/chunk"
)

// Snapshot is the small object that names one backup of one workspace.
type Snapshot struct {
	Version   int               `json:"version"`
	Time      time.Time         `json:"time"`
	Tree      chunk.ID          `json:"tree"`
	Owner     string            `json:"owner"`
	Workspace string            `json:"workspace"`
	Host      string            `json:"host,omitempty"`
	Path      string            `json:"path,omitempty"`
	Parent    string            `json:"parent,omitempty"`
	Tags      map[string]string `json:"tags,omitempty"`
	// RootMode and RootMTime are the backed-up directory's own metadata.
	RootMode  uint32 `json:"root_mode"`
	RootMTime int64  `json:"root_mtime"`
	RootUID   uint32 `json:"root_uid"`
	RootGID   uint32 `json:"root_gid"`
	Stats     Stats  `json:"stats"`
	// Unreadable lists entries of the backed-up directory left out because
	// reading them failed (Stats.Unreadable counts them all; at most
	// MaxUnreadable are listed, within MaxUnreadableBytes), sorted by path.
	Unreadable []UnreadableEntry `json:"unreadable,omitempty"`
	// Recent lists the paths (relative to the backed-up directory) of the
	// regular files modified most recently before the backup, newest
	// first: at most MaxRecent, of at most MaxRecentBytes together. A
	// restore that makes the workspace usable before it completes writes
	// them first.
	Recent []string `json:"recent,omitempty"`
	// Checkpoint marks a checkpoint: a backup of a running workspace
	// (CheckpointWorkspace), a parent like any other snapshot, of which
	// retention keeps only the newest few.
	Checkpoint bool `json:"checkpoint,omitempty"`
}

// UnreadableEntry is an entry a backup left out because the file system
// refused to read it (permission denied, an I/O error): its path relative
// to the backed-up directory (valid UTF-8: other bytes are replaced by
// U+FFFD) and why, short (the failed call and the error, "open:
// permission denied").
type UnreadableEntry struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// Stats counts what a backup saw and wrote.
type Stats struct {
	Files          int64 `json:"files"`
	UnchangedFiles int64 `json:"unchanged_files"`
	Dirs           int64 `json:"dirs"`
	Symlinks       int64 `json:"symlinks"`
	Skipped        int64 `json:"skipped"`
	// Unreadable counts entries left out because reading them failed
	// (Snapshot.Unreadable lists the first of them); a directory counts
	// once. Skipped does not count them.
	Unreadable int64 `json:"unreadable,omitempty"`
	Excluded   int64 `json:"excluded,omitempty"`
	// Changing counts files that kept changing through every read of
	// them: their nodes are flagged NodeChanging. Reread counts the extra
	// reads of files that changed while being read (and were then stored
	// as one version, or flagged).
	Changing       int64 `json:"changing,omitempty"`
	Reread         int64 `json:"reread,omitempty"`
	Bytes          int64 `json:"bytes"`
	NewBytes       int64 `json:"new_bytes"`
	StoredBytes    int64 `json:"stored_bytes"`
	Blobs          int64 `json:"blobs"`
	NewBlobs       int64 `json:"new_blobs"`
	ObjectsWritten int64 `json:"objects_written"`
	DurationMS     int64 `json:"duration_ms"`
}

// SnapshotRef is what a listing tells about a snapshot without reading it.
type SnapshotRef struct {
	ID        chunk.ID
	Workspace string
	Time      time.Time
	Key       string
}

const snapshotsPrefix = "snapshots/"

func snapshotKey(workspace string, t time.Time, id chunk.ID) string {
	return fmt.Sprintf("%s%s/%020d-%s", snapshotsPrefix, workspace, t.UnixNano(), id)
}

func parseSnapshotKey(key string) (SnapshotRef, error) {
	rest, ok := strings.CutPrefix(key, snapshotsPrefix)
	ws, name, ok2 := strings.Cut(rest, "/")
	ts, hexid, ok3 := strings.Cut(name, "-")
	if !ok || !ok2 || !ok3 || len(ts) != 20 {
		return SnapshotRef{}, fmt.Errorf("%w: unexpected snapshot key %q", ErrCorrupt, key)
	}
	ns, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return SnapshotRef{}, fmt.Errorf("%w: snapshot key %q: %v", ErrCorrupt, key, err)
	}
	id, err := chunk.ParseID(hexid)
	if err != nil {
		return SnapshotRef{}, fmt.Errorf("%w: snapshot key %q: %v", ErrCorrupt, key, err)
	}
	return SnapshotRef{ID: id, Workspace: ws, Time: time.Unix(0, ns).UTC(), Key: key}, nil
}

// encodeSnapshot returns the snapshot object for s, refusing a snapshot
// that decodeSnapshot would refuse.
func encodeSnapshot(s *Snapshot) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(s)
	if err == nil && len(b) > MaxSnapshotSize {
		err = fmt.Errorf("snapshot: object of %d bytes exceeds %d", len(b), MaxSnapshotSize)
	}
	return b, err
}

// Validate checks what a reader of the snapshot relies on: the format
// version, owner and workspace names, a time after 1970 that fits Unix
// nanoseconds, a root tree id, a parent that is empty or a snapshot id,
// host, path and tags within MaxHostLen, MaxPathLen and the tag limits,
// a root mode of permission bits only, and unreadable entries within
// their limits (ValidateUnreadable) and no more than Stats.Unreadable. An
// unsupported version is ErrVersion.
func (s *Snapshot) Validate() error {
	if s.Version != SnapshotVersion {
		return fmt.Errorf("snapshot: %w %d", ErrVersion, s.Version)
	}
	if err := ValidateName("owner", s.Owner); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if err := ValidateName("workspace", s.Workspace); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if sec := s.Time.Unix(); sec < 0 || sec >= math.MaxInt64/int64(time.Second) || s.Time.UnixNano() <= 0 {
		return fmt.Errorf("snapshot: time %v out of range", s.Time)
	}
	if s.Tree.IsZero() {
		return errors.New("snapshot: no root tree")
	}
	if s.Parent != "" {
		if _, err := chunk.ParseID(s.Parent); err != nil {
			return fmt.Errorf("snapshot: parent: %w", err)
		}
	}
	if len(s.Host) > MaxHostLen || len(s.Path) > MaxPathLen {
		return fmt.Errorf("snapshot: host or path longer than %d or %d bytes", MaxHostLen, MaxPathLen)
	}
	if s.RootMode&^07777 != 0 {
		return fmt.Errorf("snapshot: root mode %o", s.RootMode)
	}
	if err := ValidateUnreadable(s.Unreadable); err != nil {
		return err
	}
	if int64(len(s.Unreadable)) > s.Stats.Unreadable {
		return fmt.Errorf("snapshot: %d unreadable entries listed, %d counted", len(s.Unreadable), s.Stats.Unreadable)
	}
	if err := ValidateRecent(s.Recent); err != nil {
		return err
	}
	return ValidateTags(s.Tags)
}

// ValidateUnreadable checks a snapshot's list of unreadable entries: at
// most MaxUnreadable, paths and reasons together at most
// MaxUnreadableBytes, each path 1 to MaxPathLen bytes and each reason at
// most MaxUnreadableReasonLen, all valid UTF-8 without NUL.
func ValidateUnreadable(list []UnreadableEntry) error {
	if len(list) > MaxUnreadable {
		return fmt.Errorf("snapshot: %d unreadable entries listed (at most %d)", len(list), MaxUnreadable)
	}
	total := 0
	for _, e := range list {
		if err := checkUnreadable(e); err != nil {
			return err
		}
		total += len(e.Path) + len(e.Reason)
	}
	if total > MaxUnreadableBytes {
		return fmt.Errorf("snapshot: unreadable entries of %d bytes (at most %d)", total, MaxUnreadableBytes)
	}
	return nil
}

// ValidateRecent checks a snapshot's list of recently modified files: at
// most MaxRecent paths of at most MaxRecentBytes together, each 1 to
// MaxPathLen bytes of UTF-8 without NUL.
func ValidateRecent(paths []string) error {
	if len(paths) > MaxRecent {
		return fmt.Errorf("snapshot: %d recent files listed (at most %d)", len(paths), MaxRecent)
	}
	total := 0
	for _, p := range paths {
		if p == "" || len(p) > MaxPathLen || !utf8.ValidString(p) || strings.IndexByte(p, 0) >= 0 {
			return fmt.Errorf("snapshot: recent file %.100q: want a path of 1 to %d bytes of UTF-8 without NUL", p, MaxPathLen)
		}
		total += len(p)
	}
	if total > MaxRecentBytes {
		return fmt.Errorf("snapshot: recent files of %d bytes (at most %d)", total, MaxRecentBytes)
	}
	return nil
}

func checkUnreadable(e UnreadableEntry) error {
	if e.Path == "" || len(e.Path) > MaxPathLen || !utf8.ValidString(e.Path) || strings.IndexByte(e.Path, 0) >= 0 {
		return fmt.Errorf("snapshot: unreadable entry %.100q: want a path of 1 to %d bytes of UTF-8 without NUL", e.Path, MaxPathLen)
	}
	if len(e.Reason) > MaxUnreadableReasonLen || !utf8.ValidString(e.Reason) || strings.IndexByte(e.Reason, 0) >= 0 {
		return fmt.Errorf("snapshot: unreadable entry %.100q: want a reason of at most %d bytes of UTF-8 without NUL", e.Path, MaxUnreadableReasonLen)
	}
	return nil
}

// boundedUnreadable decodes a snapshot's unreadable entries, refusing
// more than MaxUnreadable as soon as it reads them, so that a crafted
// object of many tiny entries cannot build a large slice.
type boundedUnreadable []UnreadableEntry

func (u *boundedUnreadable) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*u = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return errors.New("unreadable: not an array")
	}
	var list boundedUnreadable
	for dec.More() {
		if len(list) == MaxUnreadable {
			return fmt.Errorf("more than %d unreadable entries", MaxUnreadable)
		}
		var e UnreadableEntry
		if err := dec.Decode(&e); err != nil {
			return fmt.Errorf("unreadable entry %d: %w", len(list), err)
		}
		if err := checkUnreadable(e); err != nil {
			return err
		}
		list = append(list, e)
	}
	*u = list
	return nil
}

// ValidateTags checks tags against what a snapshot object may hold
// (MaxTags, MaxTagKeyLen, MaxTagValueLen; keys without '=' or NUL).
func ValidateTags(tags map[string]string) error {
	if len(tags) > MaxTags {
		return fmt.Errorf("snapshot: %d tags (at most %d)", len(tags), MaxTags)
	}
	for k, v := range tags {
		if err := checkTag(k, v); err != nil {
			return err
		}
	}
	return nil
}

func checkTag(k, v string) error {
	if k == "" || len(k) > MaxTagKeyLen || strings.ContainsAny(k, "=\x00") {
		return fmt.Errorf("snapshot: tag key %q: want 1 to %d bytes without = or NUL", k, MaxTagKeyLen)
	}
	if len(v) > MaxTagValueLen {
		return fmt.Errorf("snapshot: tag %q: value of %d bytes (at most %d)", k, len(v), MaxTagValueLen)
	}
	return nil
}

// boundedTags decodes a snapshot's tags, refusing more than MaxTags (or a
// duplicate key) as soon as it reads them, so that a crafted object of many
// tiny tags cannot build a large map.
type boundedTags map[string]string

func (t *boundedTags) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*t = nil
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("tags: not an object")
	}
	m := boundedTags{}
	for dec.More() {
		if len(m) == MaxTags {
			return fmt.Errorf("more than %d tags", MaxTags)
		}
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := tok.(string)
		var v string
		if err := dec.Decode(&v); err != nil {
			return fmt.Errorf("tag %q: %w", k, err)
		}
		if _, dup := m[k]; dup {
			return fmt.Errorf("duplicate tag %q", k)
		}
		if err := checkTag(k, v); err != nil {
			return err
		}
		m[k] = v
	}
	*t = m
	return nil
}

// decodeSnapshot parses and validates a snapshot object of at most
// MaxSnapshotSize bytes. Errors wrap ErrCorrupt, except an unsupported
// version (ErrVersion).
func decodeSnapshot(b []byte) (*Snapshot, error) {
	if len(b) > MaxSnapshotSize {
		return nil, fmt.Errorf("%w: snapshot object of %d bytes exceeds %d", ErrCorrupt, len(b), MaxSnapshotSize)
	}
	var raw struct {
		Snapshot
		Tags       boundedTags       `json:"tags,omitempty"`       // shadows Snapshot.Tags
		Unreadable boundedUnreadable `json:"unreadable,omitempty"` // shadows Snapshot.Unreadable
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%w: snapshot: %v", ErrCorrupt, err)
	}
	s := raw.Snapshot
	s.Tags = raw.Tags
	s.Unreadable = raw.Unreadable
	if err := s.Validate(); err != nil {
		if errors.Is(err, ErrVersion) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return &s, nil
}
