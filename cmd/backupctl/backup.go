package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"

	"github.com/backupd/backupd/pkg/exclude"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/retention"
	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

func newBackupCmd() *cobra.Command {
	var (
		f         repoFlags
		d         daemonFlags
		workspace string
		tags      []string
		parent    string
		force     bool
		strict    bool
		idMaps    idMapFlags
		excludes  []string
		ckpt      bool
		keepCkpts int
	)
	cmd := &cobra.Command{
		Use:   "backup -r REPO --owner O --workspace W [--tag k=v]... [--exclude PATTERN]... [--checkpoint [--keep-checkpoints N]] [--json] DIR",
		Short: "Back up a directory as a new snapshot of a workspace",
		Long: `Back up DIR as a new snapshot of workspace W in owner O's repository,
creating the repository on first use. Only content not already in the
repository is stored. Prints the new snapshot's ID, or with --json one
JSON object with the backup's statistics.

Files unchanged since the parent snapshot (same size, mtime, ctime and
inode) are not read again; --force reads everything. A file whose mtime or
ctime lies less than 2 seconds before the parent backup started (or after)
is read again all the same: a change made in that window may not show in
its timestamps, whose resolution is coarser than the time a rewrite takes.

An entry that cannot be read (permission denied, an I/O error) is left
out with a warning on stderr, one line each; the snapshot counts and
lists them ("unreadable" in snapshots --json) and the summary says how
many. With --strict the backup fails instead and writes no snapshot.

A file written while it is read is read again (up to three reads in all)
until its size, mtime and ctime stay put through a read; one still
changing then is stored as last read, flagged "changing" in its tree entry,
with a warning, and counted in the summary ("changing" in --json, with
"reread", the extra reads). The next backup reads a flagged file again.
A changed file that still begins with its previous version's chunks (an
appended log, a file the checkpoint before stored most of) is hashed
through them and cut only after: "resumed_bytes" in --json. One that grew
by 4 MiB or more has its new end cut and sent first, so that the upload
starts while the old part is hashed.
Errors of the repository or its storage always fail the backup.

Excludes use gitignore syntax, relative to DIR: "*.log" anywhere, "/build"
only at the top, "cache/" directories only, "!keep.log" to take one back,
"**" across directories. Patterns from --exclude come first, then those in
DIR/` + exclude.ExcludeFile + ` (one per line, # for comments) if it exists.

With --checkpoint the snapshot is a checkpoint: a backup of a workspace
still in use, taken so that the backup at its stop (the next backup of the
workspace, whose parent it is) reads and stores only what changed since.
As the daemon runs one, it has one file reader, one compressor and one
upload, its readers and compressor at idle I/O priority and SCHED_IDLE,
and it holds each pack back (up to a second) while other processes read
or write the disk of DIR or of a local repository;
through --daemon it runs under the daemon's checkpoint limits and a backup
of the workspace cancels it. Once it is written, the workspace's checkpoints beyond the
newest --keep-checkpoints are forgotten (never other snapshots); their data
goes at the next prune. "snapshots" marks checkpoints.

Memory: a backup runs under a soft limit of 208 MiB of Go heap (other
commands 160 MiB), past which the garbage collector works harder;
$GOMEMLIMIT (e.g. GOMEMLIMIT=512MiB) replaces it.`,
		Args: usage.Args("DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			setMemoryLimit(backupMemoryLimit)
			tagMap := map[string]string{}
			for _, t := range tags {
				k, v, ok := strings.Cut(t, "=")
				if !ok || k == "" {
					return usageError{Err: fmt.Errorf("--tag %q: want KEY=VALUE", t)}
				}
				tagMap[k] = v
			}
			if len(tagMap) == 0 {
				tagMap = nil
			}
			uidMap, gidMap, err := idMaps.parse()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if ckpt && (parent != "" || force || strict) {
				return usageError{Err: fmt.Errorf("--checkpoint: not with --parent, --force or --strict (a checkpoint's parent is the latest snapshot)")}
			}
			if keepCkpts < 0 || (!ckpt && cmd.Flags().Changed("keep-checkpoints")) {
				return usageError{Err: fmt.Errorf("--keep-checkpoints %d: want 1 or more, with --checkpoint", keepCkpts)}
			}
			if d.enabled() {
				dir, err := filepath.Abs(args[0])
				if err != nil {
					return err
				}
				if ckpt {
					req := &pb.CheckpointWorkspaceRequest{
						Owner: f.owner, Workspace: workspace, Path: dir, Tags: tagMap, Excludes: excludes,
						UidMappings: idMappings(uidMap), GidMappings: idMappings(gidMap), Keep: int32(keepCkpts),
					}
					return backupViaDaemon(ctx, &d, &f, func(c pb.BackupServiceClient) (*pb.Operation, error) {
						resp, err := c.CheckpointWorkspace(ctx, req)
						return resp.GetOperation(), err
					})
				}
				req := &pb.BackupWorkspaceRequest{
					Owner: f.owner, Workspace: workspace, Path: dir, Tags: tagMap, Excludes: excludes,
					ParentSnapshotId: parent, Force: force, Strict: strict, UidMappings: idMappings(uidMap), GidMappings: idMappings(gidMap),
				}
				return backupViaDaemon(ctx, &d, &f, func(c pb.BackupServiceClient) (*pb.Operation, error) {
					resp, err := c.BackupWorkspace(ctx, req)
					return resp.GetOperation(), err
				})
			}
			r, closeRepo, err := f.openOwner(ctx, true)
			if err != nil {
				return err
			}
			defer closeRepo()
			prog := &bsync.Progress{}
			stop := startProgress(f.showProgress(), os.Stderr, "backup", prog)
			warn := newWarner(f.showProgress())
			opts := bsync.BackupOptions{
				Owner: f.owner, Workspace: workspace, Tags: tagMap, Progress: prog, Warn: warn, Uploads: f.uploads,
				Parent: parent, Force: force, Strict: strict, UIDMap: uidMap, GIDMap: gidMap, Exclude: excludes,
			}
			if ckpt {
				opts.SetCheckpoint() // as the daemon runs one
				gate, err := f.checkpointGate(args[0])
				if err != nil {
					return err
				}
				defer gate.Close()
				opts.Throttle = func(ctx context.Context, _ int) error { return gate.Wait(ctx) }
			}
			res, err := bsync.Backup(ctx, r, args[0], opts)
			stop()
			if err != nil {
				return fmt.Errorf("backup failed, no snapshot written: %w", err)
			}
			if ckpt {
				keep := keepCkpts
				if keep == 0 {
					keep = defaultKeepCheckpoints
				}
				fr, err := r.ForgetKind(ctx, workspace, retention.Policy{KeepLast: keep}, true, false)
				if err != nil {
					fmt.Fprintf(os.Stderr, "warning: checkpoint %s written; forgetting older checkpoints failed: %v\n", res.SnapshotID.Short(), err)
				} else if n := len(fr.Forget); n > 0 && f.showProgress() {
					fmt.Fprintf(os.Stderr, "forgot %s beyond the newest %d\n", plural(int64(n), "older checkpoint"), keep)
				}
			}
			return printBackup(&f, res.SnapshotID.String(), res.Snapshot.Stats, res.ResumedBytes)
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	d.register(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "workspace `ID` the snapshot belongs to")
	_ = cmd.MarkFlagRequired("workspace")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag the snapshot with `KEY=VALUE` (repeatable)")
	cmd.Flags().StringVar(&parent, "parent", "", "compare with this snapshot `ID` (default: the workspace's latest); unchanged files are not read")
	idMaps.register(cmd, "host ids on disk are recorded as container ids")
	cmd.Flags().BoolVar(&force, "force", false, "read every file, even those unchanged since the parent snapshot")
	cmd.Flags().BoolVar(&strict, "strict", false, "fail on an entry that cannot be read, instead of leaving it out with a warning")
	cmd.Flags().BoolVar(&ckpt, "checkpoint", false, "take a checkpoint of a running workspace: low priority, the next backup's parent, only the newest kept")
	cmd.Flags().IntVar(&keepCkpts, "keep-checkpoints", 0, "with --checkpoint, keep the workspace's newest `N` checkpoints (default 2; through --daemon its checkpoint.keep)")
	cmd.Flags().StringArrayVar(&excludes, "exclude", nil, "leave out entries matching `PATTERN` (gitignore syntax; repeatable)")
	return cmd
}

// defaultKeepCheckpoints is how many checkpoints a direct --checkpoint
// keeps by default (as the daemon's checkpoint.keep).
const defaultKeepCheckpoints = 2

// printBackup prints a finished backup: the snapshot id, or with --json
// its statistics; on a terminal a summary line on stderr too, and always
// a warning there counting the entries left out as unreadable.
func printBackup(f *repoFlags, id string, st repo.Stats, resumed int64) error {
	if st.Unreadable > 0 {
		fmt.Fprintf(os.Stderr, "warning: unreadable, left out of snapshot %.8s: %d (one warning each; --strict fails instead)\n", id, st.Unreadable)
	}
	if st.Changing > 0 {
		fmt.Fprintf(os.Stderr, "warning: kept changing while read, stored as last read and flagged in snapshot %.8s: %d (one warning each)\n", id, st.Changing)
	}
	if f.json {
		return json.NewEncoder(os.Stdout).Encode(map[string]any{
			"snapshot_id": id, "files": st.Files, "unchanged_files": st.UnchangedFiles, "dirs": st.Dirs,
			"symlinks": st.Symlinks, "skipped": st.Skipped, "unreadable": st.Unreadable, "changing": st.Changing, "reread": st.Reread, "excluded": st.Excluded, "bytes": st.Bytes,
			"new_bytes": st.NewBytes, "stored_bytes": st.StoredBytes, "blobs": st.Blobs,
			"new_blobs": st.NewBlobs, "objects_written": st.ObjectsWritten, "duration_ms": st.DurationMS,
			"resumed_bytes": resumed,
		})
	}
	if f.showProgress() {
		fmt.Fprintf(os.Stderr, "%s, %s, %s; new %s, stored %s in %s, %.1fs\n",
			plural(st.Files, "file"), plural(st.Dirs, "dir"), fmtBytes(st.Bytes), fmtBytes(st.NewBytes), fmtBytes(st.StoredBytes),
			plural(st.ObjectsWritten, "object"), float64(st.DurationMS)/1000)
	}
	fmt.Println(id)
	return nil
}

// backupViaDaemon runs a backup on the daemon, with the same progress
// bar and output as a direct one.
func backupViaDaemon(ctx context.Context, d *daemonFlags, f *repoFlags, start func(pb.BackupServiceClient) (*pb.Operation, error)) error {
	c, closeConn, err := d.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	started, err := start(c)
	if err != nil {
		return rpcError(d, err)
	}
	prog := &bsync.Progress{}
	stop := startProgress(f.showProgress(), os.Stderr, "backup", prog)
	op, err := follow(ctx, c, started, prog)
	stop()
	if err != nil {
		return rpcError(d, err)
	}
	if err := opFailed(op); err != nil {
		return fmt.Errorf("backup failed, no snapshot written: %w", err)
	}
	r := op.Result
	return printBackup(f, r.SnapshotId, repo.Stats{
		Files: r.Files, UnchangedFiles: r.UnchangedFiles, Dirs: r.Dirs, Symlinks: r.Symlinks, Skipped: r.Skipped, Unreadable: r.UnreadableEntries, Changing: r.ChangingFiles, Reread: r.RereadFiles, Excluded: r.Excluded,
		Bytes: r.Bytes, NewBytes: r.NewBytes, StoredBytes: r.StoredBytes, Blobs: r.Blobs, NewBlobs: r.NewBlobs, ObjectsWritten: r.ObjectsWritten,
		DurationMS: op.EndTime.AsTime().Sub(op.StartTime.AsTime()).Milliseconds(),
	}, r.ResumedBytes)
}
