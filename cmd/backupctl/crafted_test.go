package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/internal/crafted"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
)

// maxRSS is the bound on any process's peak resident set (KiB).
const maxRSS = 256 << 10

// outcome is what one command must do in the presence of a crafted object.
type outcome int

const (
	notRun   outcome = iota // not run: what another command shows already, at a cost
	clean                   // exit 0, no warning
	warned                  // exit 0, a warning on stderr naming the object
	failed                  // exit 1, one error line on stderr, the last, naming the object
	unlisted                // exit 1, the listing shows the snapshot UNREADABLE, named
	problem                 // exit 1, check prints a problem line naming the object
	missing                 // exit 0, check warns of packs the index names and storage lacks (ignored)
)

func (o outcome) String() string {
	return [...]string{"-", "clean", "warned", "failed", "unlisted", "problem", "missing"}[o]
}

// craftedCommands are run, in this order, against every attack.
var craftedCommands = []string{"restore", "ls", "snapshots", "check", "backup"}

// craftedOutcomes says, per attack, what each of craftedCommands must do.
// A damaged index object or pack trailer is worked around (packs are the
// truth, indexed from their trailers); a damaged snapshot, tree or blob
// fails what needs it; a backup passes over a damaged parent. The costly
// index objects are loaded by every command that loads the index, at
// seconds each: check alone shows them (the daemon's test restores them).
var craftedOutcomes = map[string][5]outcome{
	//                     restore  ls      snapshots check    backup
	"index-bomb":         {warned, warned, clean, problem, warned},
	"index-bombs-4":      {notRun, notRun, clean, problem, notRun},
	"index-count":        {warned, warned, clean, problem, warned},
	"index-at-limits":    {notRun, notRun, clean, missing, notRun},
	"index-rawlen-4GiB":  {warned, warned, clean, problem, warned},
	"index-truncated":    {warned, warned, clean, problem, warned},
	"pack-trailer-4GiB":  {warned, warned, clean, problem, warned},
	"pack-truncated":     {failed, clean, clean, problem, clean},
	"treepack-truncated": {failed, failed, clean, problem, warned},
	"snapshot-truncated": {failed, failed, unlisted, problem, warned},
	"expansion-bomb":     {failed, failed, clean, problem, clean},
	"depth-bomb":         {failed, failed, clean, problem, clean},
	"tree-nodes":         {failed, failed, clean, problem, warned},
	"tree-count":         {failed, failed, clean, problem, warned},
	"blob-1000x":         {failed, clean, clean, problem, clean},
	"file-size":          {failed, clean, clean, problem, clean},
	"snapshot-100MB":     {failed, failed, unlisted, problem, warned},
	"snapshot-1e6-tags":  {failed, failed, unlisted, problem, warned},
	"snapshot-65-tags":   {failed, failed, unlisted, problem, warned},
	"config-10MB":        {failed, failed, failed, failed, failed},
}

// craftedSource is a small workspace: a few files, a subdirectory, and 2
// MiB of random data (more than one chunk).
func craftedSource(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "a.txt"), []byte("alpha\n"), 0o644)
	os.WriteFile(filepath.Join(src, "sub", "b.txt"), []byte("beta\n"), 0o644)
	data := make([]byte, 2<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	os.WriteFile(filepath.Join(src, "data.bin"), data, 0o644)
	return src
}

