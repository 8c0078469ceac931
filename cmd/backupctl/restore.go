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
		Use:   "restore -r REPO --owner O --workspace W [--snapshot ID|latest] [--overwrite [--verify] [--delete]] [--include PATH]... [--json] DIR",
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
root) with everything below it, and the directories leading to it.`,
		Args: usage.Args("DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			uidMap, gidMap, err := idMaps.parse()
			if err != nil {
				return err
			}
			if (over.Verify || over.Delete) && !over.Overwrite {
				return usageError{Err: fmt.Errorf("--verify and --delete need --overwrite")}
			}
			ctx := cmd.Context()
			start := time.Now()
			if d.enabled() {
				dir, err := filepath.Abs(args[0])
				if err != nil {
					return err
				}
				return restoreViaDaemon(ctx, &d, &f, &pb.RestoreWorkspaceRequest{
					Owner: f.owner, Workspace: workspace, SnapshotId: snapshot, Path: dir,
					UidMappings: idMappings(uidMap), GidMappings: idMappings(gidMap),
					Overwrite: over.Overwrite, Verify: over.Verify, Delete: over.Delete, Includes: over.Include,
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
			res, err := bsync.Restore(ctx, r, snap, args[0], opts)
			stop()
			if err != nil {
				return fmt.Errorf("restore of snapshot %s failed: %w", ref.ID.Short(), err)
			}
			printRestore(&f, over.Overwrite, ref.ID.String(), res, time.Since(start))
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
	return cmd
}

// printRestore prints a finished restore, a line or with --json an
// object.
func printRestore(f *repoFlags, overwrite bool, id string, res *bsync.RestoreResult, dur time.Duration) {
	if f.json {
		json.NewEncoder(os.Stdout).Encode(map[string]any{
			"snapshot_id": id, "files": res.Files, "dirs": res.Dirs,
			"symlinks": res.Symlinks, "bytes": res.Bytes, "pack_bytes_read": res.PackBytes,
			"unchanged_files": res.Unchanged, "reused_bytes": res.ReusedBytes, "deleted": res.Deleted,
			"duration_ms": dur.Milliseconds(),
		})
		return
	}
	fmt.Printf("restored snapshot %s: %s, %s, %s, %s in %.1fs\n",
		id[:8], plural(res.Files, "file"), plural(res.Dirs, "dir"), plural(res.Symlinks, "symlink"), fmtBytes(res.Bytes), dur.Seconds())
	if overwrite {
		fmt.Printf("  %s unchanged, %s reused from existing files, %s downloaded, %s deleted\n",
			plural(res.Unchanged, "file"), fmtBytes(res.ReusedBytes), fmtBytes(res.PackBytes), plural(res.Deleted, "entry"))
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
	op, err := follow(ctx, c, resp.Operation, prog)
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
	}, op.EndTime.AsTime().Sub(op.CreateTime.AsTime()))
	return nil
}
