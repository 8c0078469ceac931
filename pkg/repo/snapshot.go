package repo

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

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
}

// Stats counts what a backup saw and wrote.
type Stats struct {
	Files          int64 `json:"files"`
	UnchangedFiles int64 `json:"unchanged_files"`
	Dirs           int64 `json:"dirs"`
	Symlinks       int64 `json:"symlinks"`
	Skipped        int64 `json:"skipped"`
	Excluded       int64 `json:"excluded,omitempty"`
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

func encodeSnapshot(s *Snapshot) ([]byte, error) { return json.Marshal(s) }

func decodeSnapshot(b []byte) (*Snapshot, error) {
	var s Snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: snapshot: %v", ErrCorrupt, err)
	}
	if s.Version != FormatVersion {
		return nil, fmt.Errorf("snapshot version %d is not supported", s.Version)
	}
	return &s, nil
}
