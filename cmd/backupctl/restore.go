package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"
	"github.com/backupd/backupd/pkg/exclude"

	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

func newRestoreCmd() *cobra.Command {
	var (
		f         repoFlags
		d         daemonFlags
		workspace string
		snapshot  string
		idMaps    idMapFlags
		over      bsync.RestoreOptions
	)
	cmd := &cobra.Command{
		Use:   "restore -r REPO --owner O --workspace W [--snapshot ID|latest] [--overwrite [--verify] [--delete]] [--include PATH]... [--ready-before-complete [--priority GLOB]... [--late GLOB]... [--ready-max-file-size N]] [--json] DIR",
		Short: "Restore a workspace snapshot into a directory",
		Long: `Restore a snapshot of workspace W (the latest unless --snapshot names one
by ID or unique ID prefix) into DIR. DIR is created if missing and must
otherwise be empty, unless --overwrite is given. Every byte is verified
against its content hash; a mismatch stops the restore with an error naming
the damaged object.

With --overwrite, DIR may hold an earlier state of the workspace:
  - a file with the snapshot's size and mtime (with --verify: the same
    content) is left as it is, apart from permission bits and owner;
  - any other file is replaced; the parts of it the snapshot still has are
    copied from it instead of downloaded;
  - an entry of the wrong kind (a symlink or directory where the snapshot
    has a file, say) is removed; nothing is ever written through a link;
  - with --delete, what the snapshot does not have is removed.

--include PATH (repeatable) restores only PATH (relative to the snapshot's
root) with everything below it, and the directories leading to it.

--ready-before-complete (not with --overwrite) makes DIR usable before the
restore completes: first the whole tree (directories, symlinks,
permissions, hard links), the files below .git directories, every file of
at most --ready-max-file-size bytes (default 1 MiB), the files matching a
--priority GLOB (gitignore syntax, relative to the snapshot's root;
repeatable) and the files the snapshot lists as most recently modified;
then a line says READY (time since the start, bytes still to come), and
the rest follows. Each late file is written under a temporary name
(.backupd-restore-*.tmp) in its directory and renamed into place once
complete and verified, so no one sees a partial file; a file created
meanwhile at that name is kept (the snapshot's is dropped) and reported as
a conflict. The last line is the usual one, once the restore is complete.

--late GLOB (repeatable) leaves what it matches for after READY, whatever
its size. A matched directory (--late node_modules/) is left out of the
first part altogether: after READY it is restored whole under a temporary
name and renamed into place in one step once complete, so it appears
complete or not at all; if the workspace has made that directory
meanwhile, the workspace's is kept and reported as a conflict. --priority
wins over --late, and --late over the recent list.`,
		Args: usage.Args("DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			uidMap, gidMap, err := idMaps.parse()
			if err != nil {
				return err
			}
			if (over.Verify || over.Delete) && !over.Overwrite {
				return usageError{Err: fmt.Errorf("--verify and --delete need --overwrite")}
			}
			if over.ReadyBeforeComplete && over.Overwrite {
				return usageError{Err: fmt.Errorf("--ready-before-complete is not possible with --overwrite")}
			}
			if !over.ReadyBeforeComplete && (len(over.Priority) > 0 || len(over.Late) > 0 || cmd.Flags().Changed("ready-max-file-size")) {
				return usageError{Err: fmt.Errorf("--priority, --late and --ready-max-file-size need --ready-before-complete")}
			}
			if over.ReadyMaxFileSize < 0 {
				return usageError{Err: fmt.Errorf("--ready-max-file-size %d is negative", over.ReadyMaxFileSize)}
			}
			if err := checkPatterns("--priority", over.Priority); err != nil {
				return err
			}
			if err := checkPatterns("--late", over.Late); err != nil {
				return err
			}
			ctx := cmd.Context()
			start := time.Now()
			if !over.ReadyBeforeComplete {
				over.ReadyMaxFileSize = 0 // the flag's default is not a request
			}
			if d.enabled() {
				dir, err := filepath.Abs(args[0])
				if err != nil {
					return err
				}
				return restoreViaDaemon(ctx, &d, &f, &pb.RestoreWorkspaceRequest{
					Owner: f.owner, Workspace: workspace, SnapshotId: snapshot, Path: dir,
					UidMappings: idMappings(uidMap), GidMappings: idMappings(gidMap),
					Overwrite: over.Overwrite, Verify: over.Verify, Delete: over.Delete, Includes: over.Include,
					ReadyBeforeComplete: over.ReadyBeforeComplete, Priority: over.Priority, ReadyMaxFileSize: over.ReadyMaxFileSize,
					Late: over.Late,
				})
			}
			r, closeRepo, err := f.openOwner(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo()
			snap, ref, err := r.FindSnapshot(ctx, workspace, snapshot)
			if err != nil {
				return err
			}
			prog := &bsync.Progress{}
			stop := startProgress(f.showProgress(), os.Stderr, "restore", prog)
			warn := newWarner(f.showProgress())
			opts := over
			opts.Progress, opts.Downloads, opts.Warn, opts.UIDMap, opts.GIDMap = prog, f.downloads, warn, uidMap, gidMap
			var ready *readyAt
			if opts.ReadyBeforeComplete {
				opts.Ready = func(left int64) {
					ready = &readyAt{after: time.Since(start), left: left, known: true}
					printReady(&f, ready)
				}
			}
			res, err := bsync.Restore(ctx, r, snap, args[0], opts)
			stop()
			if err != nil {
				return fmt.Errorf("restore of snapshot %s failed: %w", ref.ID.Short(), err)
			}
			printRestore(&f, over.Overwrite, ref.ID.String(), res, time.Since(start), ready)
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	d.register(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "workspace `ID` to restore")
	_ = cmd.MarkFlagRequired("workspace")
	idMaps.register(cmd, "recorded container ids are written as host ids when restoring as root")
	cmd.Flags().StringVar(&snapshot, "snapshot", "latest", "snapshot `ID` (or unique prefix) to restore, or latest")
	cmd.Flags().BoolVar(&over.Overwrite, "overwrite", false, "restore over what DIR holds: keep matching files, replace the rest")
	cmd.Flags().BoolVar(&over.Verify, "verify", false, "with --overwrite: compare existing files by content, not size and mtime")
	cmd.Flags().BoolVar(&over.Delete, "delete", false, "with --overwrite: remove what the snapshot does not have")
	cmd.Flags().StringArrayVar(&over.Include, "include", nil, "restore only this `PATH` of the snapshot (repeatable)")
	cmd.Flags().BoolVar(&over.ReadyBeforeComplete, "ready-before-complete", false, "make DIR usable before the restore completes: small, .git, priority and recent files first, then READY, then the rest")
	cmd.Flags().StringArrayVar(&over.Priority, "priority", nil, "with --ready-before-complete: restore files matching `GLOB` (gitignore syntax) before READY (repeatable)")
	cmd.Flags().Int64Var(&over.ReadyMaxFileSize, "ready-max-file-size", bsync.DefaultReadyMaxFileSize, "with --ready-before-complete: restore files of at most `BYTES` before READY")
	cmd.Flags().StringArrayVar(&over.Late, "late", nil, "with --ready-before-complete: restore files matching `GLOB` (gitignore syntax) after READY whatever their size, e.g. node_modules/ (repeatable)")
	return cmd
}

// checkPatterns checks the patterns of flag before anything is opened.
func checkPatterns(flag string, patterns []string) error {
	if _, err := exclude.New(flag, patterns); err != nil {
		return usageError{Err: err}
	}
	return nil
}

// readyAt is when a ready-before-complete restore was READY: after how
// long since its start, and (if known) with how many bytes still to come.
type readyAt struct {
	after time.Duration
	left  int64
	known bool
}

// printReady prints the READY line (not with --json: the final object
// holds it).
func printReady(f *repoFlags, r *readyAt) {
	if f.json {
		return
	}
	if r.known {
		fmt.Printf("READY after %.1fs: the workspace is usable, %s still to come\n", r.after.Seconds(), fmtBytes(r.left))
		return
	}
	fmt.Printf("READY after %.1fs: the workspace is usable\n", r.after.Seconds())
}

// printRestore prints a finished restore, a line or with --json an
// object.
func printRestore(f *repoFlags, overwrite bool, id string, res *bsync.RestoreResult, dur time.Duration, ready *readyAt) {
	if f.json {
		out := map[string]any{
			"snapshot_id": id, "files": res.Files, "dirs": res.Dirs,
			"symlinks": res.Symlinks, "bytes": res.Bytes, "pack_bytes_read": res.PackBytes,
			"unchanged_files": res.Unchanged, "reused_bytes": res.ReusedBytes, "deleted": res.Deleted,
			"duration_ms": dur.Milliseconds(),
		}
		if ready != nil {
			out["ready_ms"] = ready.after.Milliseconds()
			if ready.known {
				out["ready_bytes_left"] = ready.left
			}
			out["conflicts"] = res.Conflicts
			out["conflict_paths"] = res.ConflictPaths
		}
		json.NewEncoder(os.Stdout).Encode(out)
		return
	}
	fmt.Printf("restored snapshot %s: %s, %s, %s, %s in %.1fs\n",
		id[:8], plural(res.Files, "file"), plural(res.Dirs, "dir"), plural(res.Symlinks, "symlink"), fmtBytes(res.Bytes), dur.Seconds())
	if overwrite {
		fmt.Printf("  %s unchanged, %s reused from existing files, %s downloaded, %s deleted\n",
			plural(res.Unchanged, "file"), fmtBytes(res.ReusedBytes), fmtBytes(res.PackBytes), plural(res.Deleted, "entry"))
	}
	if res.Conflicts > 0 {
		fmt.Printf("  %s: created in the workspace before the restore wrote them, the workspace's kept:\n", plural(res.Conflicts, "conflict"))
		for _, p := range res.ConflictPaths {
			fmt.Printf("    %s\n", p)
		}
		if n := res.Conflicts - int64(len(res.ConflictPaths)); n > 0 {
			fmt.Printf("    and %d more\n", n)
		}
	}
}

// restoreViaDaemon runs a restore on the daemon, with the same progress
// bar and output as a direct one.
func restoreViaDaemon(ctx context.Context, d *daemonFlags, f *repoFlags, req *pb.RestoreWorkspaceRequest) error {
	c, closeConn, err := d.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	resp, err := c.RestoreWorkspace(ctx, req)
	if err != nil {
		return rpcError(d, err)
	}
	prog := &bsync.Progress{}
	stop := startProgress(f.showProgress(), os.Stderr, "restore", prog)
	var ready *readyAt
	op, err := followEach(ctx, c, resp.Operation, prog, func(op *pb.Operation) {
		if ready != nil || op.ReadyTime == nil {
			return
		}
		// The bytes to come are known if READY is seen while it lasts.
		ready = &readyAt{after: op.ReadyTime.AsTime().Sub(op.CreateTime.AsTime())}
		if p := op.Progress; p.GetPhase() == pb.OperationPhase_OPERATION_PHASE_READY {
			ready.left, ready.known = p.GetBytesTotal()-p.GetBytesDone(), true
		}
		printReady(f, ready)
	})
	stop()
	if err != nil {
		return rpcError(d, err)
	}
	if err := opFailed(op); err != nil {
		return err
	}
	r := op.Result
	printRestore(f, req.Overwrite, r.SnapshotId, &bsync.RestoreResult{
		Files: r.Files, Dirs: r.Dirs, Symlinks: r.Symlinks, Bytes: r.Bytes, PackBytes: r.NewBytes,
		Unchanged: r.UnchangedFiles, ReusedBytes: r.ReusedBytes, Deleted: r.Deleted,
		Conflicts: r.Conflicts, ConflictPaths: r.ConflictPaths,
	}, op.EndTime.AsTime().Sub(op.CreateTime.AsTime()), ready)
	return nil
}
