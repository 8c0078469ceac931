// Command prunescale measures prune on a large synthetic repository
// (issue 10: 1,000 snapshots and over a million blobs, peak RSS at most
// 256 MiB).
//
//	prunescale gen -dir DIR [-snapshots 1000] [-blobs 2000] [-stride 1100] [-forget 500]
//	prunescale run -- COMMAND ARGS...
//	prunescale prune -dir DIR [-dry-run] [-load-index [-cache-dir D]] [-memlimit-mib N] [-heapprofile F] [-memprofile F]
//
// gen writes, into a local repository at DIR for owner "bench", the
// given number of snapshots of workspace "ws"; snapshot i is one tree of
// 20 files whose content lists reference blobs [i*stride, i*stride+blobs)
// of a run of small random blobs (104 bytes), so that consecutive
// snapshots share blobs as incremental backups do. Each snapshot comes
// with its own index object, as each backup writes one. Then it deletes
// the oldest -forget snapshot objects, as a forget does. run executes a
// command and prints its wall time and peak RSS (a separate process, so
// that the generator's memory is not inherited into the figure). prune
// calls repo.Prune in-process: on a repository opened without its index
// (repo.Open), or with -load-index as backupctl opens it (repo.LoadCached,
// which loads the whole index first), optionally under backupctl's soft
// memory limit (-memlimit-mib 160), to tell apart what costs memory.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/backupd/backupd/benchmarks/internal/benchrun"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage/local"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: prunescale gen -dir DIR [flags] | prunescale run -- COMMAND...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "gen":
		err = gen(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	case "prune":
		err = prune(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "prunescale:", err)
		os.Exit(1)
	}
}

func run(args []string) error { return benchrun.Run("prunescale", args) }

func gen(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ExitOnError)
	dir := fs.String("dir", "", "repository directory (created)")
	snapshots := fs.Int("snapshots", 1000, "snapshots")
	blobs := fs.Int("blobs", 2000, "blobs each snapshot references")
	stride := fs.Int("stride", 1100, "new blobs each snapshot adds")
	forget := fs.Int("forget", 500, "oldest snapshots to forget")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("gen: -dir is required")
	}
	ctx := context.Background()
	r, _, err := benchrun.InitRepo(ctx, *dir)
	if err != nil {
		return err
	}
	cfg := r.Config()
	rng := rand.New(rand.NewPCG(1, 2))
	total := (*snapshots-1)**stride + *blobs
	ids := make([]chunk.ID, 0, total)
	blob := make([]byte, 104)
	newBlob := func(pb *repo.PackBuilder) chunk.ID {
		for i := 0; i < len(blob); i += 8 {
			binary.LittleEndian.PutUint64(blob[i:], rng.Uint64())
		}
		id := chunk.Hash(blob)
		stored, comp := r.Codec().Compress(nil, blob)
		pb.Add(id, repo.DataBlob, comp, stored, len(blob))
		return id
	}
	start := time.Now()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for s := range *snapshots {
		var packs []repo.PackIndex
		pb := repo.NewPackBuilder(cfg.PackSize)
		flush := func(pb *repo.PackBuilder) error {
			if pb.Count() == 0 {
				return nil
			}
			data, id, entries := pb.Finish()
			if err := r.SavePack(ctx, data, id, entries); err != nil {
				return err
			}
			packs = append(packs, repo.PackIndex{Pack: id, Blobs: entries})
			return nil
		}
		for len(ids) < s**stride+*blobs {
			ids = append(ids, newBlob(pb))
		}
		if err := flush(pb); err != nil {
			return err
		}
		window := ids[s**stride : s**stride+*blobs]
		tree := &repo.Tree{}
		per := (len(window) + 19) / 20
		for f := 0; f*per < len(window); f++ {
			content := window[f*per : min((f+1)*per, len(window))]
			tree.Nodes = append(tree.Nodes, repo.Node{Name: fmt.Sprintf("file%02d", f), Type: repo.TypeFile, Mode: 0o644,
				Size: uint64(len(content) * len(blob)), Content: content, MTime: base.UnixNano()})
		}
		tb := repo.EncodeTree(tree)
		tid := chunk.Hash(tb)
		tp := repo.NewPackBuilder(1 << 20)
		stored, comp := r.Codec().Compress(nil, tb)
		tp.Add(tid, repo.TreeBlob, comp, stored, len(tb))
		if err := flush(tp); err != nil {
			return err
		}
		if _, err := r.SaveIndex(ctx, packs); err != nil {
			return err
		}
		if _, err := r.SaveSnapshot(ctx, &repo.Snapshot{Time: base.Add(time.Duration(s) * time.Hour), Tree: tid,
			Owner: "bench", Workspace: "ws", Host: "gen", Path: "/ws", RootMode: 0o755}); err != nil {
			return err
		}
		if s%100 == 99 {
			fmt.Fprintf(os.Stderr, "prunescale: %d snapshots, %d blobs, %.0f s\n", s+1, len(ids), time.Since(start).Seconds())
		}
	}
	refs, err := r.ListSnapshots(ctx, "")
	if err != nil {
		return err
	}
	for _, ref := range refs[:min(*forget, len(refs))] {
		if err := r.DeleteSnapshot(ctx, ref); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "prunescale: %d snapshots (%d forgotten), %d blobs in %.0f s\n", len(refs), *forget, len(ids), time.Since(start).Seconds())
	return nil
}

// prune opens the repository as backupctl does and prunes it (for when
// no backupctl with prune is at hand; the figures are the same code's).
func prune(args []string) error {
	fs := flag.NewFlagSet("prune", flag.ExitOnError)
	dir := fs.String("dir", "", "repository directory")
	dry := fs.Bool("dry-run", false, "dry run")
	memprofile := fs.String("memprofile", "", "write an allocation profile to `FILE`")
	heapprofile := fs.String("heapprofile", "", "write the heap in use after the mark to `FILE`")
	loadIndex := fs.Bool("load-index", false, "open the repository as backupctl's commands do (repo.LoadCached: the whole index loaded before the prune)")
	cacheDir := fs.String("cache-dir", "", "with -load-index: the node-local cache directory (empty: none)")
	memLimit := fs.Int64("memlimit-mib", 0, "a soft memory limit in MiB, as backupctl sets 160 (0: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	root, err := local.New(*dir)
	if err != nil {
		return err
	}
	st, err := placement.NewPrefixPerOwner(root).Owner(ctx, "bench", false)
	if err != nil {
		return err
	}
	if *memLimit > 0 {
		debug.SetMemoryLimit(*memLimit << 20)
	}
	var r *repo.Repository
	if *loadIndex {
		r, err = repo.LoadCached(ctx, st, false, *cacheDir, 0)
	} else {
		r, err = repo.Open(ctx, st) // Prune loads the index it needs
	}
	if err != nil {
		return err
	}
	if *memprofile != "" {
		defer func() {
			f, _ := os.Create(*memprofile)
			pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}()
	}
	res, err := r.Prune(ctx, repo.PruneOptions{DryRun: *dry, MaxUnused: -1, Log: func(s string) {
		fmt.Fprintln(os.Stderr, "prune:", s)
		if *heapprofile != "" && strings.HasPrefix(s, "marked:") {
			runtime.GC()
			f, _ := os.Create(*heapprofile)
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
	}})
	if err != nil {
		return err
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	fmt.Println(string(b))
	return nil
}
