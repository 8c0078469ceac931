package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/pkg/exclude"
	bsync "github.com/backupd/backupd/pkg/sync"
)

func newBackupCmd() *cobra.Command {
	var (
		f         repoFlags
		workspace string
		tags      []string
		parent    string
		force     bool
		idMaps    idMapFlags
		excludes  []string
	)
	cmd := &cobra.Command{
		Use:   "backup -r REPO --owner O --workspace W [--tag k=v]... [--exclude PATTERN]... [--json] DIR",
		Short: "Back up a directory as a new snapshot of a workspace",
		Long: `Back up DIR as a new snapshot of workspace W in owner O's repository,
creating the repository on first use. Only content not already in the
repository is stored. Prints the new snapshot's ID, or with --json one
JSON object with the backup's statistics.

Files unchanged since the parent snapshot (same size, mtime, ctime and
inode) are not read again; --force reads everything.

Excludes use gitignore syntax, relative to DIR: "*.log" anywhere, "/build"
only at the top, "cache/" directories only, "!keep.log" to take one back,
"**" across directories. Patterns from --exclude come first, then those in
DIR/` + exclude.ExcludeFile + ` (one per line, # for comments) if it exists.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tagMap := map[string]string{}
			for _, t := range tags {
				k, v, ok := strings.Cut(t, "=")
				if !ok || k == "" {
					return usageError{fmt.Errorf("--tag %q: want KEY=VALUE", t)}
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
			r, closeRepo, err := f.openOwner(ctx, true)
			if err != nil {
				return err
			}
			defer closeRepo()
			prog := &bsync.Progress{}
			stop := startProgress(f.showProgress(), os.Stderr, "backup", prog)
			warn := newWarner(f.showProgress())
			res, err := bsync.Backup(ctx, r, args[0], bsync.BackupOptions{
				Owner: f.owner, Workspace: workspace, Tags: tagMap, Progress: prog, Warn: warn, Uploads: f.uploads,
				Parent: parent, Force: force, UIDMap: uidMap, GIDMap: gidMap, Exclude: excludes,
			})
			stop()
			if err != nil {
				return fmt.Errorf("backup failed, no snapshot written: %w", err)
			}
			st := res.Snapshot.Stats
			if f.json {
				return json.NewEncoder(os.Stdout).Encode(map[string]any{
					"snapshot_id": res.SnapshotID.String(), "files": st.Files, "unchanged_files": st.UnchangedFiles, "dirs": st.Dirs,
					"symlinks": st.Symlinks, "skipped": st.Skipped, "excluded": st.Excluded, "bytes": st.Bytes,
					"new_bytes": st.NewBytes, "stored_bytes": st.StoredBytes, "blobs": st.Blobs,
					"new_blobs": st.NewBlobs, "objects_written": st.ObjectsWritten, "duration_ms": st.DurationMS,
				})
			}
			if f.showProgress() {
				fmt.Fprintf(os.Stderr, "%d files, %d dirs, %s; new %s, stored %s in %d objects, %.1fs\n",
					st.Files, st.Dirs, fmtBytes(st.Bytes), fmtBytes(st.NewBytes), fmtBytes(st.StoredBytes),
					st.ObjectsWritten, float64(st.DurationMS)/1000)
			}
			fmt.Println(res.SnapshotID)
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "workspace `ID` the snapshot belongs to")
	_ = cmd.MarkFlagRequired("workspace")
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag the snapshot with `KEY=VALUE` (repeatable)")
	cmd.Flags().StringVar(&parent, "parent", "", "compare with this snapshot `ID` (default: the workspace's latest); unchanged files are not read")
	idMaps.register(cmd, "host ids on disk are recorded as container ids")
	cmd.Flags().BoolVar(&force, "force", false, "read every file, even those unchanged since the parent snapshot")
	cmd.Flags().StringArrayVar(&excludes, "exclude", nil, "leave out entries matching `PATTERN` (gitignore syntax; repeatable)")
	return cmd
}
