package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	bsync "github.com/backupd/backupd/pkg/sync"
)

func newRestoreCmd() *cobra.Command {
	var (
		f         repoFlags
		workspace string
		snapshot  string
		idMaps    idMapFlags
	)
	cmd := &cobra.Command{
		Use:   "restore -r REPO --owner O --workspace W [--snapshot ID|latest] [--json] DIR",
		Short: "Restore a workspace snapshot into a directory",
		Long: `Restore a snapshot of workspace W (the latest unless --snapshot names one
by ID or unique ID prefix) into DIR. DIR is created if missing and must
otherwise be empty. Every byte is verified against its content hash; a
mismatch stops the restore with an error naming the damaged object.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			uidMap, gidMap, err := idMaps.parse()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			start := time.Now()
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
			res, err := bsync.Restore(ctx, r, snap, args[0], bsync.RestoreOptions{Progress: prog, Downloads: f.downloads, Warn: warn,
				UIDMap: uidMap, GIDMap: gidMap})
			stop()
			if err != nil {
				return fmt.Errorf("restore of snapshot %s failed: %w", ref.ID.Short(), err)
			}
			dur := time.Since(start)
			if f.json {
				return json.NewEncoder(os.Stdout).Encode(map[string]any{
					"snapshot_id": ref.ID.String(), "files": res.Files, "dirs": res.Dirs,
					"symlinks": res.Symlinks, "bytes": res.Bytes, "pack_bytes_read": res.PackBytes,
					"duration_ms": dur.Milliseconds(),
				})
			}
			fmt.Printf("restored snapshot %s: %d files, %d dirs, %d symlinks, %s in %.1fs\n",
				ref.ID.Short(), res.Files, res.Dirs, res.Symlinks, fmtBytes(res.Bytes), dur.Seconds())
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "workspace `ID` to restore")
	_ = cmd.MarkFlagRequired("workspace")
	idMaps.register(cmd, "recorded container ids are written as host ids when restoring as root")
	cmd.Flags().StringVar(&snapshot, "snapshot", "latest", "snapshot `ID` (or unique prefix) to restore, or latest")
	return cmd
}
