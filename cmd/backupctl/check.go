package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"

	"github.com/backupd/backupd/pkg/repo"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// errProblems makes a command exit 1 after printing what it found.
var errProblems = errors.New("problems found")

func newCheckCmd() *cobra.Command {
	var (
		f        repoFlags
		d        daemonFlags
		readData bool
	)
	cmd := &cobra.Command{
		Use:   "check -r REPO --owner O [--read-data] [--json]",
		Short: "Check an owner's repository for damage",
		Long: `Check owner O's repository as stored (the node-local cache is not used):
every index object and pack trailer reads, every pack the index names
exists, every snapshot reads and matches its id, every tree its snapshots
reach reads and stays within the limits of a restore, and every file's
content is in the index and adds up to its size. With --read-data every
pack is read too and every blob checked against its hash (slow: it reads
the whole repository).

Problems (lost or damaged data) are printed one per line and make the exit
code 1. Warnings lose nothing: packs no index object names yet, left by an
interrupted backup or by a damaged index object, are used all the same and
indexed by the next backup or by 'backupctl repair index'.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var res *pb.CheckRepositoryResponse
			if d.enabled() {
				c, closeConn, err := d.dial()
				if err != nil {
					return err
				}
				defer closeConn()
				if res, err = c.CheckRepository(ctx, &pb.CheckRepositoryRequest{Owner: f.owner, ReadData: readData}); err != nil {
					return rpcError(&d, err)
				}
			} else {
				f.noCache = true // the stored objects, not the cache's copies
				r, closeRepo, err := f.openOwner(ctx, false)
				if err != nil {
					return err
				}
				defer closeRepo()
				chk, err := r.Check(ctx, readData)
				if err != nil {
					return err
				}
				res = &pb.CheckRepositoryResponse{Ok: len(chk.Problems) == 0, Problems: chk.Problems, Warnings: chk.Warnings,
					Snapshots: chk.Snapshots, Trees: chk.Trees, Blobs: chk.Blobs, PacksRead: chk.PacksRead}
			}
			if f.json {
				if err := json.NewEncoder(os.Stdout).Encode(map[string]any{
					"ok": res.Ok, "problems": nonNil(res.Problems), "warnings": nonNil(res.Warnings), "snapshots": res.Snapshots,
					"trees": res.Trees, "blobs": res.Blobs, "packs_read": res.PacksRead,
				}); err != nil {
					return err
				}
			} else {
				for _, p := range res.Problems {
					fmt.Printf("problem: %s\n", p)
				}
				for _, w := range res.Warnings {
					fmt.Printf("warning: %s\n", w)
				}
				what := fmt.Sprintf("%s, %s, %s", plural(res.Snapshots, "snapshot"), plural(res.Trees, "tree"), plural(res.Blobs, "blob"))
				if readData {
					what += fmt.Sprintf(", %s read", plural(res.PacksRead, "pack"))
				}
				if res.Ok {
					fmt.Printf("no problems found (%s)\n", what)
				} else {
					fmt.Printf("%s found (%s)\n", plural(int64(len(res.Problems)), "problem"), what)
				}
			}
			if !res.Ok {
				return errProblems
			}
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	d.register(cmd)
	cmd.Flags().BoolVar(&readData, "read-data", false, "also read every pack and verify every blob's hash")
	return cmd
}

func newRepairCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repair index ...",
		Short: "Repair an owner's repository",
		Long:  `Repair what check reports, without losing anything stored.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{Err: fmt.Errorf("unknown command %q for \"repair\"", args[0])}
			}
			return usageError{Err: errors.New("repair: name what to repair: index")}
		},
	}
	var (
		f   repoFlags
		all bool
	)
	index := &cobra.Command{
		Use:   "index -r REPO --owner O [--read-all-packs] [--json]",
		Short: "Rebuild the index from the packs' trailers",
		Long: `Make owner O's index whole again. Every pack lists its blobs in its own
trailer, so the index can always be rebuilt: the packs no readable index
object names (left by an interrupted backup, or named only by a damaged
index object) are written into a new index object, and then the damaged
index objects are deleted. With --read-all-packs every pack's trailer is
read and the whole index written anew, then every old index object is
deleted.

New index objects are stored before anything is deleted, and index objects
written meanwhile by a running backup are left alone, so repair may run at
any time and may be interrupted at any point.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			f.noCache = true
			r, closeRepo, err := f.openOwner(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo()
			res, err := r.RepairIndex(ctx, all)
			if err != nil {
				return err
			}
			if f.json {
				bad := []string{}
				for _, b := range res.BadPacks {
					bad = append(bad, b.String())
				}
				return json.NewEncoder(os.Stdout).Encode(map[string]any{"packs_indexed": res.PacksIndexed,
					"index_objects_written": res.IndexesWritten, "index_objects_deleted": res.IndexesDeleted, "unreadable_packs": bad})
			}
			for _, b := range res.BadPacks {
				fmt.Printf("unreadable pack, not indexed: %s\n", b)
			}
			fmt.Printf("indexed %s in %s; deleted %s\n", plural(int64(res.PacksIndexed), "pack"),
				plural(int64(res.IndexesWritten), "new index object"), plural(int64(res.IndexesDeleted), "index object"))
			return nil
		},
	}
	f.register(index, true)
	f.registerJSON(index)
	index.Flags().BoolVar(&all, "read-all-packs", false, "read every pack's trailer and write the whole index anew")
	cmd.AddCommand(index)
	return cmd
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// plural formats a count with a noun, "1 snapshot", "2 snapshots".
func plural(n int64, noun string) string {
	if n == 1 {
		return fmt.Sprintf("1 %s", noun)
	}
	if strings.HasSuffix(noun, "y") {
		return fmt.Sprintf("%d %sies", n, strings.TrimSuffix(noun, "y"))
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// warnIndex prints what loading an owner's index found and worked around.
func warnIndex(r *repo.Repository) {
	rep := r.IndexReport()
	for _, d := range rep.Damaged {
		fmt.Fprintf(os.Stderr, "warning: %s; its packs were indexed from their trailers (run 'backupctl repair index')\n", d)
	}
	for _, b := range rep.BadPacks {
		fmt.Fprintf(os.Stderr, "warning: %s; its blobs are unknown\n", b)
	}
}
