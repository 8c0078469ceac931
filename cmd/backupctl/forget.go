package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"

	"github.com/backupd/backupd/pkg/retention"
)

func newForgetCmd() *cobra.Command {
	var (
		f          repoFlags
		workspace  string
		keepLast   int
		keepWithin string
		keepTags   []string
		dryRun     bool
	)
	cmd := &cobra.Command{
		Use:   "forget -r REPO --owner O [--workspace W] [--keep-last N] [--keep-within D] [--keep-tag T]... [--dry-run] [--json]",
		Short: "Forget snapshots a retention policy does not keep",
		Long: `Apply a retention policy to the snapshots of workspace W (or, without
--workspace, to each workspace of owner O on its own) and forget the ones it
does not keep: their snapshot objects are deleted. The data they alone
reference stays in the repository until a prune.

A snapshot is kept if any rule keeps it: the newest --keep-last N; those
taken within --keep-within D of the workspace's newest snapshot (not of
now: an idle workspace keeps its backups; D like 7d, 2w, 36h); those with a
--keep-tag KEY or KEY=VALUE (repeatable). The workspace's newest snapshot is
always kept. At least one rule is required.

--dry-run shows what would be forgotten and forgets nothing.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := retention.Policy{KeepLast: keepLast, KeepTags: keepTags}
			if keepWithin != "" {
				d, err := retention.ParseDuration(keepWithin)
				if err != nil {
					return usageError{Err: fmt.Errorf("--keep-within: %w", err)}
				}
				p.KeepWithin = d
			}
			if err := p.Validate(); err != nil {
				return usageError{Err: err}
			}
			if p.Empty() {
				return usageError{Err: errors.New("forget needs a rule: --keep-last, --keep-within or --keep-tag")}
			}
			ctx := cmd.Context()
			r, closeRepo, err := f.openOwner(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo()
			results, err := r.Forget(ctx, workspace, p, dryRun)
			if err != nil {
				return err
			}
			if f.json {
				type entry struct {
					ID      string   `json:"id"`
					Time    string   `json:"time"`
					Reasons []string `json:"reasons,omitempty"`
				}
				type ws struct {
					Workspace string  `json:"workspace"`
					Keep      []entry `json:"keep"`
					Forget    []entry `json:"forget"`
				}
				out := []ws{}
				for _, res := range results {
					w := ws{Workspace: res.Workspace, Keep: []entry{}, Forget: []entry{}}
					for _, k := range res.Keep {
						w.Keep = append(w.Keep, entry{ID: k.ID, Time: k.Time.Format("2006-01-02T15:04:05Z07:00"), Reasons: k.Reasons})
					}
					for _, ref := range res.Forget {
						w.Forget = append(w.Forget, entry{ID: ref.ID.String(), Time: ref.Time.Format("2006-01-02T15:04:05Z07:00")})
					}
					out = append(out, w)
				}
				return json.NewEncoder(os.Stdout).Encode(map[string]any{"dry_run": dryRun, "workspaces": out})
			}
			verb := "forgot"
			if dryRun {
				verb = "would forget"
			}
			total := 0
			for _, res := range results {
				fmt.Printf("workspace %s: keep %d, %s %d\n", res.Workspace, len(res.Keep), verb, len(res.Forget))
				for _, k := range res.Keep {
					fmt.Printf("  keep    %s  %s  (%s)\n", k.ID[:8], k.Time.Format("2006-01-02 15:04:05"), strings.Join(k.Reasons, ", "))
				}
				for _, ref := range res.Forget {
					fmt.Printf("  forget  %s  %s\n", ref.ID.Short(), ref.Time.Format("2006-01-02 15:04:05"))
				}
				total += len(res.Forget)
			}
			fmt.Printf("%s %s; their data is freed by the next prune\n", verb, plural(int64(total), "snapshot"))
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "apply the policy to this workspace `ID` only (default: each workspace of the owner)")
	cmd.Flags().IntVar(&keepLast, "keep-last", 0, "keep the newest `N` snapshots")
	cmd.Flags().StringVar(&keepWithin, "keep-within", "", "keep the snapshots within `DURATION` (7d, 2w, 36h) of the newest")
	cmd.Flags().StringArrayVar(&keepTags, "keep-tag", nil, "keep the snapshots with this tag, `KEY` or KEY=VALUE (repeatable)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be forgotten; forget nothing")
	return cmd
}

func newDeleteCmd() *cobra.Command {
	var (
		f         repoFlags
		workspace string
	)
	cmd := &cobra.Command{
		Use:   "delete -r REPO --owner O --workspace W [--json]",
		Short: "Delete a workspace: all its snapshots",
		Long: `Delete every snapshot of workspace W of owner O. Their data stays in the
repository until a prune, which frees what no other snapshot uses.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, closeRepo, err := f.openOwner(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo()
			rec, err := r.DeleteWorkspace(ctx, workspace)
			if err != nil {
				return err
			}
			if f.json {
				return json.NewEncoder(os.Stdout).Encode(map[string]any{"workspace": workspace, "snapshots_deleted": rec.Objects,
					"bytes": rec.Bytes, "duration_ms": rec.Duration.Milliseconds()})
			}
			fmt.Printf("deleted workspace %s: %s in %.1fs; its data is freed by the next prune\n", workspace,
				plural(int64(rec.Objects), "snapshot"), rec.Duration.Seconds())
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "workspace `ID` to delete")
	_ = cmd.MarkFlagRequired("workspace")
	return cmd
}