// ownerStorage opens one owner's storage in a local store.
func ownerStorage(t *testing.T, store, owner string) storage.Storage {
	t.Helper()
	root, err := local.New(store)
	if err != nil {
		t.Fatal(err)
	}
	st, err := placement.NewPrefixPerOwner(root).Owner(context.Background(), owner, false)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestCraftedObjects plants every crafted object in an owner's repository
// made by a real backup and runs restore, ls, snapshots, check and backup
// on it: each refuses the object with exit status 1 and one line naming it
// (check: a problem line), or works around it with a warning naming it,
// and no process's peak RSS reaches 256 MiB.
func TestCraftedObjects(t *testing.T) {
	store := t.TempDir()
	repoURL := "file://" + store
	src := craftedSource(t)
	if len(craftedOutcomes) != len(crafted.Attacks) {
		t.Fatalf("%d outcomes for %d attacks", len(craftedOutcomes), len(crafted.Attacks))
	}
	for _, a := range crafted.Attacks {
		t.Run(a.Name, func(t *testing.T) {
			t.Parallel()
			want, ok := craftedOutcomes[a.Name]
			if !ok {
				t.Fatalf("no outcomes for attack %s", a.Name)
			}
			owner := "evil-" + a.Name
			common := []string{"-r", repoURL, "--owner", owner}
			if r := run(t, nil, append(append([]string{"backup", "--workspace", "w"}, common...), src)...); r.code != 0 {
				t.Fatalf("backup: exit %d\n%s", r.code, r.stderr)
			}
			start := time.Now()
			obj, err := a.Plant(context.Background(), ownerStorage(t, store, owner), owner, "w")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("planted %v in %v", obj, time.Since(start).Round(time.Millisecond))
			for i, c := range craftedCommands {
				if want[i] == notRun {
					continue
				}
				args := []string{c}
				switch c {
				case "restore":
					args = append(args, "--workspace", "w", "--no-cache", filepath.Join(t.TempDir(), "dst"))
				case "ls":
					args = append(args, "--workspace", "w", "--no-cache", "latest")
				case "snapshots":
					args = append(args, "--workspace", "w")
				case "check":
					args = append(args, "--read-data")
				case "backup":
					args = append(args, "--workspace", "w", "--no-cache", src)
				}
				args = append(args[:1], append(append([]string(nil), common...), args[1:]...)...)
				start := time.Now()
				r := run(t, nil, args...)
				line, msg := judge(want[i], r, obj)
				t.Logf("%-9s %-8v exit %d, peak RSS %3d MiB, %5.2fs: %s", c, want[i], r.code, r.maxRSS>>10, time.Since(start).Seconds(), line)
				if msg != "" {
					t.Errorf("%s: %s (want %v; object %v)\nstdout: %s\nstderr: %s", c, msg, want[i], obj, cut(r.stdout), cut(r.stderr))
				}
				if r.maxRSS >= maxRSS {
					t.Errorf("%s: peak RSS %d MiB, over 256 MiB", c, r.maxRSS>>10)
				}
			}
		})
	}
}

// judge returns the line of r that shows the outcome, and what is wrong
// with r for the outcome want ("" if nothing).
func judge(want outcome, r result, obj crafted.Object) (line, wrong string) {
	if strings.Contains(r.stderr, "panic") || strings.Contains(r.stderr, "goroutine ") {
		return "", "crashed"
	}
	lines := func(s, prefix string) []string {
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
			if strings.HasPrefix(l, prefix) {
				out = append(out, l)
			}
		}
		return out
	}
	named := func(ls []string) string {
		for _, l := range ls {
			if obj.NamedIn(l) {
				return l
			}
		}
		return ""
	}
	warnings := lines(r.stderr, "warning")
	switch want {
	case clean:
		line = strings.SplitN(strings.TrimSpace(r.stdout), "\n", 2)[0]
		if r.code != 0 || len(warnings) > 0 {
			return line, fmt.Sprintf("exit %d or a warning", r.code)
		}
	case warned:
		if line = named(warnings); r.code != 0 || line == "" {
			return line, fmt.Sprintf("exit %d, or no warning naming the object", r.code)
		}
	case failed:
		all := lines(r.stderr, "")
		errs := lines(r.stderr, "backupctl: ")
		if len(errs) > 0 {
			line = errs[0]
		}
		if r.code != 1 || len(errs) != 1 || all[len(all)-1] != line || !obj.NamedIn(line) {
			return line, fmt.Sprintf("exit %d, want 1 and one error line, the last, naming the object", r.code)
		}
	case unlisted:
		if line = named(lines(r.stdout, "")); r.code != 1 || !strings.Contains(line, "UNREADABLE") {
			return line, fmt.Sprintf("exit %d, want 1 and the snapshot listed UNREADABLE, named", r.code)
		}
	case problem:
		if line = named(lines(r.stdout, "problem: ")); r.code != 1 || line == "" {
			return line, fmt.Sprintf("exit %d, want 1 and a problem line naming the object", r.code)
		}
	case missing:
		// The index names packs storage lacks: they are ignored (no one
		// deduplicates against them), each named in a warning; nothing
		// needed them, so no problem.
		ws := lines(r.stdout, "warning: ")
		if len(ws) > 0 {
			line = ws[0]
		}
		if r.code != 0 || len(ws) == 0 || len(lines(r.stdout, "problem: ")) != 0 {
			return line, fmt.Sprintf("exit %d, want 0, warnings and no problem", r.code)
		}
		for _, w := range ws {
			if !strings.Contains(w, "missing from storage") && w != "warning: more not shown" {
				return line, "a warning other than a missing pack: " + w
			}
		}
	}
	return line, ""
}

