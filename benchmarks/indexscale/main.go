// Command indexscale measures backup and restore in a repository of many
// blobs (issue 11: a 1-million-file workspace in a repository of 10
// million blobs, peak RSS at most 256 MiB each).
//
//	indexscale repo -dir DIR [-blobs 10000000] [-per-pack 2000]
//	indexscale files -dir DIR [-files 1000000] [-per-dir 1000]
//	indexscale load -dir DIR [-cache-dir D] [-index-memory-mib N] [-cpuprofile F]
//	indexscale backup -dir DIR -src SRC [-cache-dir D] [-heapprofile PREFIX [-every 10s]]
//	indexscale run -- COMMAND ARGS...
//
// repo writes, into a local repository at DIR for owner "bench", index
// objects that locate -blobs random blob ids in packs of -per-pack blobs
// each, without the blobs' content: each pack is an empty placeholder
// object under data/, so that a reader's listing of data/ shows it (a
// reader ignores the index entries of packs the listing does not show).
// Nothing ever reads these blobs: they only make the index that large.
// files writes a workspace of -files small files (40 to 2,000 bytes of
// text-like content, every file different) in directories of -per-dir
// files. load opens the repository as backupctl does and loads its index,
// and prints the load time, the number of blobs and the Go heap. backup
// backs up SRC in-process as backupctl does (its soft memory limit too),
// with heap profiles as it goes, to see what holds memory. run executes a
// command and prints its wall time and peak RSS (benchmarks/RESULTS.md,
// section 8, has the commands).
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/backupd/backupd/benchmarks/internal/benchrun"
	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage/local"
	bsync "github.com/backupd/backupd/pkg/sync"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: indexscale repo|files|load|run ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "repo":
		err = genRepo(os.Args[2:])
	case "files":
		err = genFiles(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	case "backup":
		err = backup(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "indexscale:", err)
		os.Exit(1)
	}
}

func run(args []string) error { return benchrun.Run("indexscale", args) }

func genRepo(args []string) error {
	fs := flag.NewFlagSet("repo", flag.ExitOnError)
	dir := fs.String("dir", "", "repository directory (created)")
	blobs := fs.Int("blobs", 10_000_000, "blobs to index")
	perPack := fs.Int("per-pack", 2000, "blobs per (placeholder) pack")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("repo: -dir is required")
	}
	ctx := context.Background()
	r, st, err := benchrun.InitRepo(ctx, *dir)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(11, 11))
	start := time.Now()
	var part []repo.PackIndex
	inPart := 0
	flush := func() error {
		if len(part) == 0 {
			return nil
		}
		if _, err := r.SaveIndex(ctx, part); err != nil {
			return err
		}
		part, inPart = nil, 0
		return nil
	}
	for done := 0; done < *blobs; {
		var pack chunk.ID
		for i := 0; i < len(pack); i += 8 {
			binary.LittleEndian.PutUint64(pack[i:], rng.Uint64())
		}
		n := min(*perPack, *blobs-done)
		entries := make([]repo.BlobEntry, n)
		off := uint32(0)
		for i := range entries {
			e := &entries[i]
			for k := 0; k < len(e.ID); k += 8 {
				binary.LittleEndian.PutUint64(e.ID[k:], rng.Uint64())
			}
			size := 100 + uint32(rng.IntN(4000))
			e.Type, e.Compression, e.Offset, e.StoredLen, e.RawLen = repo.DataBlob, chunk.Raw, off, size, size
			off += size
		}
		// The placeholder: listed under data/, never read.
		if err := st.Put(ctx, repo.PackKey(pack), bytes.NewReader(nil), 0); err != nil {
			return err
		}
		part = append(part, repo.PackIndex{Pack: pack, Blobs: entries})
		inPart += n
		done += n
		if inPart >= repo.MaxIndexBlobs {
			if err := flush(); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "indexscale: %d blobs, %.0f s\n", done, time.Since(start).Seconds())
		}
	}
	if err := flush(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "indexscale: %d blobs in %.0f s\n", *blobs, time.Since(start).Seconds())
	return nil
}

