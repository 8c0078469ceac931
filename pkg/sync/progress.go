// Package sync holds backupd's backup and restore pipelines: walking a
// directory, chunking, deduplicating, compressing and packing its content
// into a repository, and bringing a snapshot back into a directory with
// every byte verified. It depends on the repository format (pkg/repo) and
// the storage interface, never on a concrete backend.
package sync

import "sync/atomic"

// Progress is updated by a running backup or restore; another goroutine may
// read it at any time (for a progress bar or a progress stream).
type Progress struct {
	// Files and Dirs count entries processed so far.
	Files, Dirs atomic.Int64
	// Bytes counts file content processed so far.
	Bytes atomic.Int64
	// TotalFiles and TotalBytes are the expected totals when known, else
	// zero: a restore knows them from the snapshot; a backup estimates
	// them from its parent snapshot.
	TotalFiles, TotalBytes atomic.Int64
	// Finishing is set once the transfer is over and the operation writes
	// its last objects (backup: index and snapshot) or metadata (restore:
	// hard links, directories).
	Finishing atomic.Bool
}
