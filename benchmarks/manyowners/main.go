// Command manyowners measures the daemon serving many owners (issue 11):
// ListSnapshots latency with 1,000 owners' repositories of 1,000
// snapshots each on the local store.
//
//	manyowners gen -dir DIR [-owners 1000] [-snapshots 1000]
//	manyowners list -dir DIR [-owners 1000] [-requests 5000] [-concurrency 1] [-page-size 0] [-cpuprofile F]
//
// gen makes, for each owner o0000, o0001, ..., a repository with one real
// backup (pkg/sync) of a small workspace and snapshots-1 more snapshot
// objects pointing at its tree, a minute apart (repo.SaveSnapshot),
// written into a memory store and then copied as files into the local
// store's layout under DIR (a real backup per snapshot, and a Put with
// its fsyncs per object, would take hours for a million snapshots and
// measure nothing ListSnapshots does). list starts the daemon in-process
// on DIR (no node-local cache), connects a gRPC client over loopback TCP,
// and sends ListSnapshots requests for owners picked at random,
// -concurrency at a time, each listing one page (-page-size, 0 for the
// daemon's default of 100) of the owner's one workspace; it prints the
// latency percentiles.
package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/backupd/backupd/pkg/daemon"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
	bsync "github.com/backupd/backupd/pkg/sync"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: manyowners gen -dir DIR [flags] | manyowners list -dir DIR [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "gen":
		err = gen(os.Args[2:])
	case "list":
		err = list(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "manyowners:", err)
		os.Exit(1)
	}
}

func ownerName(i int) string { return fmt.Sprintf("o%04d", i) }

func gen(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ExitOnError)
	dir := fs.String("dir", "", "local store directory (created)")
	owners := fs.Int("owners", 1000, "owners")
	snapshots := fs.Int("snapshots", 1000, "snapshots per owner (one real backup, the rest pointing at its tree)")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("gen: -dir is required")
	}
	ws, err := os.MkdirTemp("", "manyowners-ws-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(ws)
	start := time.Now()
	var done atomic.Int64
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i := range *owners {
		g.Go(func() error {
			if err := genOwner(ctx, *dir, ws, ownerName(i), *snapshots); err != nil {
				return fmt.Errorf("owner %s: %w", ownerName(i), err)
			}
			if n := done.Add(1); n%100 == 0 {
				fmt.Fprintf(os.Stderr, "%d owners in %v\n", n, time.Since(start).Round(time.Second))
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	fmt.Printf("generated %d owners x %d snapshots in %v\n", *owners, *snapshots, time.Since(start).Round(time.Millisecond))
	return nil
}

// genOwner writes owner's repository under dir: one real backup of a
// small workspace of its own, and n-1 more snapshots of it.
func genOwner(ctx context.Context, dir, wsRoot, owner string, n int) error {
	src := filepath.Join(wsRoot, owner)
	for i := range 20 {
		p := filepath.Join(src, "src", fmt.Sprintf("file%02d.go", i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, fmt.Appendf(nil, "package %s\n\n// file %d of owner %s\nfunc F%d() {}\n", owner, i, owner, i), 0o644); err != nil {
			return err
		}
	}
	defer os.RemoveAll(src)
	st := mem.New()
	cfg, err := repo.NewConfig(0, 0)
	if err != nil {
		return err
	}
	r, err := repo.Init(ctx, st, cfg)
	if err != nil {
		return err
	}
	res, err := bsync.Backup(ctx, r, src, bsync.BackupOptions{Owner: owner, Workspace: "ws", Host: "bench"})
	if err != nil {
		return err
	}
	for i := 1; i < n; i++ {
		s := *res.Snapshot
		s.Time = res.Snapshot.Time.Add(-time.Duration(i) * time.Minute)
		s.Parent = ""
		if _, err := r.SaveSnapshot(ctx, &s); err != nil {
			return err
		}
	}
	// Copied into the local store's layout (a key is a path under the
	// owner's directory), without the fsyncs of its Put.
	return st.List(ctx, "", func(oi storage.ObjectInfo) error {
		b, err := storage.ReadAll(ctx, st, oi.Key, 0, -1)
		if err != nil {
			return err
		}
		p := filepath.Join(dir, owner, filepath.FromSlash(oi.Key))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		return os.WriteFile(p, b, 0o600)
	})
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func list(args []string) error {
	fs := flag.NewFlagSet("list", flag.ExitOnError)
	dir := fs.String("dir", "", "local store directory (from gen)")
	owners := fs.Int("owners", 1000, "owners gen made")
	requests := fs.Int("requests", 5000, "ListSnapshots requests")
	concurrency := fs.Int("concurrency", 1, "requests at once")
	pageSize := fs.Int("page-size", 0, "page size (0: the daemon's default)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the requests to this file")
	fs.Parse(args)
	if *dir == "" {
		return fmt.Errorf("list: -dir is required")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	roots, err := os.MkdirTemp("", "manyowners-roots-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(roots)
	ctx := context.Background()
	cfg := daemon.Config{Listen: "127.0.0.1:0", WorkspaceRoots: []string{roots}, CacheDir: "none"}
	cfg.Storage.URL = "file://" + abs
	srv, err := daemon.New(ctx, cfg, zap.NewNop())
	if err != nil {
		return err
	}
	lis, err := srv.Listen()
	if err != nil {
		return err
	}
	go srv.Serve(lis)
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := pb.NewBackupServiceClient(conn)

	want := *pageSize
	if want == 0 {
		want = 100
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	cpu0 := cpuTime()
	lat := make([]time.Duration, *requests)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, *concurrency)
	start := time.Now()
	for range *concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *requests {
					return
				}
				owner := ownerName(rand.IntN(*owners))
				t := time.Now()
				resp, err := client.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: owner, Workspace: "ws", PageSize: int32(*pageSize)})
				lat[i] = time.Since(t)
				if err == nil && len(resp.Snapshots) != want {
					err = fmt.Errorf("owner %s: %d snapshots listed, want a page of %d", owner, len(resp.Snapshots), want)
				}
				if err != nil {
					errs <- err
					next.Store(int64(*requests))
					return
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	cpu := cpuTime() - cpu0
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	slices.Sort(lat)
	q := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	var load [3]float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscan(string(b), &load[0], &load[1], &load[2])
	}
	fmt.Printf("ListSnapshots x%d (page %d, %d at once, %d owners): p50 %v p90 %v p99 %v max %v mean %v; %.0f requests/s; CPU (daemon and client) %v a request; load average %.1f\n",
		len(lat), want, *concurrency, *owners, q(0.50).Round(10*time.Microsecond), q(0.90).Round(10*time.Microsecond),
		q(0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond), (sum / time.Duration(len(lat))).Round(10*time.Microsecond),
		float64(len(lat))/wall.Seconds(), (cpu / time.Duration(len(lat))).Round(10*time.Microsecond), load[0])
	return nil
}
