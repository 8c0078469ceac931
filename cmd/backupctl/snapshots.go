package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
)

type snapshotJSON struct {
	ID string `json:"id"`
	*repo.Snapshot
}

// unreadableJSON is a snapshot whose object could not be read, in --json:
// what its key tells, and why.
type unreadableJSON struct {
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	Owner     string    `json:"owner"`
	Workspace string    `json:"workspace"`
	Error     string    `json:"error"`
}

// listed is one snapshot of a listing: its table row and its --json form.
type listed struct {
	row  snapshotRow
	json any
}

func newSnapshotsCmd() *cobra.Command {
	var (
		f         repoFlags
		d         daemonFlags
		workspace string
	)
	cmd := &cobra.Command{
		Use:   "snapshots -r REPO [--owner O] [--workspace W] [--json]",
		Short: "List snapshots, oldest first",
		Long: `List the snapshots of one workspace, of one owner, or (without --owner)
of every owner under the storage root. Listing every owner reads the whole
root's key listing, so give --owner on large roots.

A snapshot whose object cannot be read (damaged, or of a format this
backupctl does not know) is listed too, on a line of its own saying
UNREADABLE and why (in --json: with an "error" field instead of its
contents); then, after the whole listing, backupctl exits with status 1,
so that a listing showing damage never passes for a clean one. A storage
failure (unreachable, permission denied) stops the listing, also with
status 1.

KIND says whether a snapshot is a checkpoint (backup --checkpoint, the
daemon's CheckpointWorkspace) or a backup; in --json a checkpoint has
"checkpoint": true.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if d.enabled() {
				if f.owner == "" {
					return usageError{Err: fmt.Errorf("--daemon needs --owner")}
				}
				return snapshotsViaDaemon(ctx, &d, f.owner, workspace, f.json)
			}
			p, owners, err := f.openOwners(ctx)
			if err != nil {
				return err
			}
			defer p.Close()
			var out []listed
			none := "" // why --owner has no snapshots
			for _, o := range owners {
				r, err := p.OpenSnapshots(ctx, o)
				if errors.Is(err, repo.ErrNoRepository) {
					none = err.Error() // "no backups for owner O ..."
					continue
				}
				if err != nil {
					return err
				}
				refs, err := r.ListSnapshots(ctx, workspace)
				if err != nil {
					return fmt.Errorf("owner %s: %w", o, err)
				}
				for _, ref := range refs {
					s, err := r.LoadSnapshot(ctx, ref)
					switch {
					case errors.Is(err, storage.ErrNotFound):
						continue // deleted since the listing
					case err != nil && ctx.Err() == nil && repo.Damaged(err):
						out = append(out, unreadable(ref.ID.String(), o, ref.Workspace, ref.Time, err.Error()))
						continue
					case err != nil:
						return fmt.Errorf("owner %s: %w", o, err)
					}
					out = append(out, listed{
						row: snapshotRow{ID: ref.ID.String(), Time: s.Time, Owner: s.Owner, Workspace: s.Workspace, Host: s.Host,
							Files: s.Stats.Files, Bytes: s.Stats.Bytes, Tags: s.Tags, Checkpoint: s.Checkpoint},
						json: snapshotJSON{ID: ref.ID.String(), Snapshot: s},
					})
				}
			}
			if len(out) == 0 && !f.json {
				if none != "" {
					fmt.Fprintln(os.Stderr, none)
				} else {
					noneFound(f.owner, workspace)
				}
				return nil
			}
			return printListing(out, f.json)
		},
	}
	f.register(cmd, false)
	f.registerJSON(cmd)
	d.register(cmd)
	cmd.Flags().StringVar(&workspace, "workspace", "", "only this workspace's snapshots")
	return cmd
}

// noneFound says on stderr that a listing found nothing: no backups for
// the owner (of the workspace), or none at all.
func noneFound(owner, workspace string) {
	switch {
	case owner != "" && workspace != "":
		fmt.Fprintf(os.Stderr, "no backups for owner %s, workspace %s\n", owner, workspace)
	case owner != "":
		fmt.Fprintf(os.Stderr, "no backups for owner %s\n", owner)
	default:
		fmt.Fprintln(os.Stderr, "no backups")
	}
}

// unreadable is the listing's entry for a snapshot that could not be read.
func unreadable(id, owner, workspace string, t time.Time, why string) listed {
	return listed{
		row:  snapshotRow{ID: id, Time: t, Owner: owner, Workspace: workspace, Error: why},
		json: unreadableJSON{ID: id, Time: t, Owner: owner, Workspace: workspace, Error: why},
	}
}

// printListing prints a listing as a table or as JSON, and fails (exit
// status 1) after printing it when any snapshot could not be read.
func printListing(out []listed, asJSON bool) error {
	bad := 0
	for _, l := range out {
		if l.row.Error != "" {
			bad++
		}
	}
	if asJSON {
		js := make([]any, len(out))
		for i, l := range out {
			js[i] = l.json
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(js); err != nil {
			return err
		}
	} else {
		rows := make([]snapshotRow, len(out))
		for i, l := range out {
			rows[i] = l.row
		}
		if err := printSnapshotTable(rows); err != nil {
			return err
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d snapshots could not be read (listed with the reason)", bad, len(out))
	}
	return nil
}

// snapshotRow is one line of the snapshots table.
type snapshotRow struct {
	ID, Owner, Workspace, Host string
	Time                       time.Time
	Files, Bytes               int64
	Tags                       map[string]string
	// Checkpoint: the snapshot is a checkpoint (KIND checkpoint, else
	// backup).
	Checkpoint bool
	// Error is set when the snapshot could not be read: then only ID,
	// Owner, Workspace and Time are known.
	Error string
}

// maxTableError is the most of an error a table line shows.
const maxTableError = 300

func printSnapshotTable(rows []snapshotRow) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tOWNER\tWORKSPACE\tHOST\tFILES\tSIZE\tKIND\tTAGS")
	for _, s := range rows {
		when := s.Time.Local().Format("2006-01-02 15:04:05")
		if s.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t-\t-\t-\t-\tUNREADABLE: %s\n", s.ID[:8], when, s.Owner, s.Workspace, oneLine(s.Error, maxTableError))
			continue
		}
		var tags []string
		for k, v := range s.Tags {
			tags = append(tags, k+"="+v)
		}
		sort.Strings(tags)
		kind := "backup"
		if s.Checkpoint {
			kind = "checkpoint"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", s.ID[:8], when,
			s.Owner, s.Workspace, s.Host, s.Files, fmtBytes(s.Bytes), kind, strings.Join(tags, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rows) == 1 {
		fmt.Fprintln(os.Stderr, "1 snapshot")
	} else {
		fmt.Fprintf(os.Stderr, "%d snapshots\n", len(rows))
	}
	return nil
}

// oneLine is s on one line (control characters as spaces), cut to at
// most max bytes.
func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func newLsCmd() *cobra.Command {
	var (
		f         repoFlags
		workspace string
	)
	cmd := &cobra.Command{
		Use:   "ls -r REPO --owner O SNAPSHOT [PATH]",
		Short: "List the files of a snapshot",
		Long: `List every entry of SNAPSHOT (an ID, a unique ID prefix, or latest) under
PATH (default: the whole snapshot), recursively, with type, mode, size and
modification time. A file that kept changing while it was backed up (see
backup --help) is marked "(changing: ...)".`,
		Args: usage.Args("SNAPSHOT", "[PATH]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, closeRepo, err := f.openOwner(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo()
			snap, _, err := r.FindSnapshot(ctx, workspace, args[0])
			if err != nil {
				return err
			}
			id := snap.Tree
			prefix := "/"
			if len(args) == 2 {
				for _, part := range strings.Split(strings.Trim(path.Clean("/"+args[1]), "/"), "/") {
					if part == "" {
						continue
					}
					t, err := r.LoadTree(ctx, id)
					if err != nil {
						return err
					}
					i := sort.Search(len(t.Nodes), func(i int) bool { return t.Nodes[i].Name >= part })
					if i == len(t.Nodes) || t.Nodes[i].Name != part {
						return fmt.Errorf("%s: no such path in snapshot", args[1])
					}
					n := t.Nodes[i]
					if n.Type != repo.TypeDir {
						printNode(path.Join(prefix, part), &n)
						return nil
					}
					id, prefix = n.Subtree, path.Join(prefix, part)
				}
			}
			// A crafted snapshot can name one subtree over and over: refuse
			// to print more than a restore would write.
			if _, err := r.NewMeasurer().Measure(ctx, id, 0); err != nil {
				return err
			}
			return walkTree(cmd, r, id, prefix)
		},
	}
	f.register(cmd, true)
	cmd.Flags().StringVar(&workspace, "workspace", "", "look up SNAPSHOT only in this workspace")
	return cmd
}

func walkTree(cmd *cobra.Command, r *repo.Repository, id chunk.ID, dir string) error {
	t, err := r.LoadTree(cmd.Context(), id)
	if err != nil {
		return err
	}
	for i := range t.Nodes {
		n := &t.Nodes[i]
		p := path.Join(dir, n.Name)
		printNode(p, n)
		if n.Type == repo.TypeDir {
			if err := walkTree(cmd, r, n.Subtree, p); err != nil {
				return err
			}
		}
	}
	return nil
}

func printNode(p string, n *repo.Node) {
	typ := map[repo.NodeType]byte{repo.TypeFile: '-', repo.TypeDir: 'd', repo.TypeSymlink: 'l', repo.TypeFIFO: 'p'}[n.Type]
	line := fmt.Sprintf("%c%s %10d %s %s", typ, permString(n.Mode), n.Size, time.Unix(0, n.MTime).Local().Format("2006-01-02 15:04:05"), p)
	if n.Type == repo.TypeSymlink {
		line += " -> " + n.Target
	}
	if n.Flags&repo.NodeChanging != 0 {
		line += "  (changing: kept changing while backed up; stored as last read)"
	}
	fmt.Println(line)
}

func permString(m uint32) string {
	const rwx = "rwxrwxrwx"
	b := []byte("---------")
	for i := range 9 {
		if m&(1<<(8-i)) != 0 {
			b[i] = rwx[i]
		}
	}
	if m&04000 != 0 {
		b[2] = 's'
	}
	if m&02000 != 0 {
		b[5] = 's'
	}
	if m&01000 != 0 {
		b[8] = 't'
	}
	return string(b)
}

func newInitCmd() *cobra.Command {
	var (
		f        repoFlags
		level    int
		packSize int
	)
	cmd := &cobra.Command{
		Use:   "init -r REPO --owner O [--compression-level N] [--pack-size BYTES]",
		Short: "Create an owner's repository with explicit parameters",
		Long: `Create owner O's repository. Optional: a first backup creates it with
defaults. Use init to choose the compression level (1 fastest .. 4 best)
or the target pack size.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p, err := f.openPlacement(ctx, true)
			if err != nil {
				return err
			}
			defer p.Close()
			st, err := p.Owner(ctx, f.owner, true)
			if err != nil {
				return err
			}
			cfg, err := repo.NewConfig(level, packSize)
			if err != nil {
				return usageError{Err: err}
			}
			if _, err := repo.Init(ctx, st, cfg); err != nil {
				return fmt.Errorf("owner %s: %w", f.owner, err)
			}
			fmt.Printf("created repository %s for owner %s\n", cfg.ID, f.owner)
			return nil
		},
	}
	f.register(cmd, true)
	cmd.Flags().IntVar(&level, "compression-level", int(chunk.DefaultLevel), "zstd level: 1 fastest, 2 default, 3 better, 4 best")
	cmd.Flags().IntVar(&packSize, "pack-size", repo.DefaultPackSize, "target pack object size in `BYTES`")
	return cmd
}