func genFiles(args []string) error {
	fs := flag.NewFlagSet("files", flag.ExitOnError)
	dir := fs.String("dir", "", "workspace directory (created)")
	files := fs.Int("files", 1_000_000, "files")
	perDir := fs.Int("per-dir", 1000, "files per directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("files: -dir is required")
	}
	words := []string{"func", "return", "if", "err", "nil", "for", "range", "the", "index", "blob", "pack", "type", "struct", "int", "string", "{", "}", "(", ")", "\n", "\t", ":=", "=", "package", "import"}
	rng := rand.New(rand.NewPCG(1, 1))
	start := time.Now()
	var buf bytes.Buffer
	for i := 0; i < *files; i++ {
		sub := filepath.Join(*dir, fmt.Sprintf("d%04d", i / *perDir))
		if i%*perDir == 0 {
			if err := os.MkdirAll(sub, 0o755); err != nil {
				return err
			}
		}
		buf.Reset()
		fmt.Fprintf(&buf, "// file %d\n", i) // every file different
		n := 40 + rng.IntN(1960)
		for buf.Len() < n {
			buf.WriteString(words[rng.IntN(len(words))])
			buf.WriteByte(' ')
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%04d.go", i%*perDir)), buf.Bytes(), 0o644); err != nil {
			return err
		}
		if i%100000 == 99999 {
			fmt.Fprintf(os.Stderr, "indexscale: %d files, %.0f s\n", i+1, time.Since(start).Seconds())
		}
	}
	return nil
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	dir := fs.String("dir", "", "repository directory")
	cacheDir := fs.String("cache-dir", "", "node-local cache directory (empty: none)")
	memMiB := fs.Int64("index-memory-mib", 0, "the index's memory budget in MiB (0: repo.DefaultIndexMemory)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the load to `FILE`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
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
	start := time.Now()
	r, err := repo.OpenCached(ctx, st, false, *cacheDir, 0)
	if err != nil {
		return err
	}
	r.SetIndexMemory(*memMiB << 20)
	if err := r.LoadIndex(ctx, 8); err != nil {
		return err
	}
	took := time.Since(start)
	blobs, packs := r.Index().Len()
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	mem, disk := r.Index().Footprint()
	fmt.Printf("loaded %d blobs, %d packs in %.2f s; heap in use after GC %d MiB (%.1f bytes a blob); index: %d MiB in memory, %d MiB on disk (%.1f and %.1f bytes a blob)\n",
		blobs, packs, took.Seconds(), ms.HeapInuse>>20, float64(ms.HeapInuse)/float64(blobs),
		mem>>20, disk>>20, float64(mem)/float64(blobs), float64(disk)/float64(blobs))
	runtime.KeepAlive(r)
	return nil
}

// backup backs up -src into the repository in-process, as backupctl does
// (under its soft memory limit), writing a heap profile every -every.
func backup(args []string) error {
	fs := flag.NewFlagSet("backup", flag.ExitOnError)
	dir := fs.String("dir", "", "repository directory")
	src := fs.String("src", "", "directory to back up")
	cacheDir := fs.String("cache-dir", "", "node-local cache directory (empty: none)")
	heap := fs.String("heapprofile", "", "write the heap in use to `PREFIX`-N.prof every -every")
	every := fs.Duration("every", 10*time.Second, "how often to write a heap profile")
	if err := fs.Parse(args); err != nil {
		return err
	}
	debug.SetMemoryLimit(160 << 20)
	ctx := context.Background()
	root, err := local.New(*dir)
	if err != nil {
		return err
	}
	st, err := placement.NewPrefixPerOwner(root).Owner(ctx, "bench", false)
	if err != nil {
		return err
	}
	r, err := repo.LoadCached(ctx, st, false, *cacheDir, 0)
	if err != nil {
		return err
	}
	if *heap != "" {
		go func() {
			for i := 0; ; i++ {
				time.Sleep(*every)
				f, _ := os.Create(fmt.Sprintf("%s-%d.prof", *heap, i))
				pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
		}()
	}
	res, err := bsync.Backup(ctx, r, *src, bsync.BackupOptions{Owner: "bench", Workspace: "ws"})
	if err != nil {
		return err
	}
	fmt.Println(res.SnapshotID, res.Snapshot.Stats.NewBlobs)
	return nil
}
