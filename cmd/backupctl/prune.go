package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/backupd/backupd/internal/usage"

	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/metered"
)

func newPruneCmd() *cobra.Command {
	var (
		f         repoFlags
		dryRun    bool
		maxUnused string
	)
	cmd := &cobra.Command{
		Use:   "prune -r REPO --owner O [--dry-run] [--max-unused P] [--json]",
		Short: "Free the space no snapshot uses any more",
		Long: `Delete from owner O's repository the data no snapshot reaches any more:
what forget, delete and interrupted backups left behind.

Backups keep running during a prune; there is no lock that stops them. The
prune condemns the blobs no snapshot reaches, waits for the backups that
were already running to commit (fencing any that stopped renewing their
lease), keeps what those backups turned out to use, writes the packs and the
consolidated index that replace the old ones, and deletes only then. Only
one prune runs on a repository at a time; a second one stops with an error
naming the one that holds it. An interrupted prune is resumed by the next.

A pack with no used blob is deleted. A pack in which some blobs are unused
is repacked (its used blobs copied into a new pack, then it is deleted) when
the unused share of its bytes exceeds --max-unused P percent (default 10;
0 repacks every pack with any unused blob, 100 never repacks: such packs
are then only freed once all their blobs are unused).

--dry-run says what a prune would free and changes nothing.`,
		Args: usage.Args(),
		RunE: func(cmd *cobra.Command, args []string) error {
			mu := -1.0 // the default
			if cmd.Flags().Changed("max-unused") {
				v, err := parsePercent(maxUnused)
				if err != nil {
					return usageError{Err: fmt.Errorf("--max-unused: %w", err)}
				}
				mu = v / 100
			}
			ctx := cmd.Context()
			reqs := newRequestCounter()
			f.wrap = func(st storage.Storage) storage.Storage { return metered.New(st, reqs) }
			f.skipIndex = true
			r, closeRepo, err := f.openOwner(ctx, false)
			if err != nil {
				return err
			}
			defer closeRepo()
			host, _ := os.Hostname()
			opts := repo.PruneOptions{DryRun: dryRun, MaxUnused: mu, Host: host}
			if !f.json {
				opts.Log = func(line string) { fmt.Fprintf(os.Stderr, "prune: %s\n", line) }
			}
			res, err := r.Prune(ctx, opts)
			if err != nil {
				return fmt.Errorf("owner %s: %w", f.owner, err)
			}
			total, byKind := reqs.counts()
			if f.json {
				return printPruneJSON(res, total, byKind)
			}
			printPrune(res, total, byKind)
			return nil
		},
	}
	f.register(cmd, true)
	f.registerJSON(cmd)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be freed; change nothing")
	cmd.Flags().StringVar(&maxUnused, "max-unused", "10", "repack a pack when more than `P` percent of its bytes are unused (0 to 100; 10 and 10% alike)")
	return cmd
}

var percentRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?%?$`)

// parsePercent parses a percentage from 0 to 100, with or without a
// trailing %.
func parsePercent(s string) (float64, error) {
	if !percentRE.MatchString(s) {
		return 0, fmt.Errorf("%q is not a percentage (0 to 100, as 10 or 10%%)", s)
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(s, "%"), 64)
	if err != nil || v > 100 {
		return 0, fmt.Errorf("%q is not a percentage (0 to 100, as 10 or 10%%)", s)
	}
	return v, nil
}

// requestCounter counts storage requests by operation.
type requestCounter struct {
	mu sync.Mutex
	n  map[string]int64
}

func newRequestCounter() *requestCounter { return &requestCounter{n: map[string]int64{}} }

// ObserveCall implements metered.Observer.
func (c *requestCounter) ObserveCall(op string, _ error, _ int64, _ time.Duration) {
	c.mu.Lock()
	c.n[op]++
	c.mu.Unlock()
}

func (c *requestCounter) counts() (int64, map[string]int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var total int64
	for _, n := range c.n {
		total += n
	}
	return total, maps.Clone(c.n)
}

func printPruneJSON(res *repo.PruneResult, total int64, byKind map[string]int64) error {
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	delete(out, "Duration")
	out["duration_ms"] = res.Duration.Milliseconds()
	out["warnings"] = nonNil(res.Warnings)
	out["resumed"] = res.Resumed
	out["packs_kept_damaged"] = res.PacksKeptDamaged
	out["requests"] = total
	out["requests_by_kind"] = byKind
	return json.NewEncoder(os.Stdout).Encode(out)
}

func printPrune(res *repo.PruneResult, total int64, byKind map[string]int64) {
	would := func(s string) string {
		if res.DryRun {
			return "would " + s
		}
		return s
	}
	if res.DryRun {
		fmt.Println("dry run: nothing changed")
	} else {
		fmt.Printf("generation %d", res.Generation)
		if res.Resumed {
			fmt.Print(" (finished the deletions of an interrupted prune first)")
		}
		fmt.Println()
	}
	fmt.Printf("snapshots: %d, reaching %s; %s unused (condemned), %d resurrected\n",
		res.Snapshots, plural(int64(res.ReachableBlobs), "blob"), plural(int64(res.CondemnedBlobs), "blob"), res.Resurrected)
	if !res.DryRun {
		fmt.Printf("running backups: waited for %d, fenced %d\n", res.SessionsWaited, res.SessionsFenced)
	}
	fmt.Printf("packs: %d before, %s %d, %s %d, %s %d\n", res.PacksBefore,
		would("delete"), res.PacksDeleted, would("repack"), res.PacksRepacked, would("write"), res.PacksWritten)
	if res.PacksKeptDamaged > 0 {
		fmt.Printf("packs kept, unreadable: %d\n", res.PacksKeptDamaged)
	}
	fmt.Printf("index objects: %d before, %s %d, %s %d\n", res.IndexObjectsBefore,
		would("write"), res.IndexObjectsWritten, would("delete"), res.IndexObjectsDeleted)
	if res.DryRun {
		fmt.Printf("would free %s of %s, leaving %s\n", fmtBytes(res.BytesFreed), fmtBytes(res.BytesBefore), fmtBytes(res.BytesAfter))
	} else {
		fmt.Printf("freed %s of %s, leaving %s; %s deleted\n", fmtBytes(res.BytesFreed), fmtBytes(res.BytesBefore),
			fmtBytes(res.BytesAfter), plural(int64(res.ObjectsDeleted), "object"))
	}
	for _, w := range res.Warnings {
		fmt.Printf("warning: %s\n", w)
	}
	var kinds []string
	for _, k := range slices.Sorted(maps.Keys(byKind)) {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, byKind[k]))
	}
	fmt.Printf("%.1fs, %s (%s)\n", res.Duration.Seconds(), plural(total, "storage request"), strings.Join(kinds, ", "))
}
