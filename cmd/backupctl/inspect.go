package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"

	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
)

func newDiffCmd() *cobra.Command {
	var (
		f         repoFlags
		workspace string
	)
	cmd := &cobra.Command{
		Use:   "diff -r REPO --owner O SNAPSHOT1 SNAPSHOT2",
		Short: "Show the paths added, removed or modified between two snapshots",
		Long: `List every path that differs between SNAPSHOT1 (old) and SNAPSHOT2 (new),
each an ID, a unique ID prefix or latest: "+" added, "-" removed, "M"
modified (content, type, mode, ownership, link target or extended
attributes; a new mtime alone is not a change). Unchanged directories are
skipped without being read.`,
		Args: usage.Args("SNAPSHOT1", "SNAPSHOT2"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, closeRepo, err := f.openOwner(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo()
			var trees [2]*repo.Snapshot
			for i, a := range args {
				if trees[i], _, err = r.FindSnapshot(ctx, workspace, a); err != nil {
					return err
				}
			}
			m := r.NewMeasurer() // a crafted snapshot must not make the diff endless
			for _, s := range trees {
				if _, err := m.Measure(ctx, s.Tree, 0); err != nil {
					return err
				}
			}
			var changes []repo.Change
			err = r.Diff(ctx, trees[0].Tree, trees[1].Tree, func(c repo.Change) error {
				if f.json {
					changes = append(changes, c)
				} else {
					fmt.Printf("%c %s\n", c.Kind, c.Path)
				}
				return nil
			})
			if err != nil || !f.json {
				return err
			}
			out := make([]map[string]string, 0, len(changes))
			kinds := map[repo.ChangeKind]string{repo.Added: "added", repo.Removed: "removed", repo.Modified: "modified"}
			for _, c := range changes {
				out = append(out, map[string]string{"change": kinds[c.Kind], "path": c.Path})
			}
			return json.NewEncoder(os.Stdout).Encode(out)
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "look up the snapshots only in this workspace")
	return cmd
}

func newStatsCmd() *cobra.Command {
	var f repoFlags
	cmd := &cobra.Command{
		Use:   "stats -r REPO [--owner O] [--json]",
		Short: "Show sizes, deduplication and object counts per owner",
		Long: `For each owner (or only --owner): the number of snapshots, the logical
size (the sum of every snapshot's file bytes), the stored size (the pack
objects), the deduplication ratio between the two, and the numbers of
blobs and packs.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p, owners, err := f.openOwners(ctx)
			if err != nil {
				return err
			}
			defer p.Close()
			type ownerStats struct {
				Owner      string  `json:"owner"`
				Snapshots  int     `json:"snapshots"`
				Logical    int64   `json:"logical_bytes"`
				Stored     int64   `json:"stored_bytes"`
				DedupRatio float64 `json:"dedup_ratio"`
				Blobs      int     `json:"blobs"`
				Packs      int     `json:"packs"`
			}
			var all []ownerStats
			none := "" // why --owner has no repository
			for _, o := range owners {
				st, err := p.Owner(ctx, o, false)
				if errors.Is(err, repo.ErrNoRepository) {
					none = err.Error()
					continue
				}
				if err != nil {
					return err
				}
				r, err := repo.Load(ctx, st, false)
				if errors.Is(err, repo.ErrNoRepository) {
					none = placement.NoBackups(o, err).Error()
					continue
				}
				if err != nil {
					return fmt.Errorf("owner %s: %w", o, err)
				}
				s := ownerStats{Owner: o}
				refs, err := r.ListSnapshots(ctx, "")
				if err != nil {
					return err
				}
				s.Snapshots = len(refs)
				for _, ref := range refs {
					snap, err := r.LoadSnapshot(ctx, ref)
					if err != nil {
						return err
					}
					s.Logical += snap.Stats.Bytes
				}
				err = st.List(ctx, "data/", func(oi storage.ObjectInfo) error {
					s.Stored += oi.Size
					s.Packs++
					return nil
				})
				if err != nil {
					return fmt.Errorf("owner %s: list packs: %w", o, err)
				}
				s.Blobs, _ = r.Index().Len()
				if s.Stored > 0 {
					s.DedupRatio = float64(s.Logical) / float64(s.Stored)
				}
				all = append(all, s)
			}
			if f.json {
				if all == nil {
					all = []ownerStats{}
				}
				return json.NewEncoder(os.Stdout).Encode(all)
			}
			for _, s := range all {
				fmt.Printf("owner %s: %s, logical %s, stored %s in %s (%.1fx), %s\n",
					s.Owner, plural(int64(s.Snapshots), "snapshot"), fmtBytes(s.Logical), fmtBytes(s.Stored),
					plural(int64(s.Packs), "pack"), s.DedupRatio, plural(int64(s.Blobs), "blob"))
			}
			if len(all) == 0 {
				if none != "" {
					fmt.Fprintln(os.Stderr, none)
				} else {
					noneFound(f.owner, "")
				}
			}
			return nil
		},
	}
	f.register(cmd, false)
	f.registerJSON(cmd)
	return cmd
}