func cut(s string) string {
	if len(s) > 2000 {
		return s[:2000] + "…"
	}
	return s
}

// TestDamagedIndexObject is the acceptance of a damaged index object (the
// backup's own cut in half, or a crafted one beside it): backup and
// restore of the owner still work, each with a warning naming the object;
// check reports it (exit 1); repair index makes check clean, and the
// warnings stop.
func TestDamagedIndexObject(t *testing.T) {
	for _, name := range []string{"index-truncated", "index-bomb", "index-rawlen-4GiB"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var attack crafted.Attack
			for _, a := range crafted.Attacks {
				if a.Name == name {
					attack = a
				}
			}
			store := t.TempDir()
			src := craftedSource(t)
			common := []string{"-r", "file://" + store, "--owner", "o", "--no-cache"}
			cmd := func(args ...string) []string {
				return append(append(args[:1:1], common...), args[1:]...)
			}
			first := strings.TrimSpace(ok(t, run(t, nil, cmd("backup", "--workspace", "w", src)...)).stdout)
			obj, err := attack.Plant(context.Background(), ownerStorage(t, store, "o"), "o", "w")
			if err != nil {
				t.Fatal(err)
			}
			wantWarning := func(what string, r result) {
				t.Helper()
				if line, msg := judge(warned, r, obj); msg != "" {
					t.Fatalf("%s: %s\nstdout: %s\nstderr: %s", what, msg, r.stdout, r.stderr)
				} else {
					t.Logf("%s: %s", what, line)
				}
			}
			os.WriteFile(filepath.Join(src, "sub", "new.txt"), []byte("after the damage\n"), 0o644)
			r := run(t, nil, cmd("backup", "--workspace", "w", src)...)
			wantWarning("backup", r)
			second := strings.TrimSpace(r.stdout)
			for _, id := range []string{first, second} {
				dst := filepath.Join(t.TempDir(), "dst")
				wantWarning("restore "+id[:8], run(t, nil, cmd("restore", "--workspace", "w", "--snapshot", id, dst)...))
				for _, p := range []string{"a.txt", "sub/b.txt", "data.bin"} {
					if !sameFile(t, filepath.Join(src, p), filepath.Join(dst, p)) {
						t.Fatalf("restore %s: %s differs", id[:8], p)
					}
				}
			}
			r = run(t, nil, cmd("check", "--read-data")...)
			if line, msg := judge(problem, r, obj); msg != "" {
				t.Fatalf("check: %s\nstdout: %s\nstderr: %s", msg, r.stdout, r.stderr)
			} else {
				t.Logf("check: %s", line)
			}
			r = ok(t, run(t, nil, append([]string{"repair", "index"}, common...)...))
			t.Logf("repair index: %s", strings.TrimSpace(r.stdout))
			r = ok(t, run(t, nil, cmd("check", "--read-data")...))
			if !strings.Contains(r.stdout, "no problems found (2 snapshots") || strings.Contains(r.stdout, "warning") || r.stderr != "" {
				t.Fatalf("check after repair: %q %q", r.stdout, r.stderr)
			}
			r = ok(t, run(t, nil, cmd("restore", "--workspace", "w", filepath.Join(t.TempDir(), "dst"))...))
			if r.stderr != "" {
				t.Fatalf("restore after repair warns: %q", r.stderr)
			}
		})
	}
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	return err == nil && string(x) == string(y)
}
