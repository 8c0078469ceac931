package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// workspaceSpec sizes a generated workspace (--gen-workspace).
type workspaceSpec struct {
	srcFiles    int     // source files under git control
	commits     int     // git commits (the first ones end up packed, the last ones loose)
	nodeFiles   int     // regular files under node_modules
	binaries    []int64 // sizes of the large, partly repetitive binaries under build/
	randomFiles int     // incompressible files under data/
	randomBytes int64   // their total size
	// smallFiles, if set, replaces all of the above: that many small text
	// files (1-16 KiB, log-uniform) spread over smallDirs directories,
	// about one each (the "smallfiles" preset: issue 11's case).
	smallFiles, smallDirs int
	generatorArg          string // what --gen-workspace said
}

// smallFilesWorkspace is the "smallfiles" preset: 100,000 small text files
// in 98,000 directories, ~520 MB (the shape of a large node_modules with
// one file per package directory).
var smallFilesWorkspace = workspaceSpec{smallFiles: 100_000, smallDirs: 98_000}

// defaultWorkspace is the "default" preset: ~3,000 source files in a git
// repository, 100,000 files in node_modules, 288 MiB of binaries and
// 128 MiB of random data, about 0.65 GiB in all.
var defaultWorkspace = workspaceSpec{
	srcFiles:    3000,
	commits:     4,
	nodeFiles:   100_000,
	binaries:    []int64{64 << 20, 96 << 20, 128 << 20},
	randomFiles: 4,
	randomBytes: 128 << 20,
}

// nominalSize is the spec's approximate total size (source and node_modules
// files average about 7 KiB and 2.2 KiB).
func (s workspaceSpec) nominalSize() int64 {
	if s.smallFiles > 0 {
		return int64(s.smallFiles) * 5400 // the mean of 1-16 KiB, log-uniform
	}
	n := int64(s.srcFiles)*7<<10 + int64(s.nodeFiles)*2200 + s.randomBytes
	for _, b := range s.binaries {
		n += b
	}
	return n
}

// parseWorkspaceSpec understands the presets "default" (100k-file
// node_modules, ~0.65 GiB), "small" (a tenth of it) and "tiny" (for tests),
// a scale factor such as "0.25x", or a total size such as "2GiB" (every part
// scaled so that the total is about that size).
func parseWorkspaceSpec(arg string) (workspaceSpec, error) {
	var scale float64
	switch a := strings.ToLower(strings.TrimSpace(arg)); {
	case a == "default":
		scale = 1
	case a == "small":
		scale = 0.1
	case a == "smallfiles":
		s := smallFilesWorkspace
		s.generatorArg = arg
		return s, nil
	case a == "tiny":
		return workspaceSpec{srcFiles: 40, commits: 3, nodeFiles: 500,
			binaries: []int64{300 << 10, 1 << 20}, randomFiles: 2, randomBytes: 256 << 10, generatorArg: arg}, nil
	case strings.HasSuffix(a, "x"):
		f, err := strconv.ParseFloat(strings.TrimSuffix(a, "x"), 64)
		if err != nil || f <= 0 || math.IsInf(f, 0) {
			return workspaceSpec{}, fmt.Errorf("bad workspace scale %q", arg)
		}
		scale = f
	default:
		n, err := parseSize(a)
		if err != nil || n <= 0 {
			return workspaceSpec{}, fmt.Errorf("bad --gen-workspace %q: want default, small, tiny, a scale like 0.5x or a size like 2GiB", arg)
		}
		scale = float64(n) / float64(defaultWorkspace.nominalSize())
	}
	d := defaultWorkspace
	s := workspaceSpec{
		srcFiles:     max(10, int(float64(d.srcFiles)*scale)),
		commits:      d.commits,
		nodeFiles:    max(50, int(float64(d.nodeFiles)*scale)),
		randomFiles:  d.randomFiles,
		randomBytes:  max(4096, int64(float64(d.randomBytes)*scale)),
		generatorArg: arg,
	}
	for _, b := range d.binaries {
		s.binaries = append(s.binaries, max(4096, int64(float64(b)*scale)))
	}
	return s, nil
}

// genFile is one file of the generation plan.
type genFile struct {
	path string // relative to the workspace root
	size int64
	mode os.FileMode
	kind byte // 'c' code, 'j' JSON, 't' prose, 'b' binary, 'r' random
	seed uint64
}

// workspacePlan is everything a generated workspace holds, decided up front
// (sequentially, from one seeded PRNG) so that files can then be written in
// parallel without changing the result.
type workspacePlan struct {
	src      []genFile // under git control
	other    []genFile // node_modules, build/, data/
	symlinks [][2]string
}

// generateWorkspace writes a realistic, deterministic workspace into dir:
//
//   - a git repository (the workspace root, with a real .git made by the
//     git binary: a few commits with fixed authors and dates; the early ones
//     packed by `git gc`, the last ones loose objects) holding spec.srcFiles
//     code-like text files under src/, plus README.md and .gitignore;
//   - node_modules/ (git-ignored) with spec.nodeFiles small files (about
//     200 B to 8 KiB, log-uniform: JS, .d.ts, JSON, Markdown) in nested
//     package directories, some scoped (@scope/name), some with their own
//     nested node_modules, each with a package.json, and node_modules/.bin/
//     symlinks into packages' bin/ scripts;
//   - build/ (git-ignored): large binaries of spec.binaries sizes whose
//     64 KiB pieces are random, hex-like, word-like or repeats of an earlier
//     piece of the same 4 MiB block (compressible-ish, partly deduplicable);
//   - data/ (git-ignored): spec.randomFiles files of random bytes,
//     spec.randomBytes in all (incompressible).
//
// File contents, names and git commit IDs depend only on spec; mtimes,
// inodes and git's index file do not.
func generateWorkspace(dir string, spec workspaceSpec) error {
	if spec.smallFiles > 0 {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		return writeFiles(dir, planSmallFiles(spec))
	}
	if _, err := exec.LookPath("git"); err != nil {
		return fmt.Errorf("--gen-workspace needs the git binary: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if ents, err := os.ReadDir(dir); err != nil {
		return err
	} else if len(ents) > 0 {
		return fmt.Errorf("%s is not empty", dir)
	}
	p := planWorkspace(spec)
	if err := writeFiles(dir, p.src); err != nil {
		return err
	}
	if err := buildGitHistory(dir, p.src, spec.commits); err != nil {
		return err
	}
	if err := writeFiles(dir, p.other); err != nil {
		return err
	}
	for _, l := range p.symlinks {
		path := filepath.Join(dir, l[0])
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(l[1], path); err != nil {
			return err
		}
	}
	return nil
}

// logUniform is a size between lo and hi, uniform on a log scale.
func logUniform(rng *rand.Rand, lo, hi int64) int64 {
	return int64(float64(lo) * math.Exp(rng.Float64()*math.Log(float64(hi)/float64(lo))))
}

func word(rng *rand.Rand) string { return vocabulary[rng.IntN(len(vocabulary))] }

// planSmallFiles plans spec.smallFiles text files (code, JSON, prose) of
// 1-16 KiB in spec.smallDirs directories: pkgs/<group>/<name>/, one file
// in each and the rest in directories picked at random.
func planSmallFiles(spec workspaceSpec) []genFile {
	rng := rand.New(rand.NewPCG(genSeed, 5))
	groups := max(1, spec.smallDirs/1000)
	dirs := make([]string, 0, spec.smallDirs)
	for len(dirs)+groups < spec.smallDirs {
		dirs = append(dirs, fmt.Sprintf("pkgs/g%d/%s-%s-%d", len(dirs)%groups, word(rng), word(rng), len(dirs)))
	}
	files := make([]genFile, 0, spec.smallFiles)
	for i := range spec.smallFiles {
		dir := dirs[i%len(dirs)]
		if i >= len(dirs) {
			dir = dirs[rng.IntN(len(dirs))]
		}
		kind, ext := byte('c'), ".js"
		switch r := rng.IntN(10); {
		case r < 2:
			kind, ext = 'j', ".json"
		case r < 3:
			kind, ext = 't', ".md"
		case r < 5:
			ext = ".d.ts"
		}
		files = append(files, genFile{path: fmt.Sprintf("%s/%s-%d%s", dir, word(rng), i, ext), size: logUniform(rng, 1<<10, 16<<10), mode: 0o644, kind: kind, seed: uint64(i + 1)})
	}
	return files
}

func planWorkspace(spec workspaceSpec) workspacePlan {
	rng := rand.New(rand.NewPCG(genSeed, 4))
	var p workspacePlan
	seed := uint64(1)
	add := func(list *[]genFile, path string, size int64, mode os.FileMode, kind byte) {
		*list = append(*list, genFile{path: path, size: size, mode: mode, kind: kind, seed: seed})
		seed++
	}

	// The source tree: src/<area>/<module>/<file>, a few dozen files per
	// directory.
	add(&p.src, ".gitignore", 0, 0o644, 'g')
	add(&p.src, "README.md", 6000, 0o644, 't')
	exts := []string{".ts", ".ts", ".tsx", ".py", ".js", ".css", ".json", ".md"} // no .go: gofmt -l would find them in benchmarks/_work
	var dir string
	for i := 0; i < spec.srcFiles; i++ {
		if i%25 == 0 {
			dir = fmt.Sprintf("src/%s/%s-%d", word(rng), word(rng), i/25)
		}
		ext := exts[rng.IntN(len(exts))]
		kind := byte('c')
		switch ext {
		case ".json":
			kind = 'j'
		case ".md":
			kind = 't'
		}
		add(&p.src, fmt.Sprintf("%s/%s_%d%s", dir, word(rng), i, ext), logUniform(rng, 300, 40<<10), 0o644, kind)
	}

	// node_modules: packages until spec.nodeFiles files are planned.
	files := 0
	var roots []string // top-level packages
	for pkg := 0; files < spec.nodeFiles; pkg++ {
		name := fmt.Sprintf("%s-%s-%d", word(rng), word(rng), pkg)
		if rng.IntN(7) == 0 {
			name = fmt.Sprintf("@%s/%s-%d", word(rng), word(rng), pkg)
		}
		root := "node_modules/" + name
		if len(roots) > 20 && rng.IntN(10) == 0 { // a nested dependency of an earlier package
			root = roots[rng.IntN(len(roots))] + "/node_modules/" + name
		} else {
			roots = append(roots, root)
		}
		var n int
		switch r := rng.IntN(100); {
		case r < 55:
			n = 3 + rng.IntN(15)
		case r < 93:
			n = 18 + rng.IntN(120)
		default:
			n = 150 + rng.IntN(900)
		}
		n = min(n, spec.nodeFiles-files)
		add(&p.other, root+"/package.json", logUniform(rng, 400, 3000), 0o644, 'j')
		files++
		if n > 1 && rng.IntN(20) == 0 {
			bin := word(rng) + "-" + strconv.Itoa(pkg)
			add(&p.other, root+"/bin/"+bin+".js", logUniform(rng, 200, 4000), 0o755, 'c')
			files++
			rel, _ := filepath.Rel("node_modules/.bin", root+"/bin/"+bin+".js")
			p.symlinks = append(p.symlinks, [2]string{"node_modules/.bin/" + bin, rel})
		}
		subdirs := []string{"lib", "dist", "dist/esm", "dist/cjs", "src", "types", "lib/internal"}
		for ; n > 1 && files < spec.nodeFiles; n-- {
			sub := subdirs[rng.IntN(len(subdirs))]
			var path string
			var kind byte = 'c'
			switch r := rng.IntN(20); {
			case r == 0:
				path, kind = root+"/README.md", 't'
			case r == 1:
				path, kind = root+"/"+sub+"/"+word(rng)+".json", 'j'
			case r < 5:
				path = root + "/" + sub + "/" + word(rng) + ".d.ts"
			case r < 7:
				path, kind = root+"/"+sub+"/"+word(rng)+".js.map", 'j'
			default:
				path = root + "/" + sub + "/" + word(rng) + ".js"
			}
			add(&p.other, path, logUniform(rng, 200, 8<<10), 0o644, kind)
			files++
		}
	}
	// Random words repeat: make paths unique.
	p.other = dedupPaths(p.other)

	names := []string{"app.bin", "bundle.wasm", "cache.pack", "assets.bin", "index.db"}
	for i, size := range spec.binaries {
		add(&p.other, fmt.Sprintf("build/%d-%s", i, names[i%len(names)]), size, 0o644, 'b')
	}
	for i := 0; i < spec.randomFiles; i++ {
		size := spec.randomBytes / int64(spec.randomFiles)
		if i == 0 {
			size += spec.randomBytes % int64(spec.randomFiles)
		}
		add(&p.other, fmt.Sprintf("data/blob-%d.dat", i), size, 0o644, 'r')
	}
	return p
}

// dedupPaths renames the later of two planned files with the same path
// (random words repeat) to name-N.ext.
func dedupPaths(fs []genFile) []genFile {
	seen := make(map[string]bool, len(fs))
	for i := range fs {
		p := fs[i].path
		for n := 2; seen[p]; n++ {
			dir, base := path.Split(fs[i].path)
			stem, ext, _ := strings.Cut(base, ".")
			p = fmt.Sprintf("%s%s-%d.%s", dir, stem, n, ext)
		}
		seen[p] = true
		fs[i].path = p
	}
	return fs
}

// writeFiles writes the planned files under dir, small ones by a pool of
// runtime.NumCPU() workers, large ones (over 4 MiB) block by block in
// parallel. The content of each file depends only on its plan entry.
func writeFiles(dir string, files []genFile) error {
	var small []genFile
	for _, f := range files {
		if f.size > 4<<20 {
			path := filepath.Join(dir, f.path)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			fill := func(buf []byte, i uint64) { fillBinary(buf, f.seed<<32|i) }
			if f.kind == 'r' {
				fill = func(buf []byte, i uint64) { fillRandom(buf, rand.New(rand.NewPCG(genSeed, f.seed<<32|i))) }
			}
			if err := writeBlocks(path, f.size, fill); err != nil {
				return err
			}
			continue
		}
		small = append(small, f)
	}
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for _, f := range small {
		g.Go(func() error {
			buf := fileContent(nil, f)
			path := filepath.Join(dir, f.path)
			err := os.WriteFile(path, buf, f.mode)
			if os.IsNotExist(err) {
				if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
					err = os.WriteFile(path, buf, f.mode)
				}
			}
			if err != nil {
				return err
			}
			return os.Chmod(path, f.mode) // WriteFile's mode is subject to the umask
		})
	}
	return g.Wait()
}

// fileContent appends the content of a small planned file to buf.
func fileContent(buf []byte, f genFile) []byte {
	rng := rand.New(rand.NewPCG(genSeed, f.seed))
	switch f.kind {
	case 'g':
		return append(buf, "node_modules/\nbuild/\ndata/\n*.log\n"...)
	case 'b':
		buf = append(buf, make([]byte, f.size)...)
		fillBinary(buf, f.seed<<32)
		return buf
	case 'r':
		buf = append(buf, make([]byte, f.size)...)
		fillRandom(buf, rng)
		return buf
	}
	for int64(len(buf)) < f.size {
		switch f.kind {
		case 'j':
			buf = appendJSON(buf, rng)
		case 't':
			buf = appendProse(buf, rng)
		default:
			buf = appendCode(buf, rng)
		}
	}
	return buf[:f.size]
}

// appendCode appends a few lines resembling JavaScript/TypeScript/Go.
func appendCode(b []byte, rng *rand.Rand) []byte {
	switch rng.IntN(6) {
	case 0:
		b = fmt.Appendf(b, "import { %s, %s } from './%s';\n", word(rng), word(rng), word(rng))
	case 1:
		b = fmt.Appendf(b, "\nexport function %s(%s, %s) {\n\tif (%s == null) {\n\t\treturn %d;\n\t}\n", word(rng), word(rng), word(rng), word(rng), rng.IntN(1000))
	case 2:
		b = fmt.Appendf(b, "\tconst %s = %s.%s(%s, \"%s\");\n", word(rng), word(rng), word(rng), word(rng), word(rng))
	case 3:
		b = fmt.Appendf(b, "\t// %s %s %s %s %s.\n", word(rng), word(rng), word(rng), word(rng), word(rng))
	case 4:
		b = fmt.Appendf(b, "\tfor (let i = 0; i < %s.length; i++) {\n\t\t%s[i] = %s(%s[i]);\n\t}\n", word(rng), word(rng), word(rng), word(rng))
	default:
		b = fmt.Appendf(b, "\treturn %s.%s;\n}\n", word(rng), word(rng))
	}
	return b
}

func appendJSON(b []byte, rng *rand.Rand) []byte {
	if len(b) == 0 {
		b = fmt.Appendf(b, "{\n  \"name\": \"%s\",\n  \"version\": \"%d.%d.%d\",\n  \"main\": \"lib/index.js\",\n  \"dependencies\": {\n", word(rng), rng.IntN(10), rng.IntN(30), rng.IntN(20))
	}
	return fmt.Appendf(b, "    \"%s-%s\": \"^%d.%d.%d\",\n", word(rng), word(rng), rng.IntN(10), rng.IntN(30), rng.IntN(20))
}

func appendProse(b []byte, rng *rand.Rand) []byte {
	if len(b) == 0 {
		b = fmt.Appendf(b, "# %s\n\n", word(rng))
	}
	for i := 0; i < 12; i++ {
		b = append(b, word(rng)...)
		b = append(b, ' ')
	}
	return append(b, ".\n"...)
}

// fillRandom fills buf with incompressible bytes.
func fillRandom(buf []byte, rng *rand.Rand) {
	j := 0
	for ; j+8 <= len(buf); j += 8 {
		binary.LittleEndian.PutUint64(buf[j:], rng.Uint64())
	}
	for ; j < len(buf); j++ {
		buf[j] = byte(rng.Uint64())
	}
}

// fillBinary fills buf (one block, seeded by seed) with 64 KiB pieces that
// are random, hex-like or word-like (as fillBlock) or, one piece in four, a
// copy of an earlier piece of the same block.
func fillBinary(buf []byte, seed uint64) {
	rng := rand.New(rand.NewPCG(genSeed^0xb1, seed))
	const piece = 64 << 10
	for off := 0; off < len(buf); off += piece {
		p := buf[off:min(off+piece, len(buf))]
		if off >= piece && rng.IntN(4) == 0 {
			src := rng.IntN(off/piece) * piece
			copy(p, buf[src:src+piece])
			continue
		}
		fillBlock(p, rng.Uint64())
	}
}

// buildGitHistory turns dir into a git repository whose history ends with
// the planned source files: the first commit holds 80% of them, a `git gc`
// packs it, and each later commit edits a few percent of the files and adds
// some of the rest, leaving loose objects. Authors, committers and dates are
// fixed, and no user or system git configuration is read, so commit IDs are
// the same on every generation.
func buildGitHistory(dir string, src []genFile, commits int) error {
	env := append(os.Environ(),
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=Bench Author", "GIT_AUTHOR_EMAIL=author@example.com",
		"GIT_COMMITTER_NAME=Bench Committer", "GIT_COMMITTER_EMAIL=committer@example.com",
	)
	git := func(date string, args ...string) error {
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "init.defaultBranch=main", "-c", "gc.auto=0", "-c", "pack.threads=1", "-c", "core.fsync=none"}, args...)...)
		cmd.Env = append(env, "GIT_AUTHOR_DATE="+date, "GIT_COMMITTER_DATE="+date)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	date := func(i int) string { return fmt.Sprintf("2026-01-%02dT10:00:00Z", 1+i) }
	if err := git(date(0), "init", "-q"); err != nil {
		return err
	}
	// Stage 80% of the files for the first commit; the rest, a slice per
	// later commit.
	rng := rand.New(rand.NewPCG(genSeed, 5))
	later := src[len(src)*4/5:]
	// Files not yet committed are moved aside and brought back commit by commit.
	aside := filepath.Join(dir, ".git-gen-aside")
	move := func(f genFile, from, to string) error {
		dst := filepath.Join(to, f.path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.Rename(filepath.Join(from, f.path), dst)
	}
	if commits > 1 {
		for _, f := range later {
			if err := move(f, dir, aside); err != nil {
				return err
			}
		}
	}
	for c := 0; c < commits; c++ {
		if c > 0 {
			// Bring back this commit's share of the remaining files and
			// append a line to ~3% of the committed ones.
			share := later[:len(later)/(commits-c)]
			later = later[len(share):]
			for _, f := range share {
				if err := move(f, aside, dir); err != nil {
					return err
				}
			}
			for i := 0; i < len(src)/30; i++ {
				f := src[rng.IntN(len(src))]
				path := filepath.Join(dir, f.path)
				if _, err := os.Stat(path); err != nil {
					continue // still aside
				}
				if err := appendFile(path, fmt.Appendf(nil, "// %s %s (commit %d)\n", word(rng), word(rng), c)); err != nil {
					return err
				}
			}
		}
		if err := git(date(c), "add", "-A", "."); err != nil {
			return err
		}
		if err := git(date(c), "commit", "-q", "-m", fmt.Sprintf("%s %s (%d)", word(rng), word(rng), c)); err != nil {
			return err
		}
		if c == 0 || c == commits-2 {
			if err := git(date(c), "gc", "-q"); err != nil {
				return err
			}
		}
	}
	if err := os.RemoveAll(aside); err != nil {
		return err
	}
	// git leaves ORIG_HEAD, logs and the like; that is realistic. The index
	// holds stat data and differs between generations, as in real life.
	return nil
}

func appendFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeBlocks creates path with size bytes, filling 4 MiB blocks in
// parallel with fill(block, index), so the content does not depend on the
// number of workers.
func writeBlocks(path string, size int64, fill func(buf []byte, i uint64)) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	const block = 4 << 20
	var g errgroup.Group
	g.SetLimit(runtime.NumCPU())
	for i := int64(0); i*block < size; i++ {
		g.Go(func() error {
			n := min(int64(block), size-i*block)
			buf := make([]byte, n)
			fill(buf, uint64(i))
			_, err := f.WriteAt(buf, i*block)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return f.Close()
}

// sortedFiles lists the regular files of a scanned tree, sorted.
func sortedFiles(t *treeInfo) []string {
	var out []string
	for p, e := range t.entries {
		if e.kind == 'f' {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// treeChange is a deterministic change of about 1% of a tree's regular
// files (by count), and what it takes to undo it.
type treeChange struct {
	root     string
	modified []string // an in-place edit plus an appended line
	deleted  []string
	added    []string // new files next to changed ones
	grown    string   // the largest file, with 1 MiB appended

	saved    map[string]savedFile // what undo needs
	dirTimes map[string]time.Time // mtimes of directories that gained or lost a file
}

type savedFile struct {
	data  []byte // deleted: whole content; modified: the overwritten range
	off   int64  // modified: where data was
	size  int64  // original size
	mode  os.FileMode
	mtime time.Time
}

// total is the number of files the change touched.
func (c *treeChange) total() int {
	n := len(c.modified) + len(c.deleted) + len(c.added)
	if c.grown != "" {
		n++
	}
	return n
}

// changeTree changes pct percent of the regular files of src (rounded, at
// least 4) below root, which must hold a tree identical to src: the largest
// file grows by 1 MiB; of the rest, a tenth of the changes are deletions, a
// tenth new files, and the others in-place edits of files up to 1 MiB
// (64 bytes overwritten in the middle and a line appended). Changed files
// are picked at an even stride through the sorted paths, so changes spread
// across the tree. The same src, pct and seed always make the same change.
func changeTree(root string, src *treeInfo, pct float64, seed uint64) (*treeChange, error) {
	rng := rand.New(rand.NewPCG(genSeed^0xc4, seed))
	files := sortedFiles(src)
	n := max(4, int(math.Round(float64(len(files))*pct/100)))
	c := &treeChange{root: root, saved: map[string]savedFile{}, dirTimes: map[string]time.Time{}}
	var cands []string
	for _, p := range files {
		if c.grown == "" || src.entries[p].size > src.entries[c.grown].size {
			c.grown = p
		}
	}
	for _, p := range files {
		if p != c.grown && src.entries[p].size <= 1<<20 {
			cands = append(cands, p)
		}
	}
	ndel, nadd := max(1, n/10), max(1, n/10)
	npick := min(n-1-nadd, len(cands))
	if npick <= 0 {
		return nil, fmt.Errorf("tree too small to change %.1f%% of its files", pct)
	}
	stride := float64(len(cands)) / float64(npick)
	off := rng.Float64() * stride
	saveDir := func(p string) error {
		d := filepath.Dir(filepath.Join(root, p))
		if _, ok := c.dirTimes[d]; ok {
			return nil
		}
		info, err := os.Stat(d)
		if err != nil {
			return err
		}
		c.dirTimes[d] = info.ModTime()
		return nil
	}
	stepDel, stepAdd := max(1, npick/ndel), max(1, npick/nadd)
	for k := 0; k < npick; k++ {
		p := cands[int(off+float64(k)*stride)]
		if len(c.added) < nadd && k%stepAdd == stepAdd/2 {
			// A second change of the same tree (checkpoint-stop makes
			// two) may pick the same name: never overwrite a file.
			np := filepath.Join(filepath.Dir(p), fmt.Sprintf("added-%d.js", k))
			for i := 2; ; i++ {
				if _, err := os.Lstat(filepath.Join(root, np)); os.IsNotExist(err) {
					break
				} else if err != nil {
					return nil, err
				}
				np = filepath.Join(filepath.Dir(p), fmt.Sprintf("added-%d-%d.js", k, i))
			}
			if err := saveDir(np); err != nil {
				return nil, err
			}
			buf := fileContent(nil, genFile{size: 1024 + rng.Int64N(3072), kind: 'c', seed: seed<<32 | uint64(k)})
			if err := os.WriteFile(filepath.Join(root, np), buf, 0o644); err != nil {
				return nil, err
			}
			c.added = append(c.added, np)
		}
		path := filepath.Join(root, p)
		info, err := os.Lstat(path)
		if err != nil {
			return nil, err
		}
		sv := savedFile{size: info.Size(), mode: info.Mode().Perm(), mtime: info.ModTime()}
		if len(c.deleted) < ndel && k%stepDel == stepDel-1 {
			if sv.data, err = os.ReadFile(path); err != nil {
				return nil, err
			}
			if err := saveDir(p); err != nil {
				return nil, err
			}
			if err := os.Remove(path); err != nil {
				return nil, err
			}
			c.saved[p] = sv
			c.deleted = append(c.deleted, p)
			continue
		}
		if err := c.edit(path, &sv, rng); err != nil {
			return nil, err
		}
		c.saved[p] = sv
		c.modified = append(c.modified, p)
	}

	path := filepath.Join(root, c.grown)
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	c.saved[c.grown] = savedFile{size: info.Size(), mode: info.Mode().Perm(), mtime: info.ModTime()}
	buf := make([]byte, 1<<20)
	fillBinary(buf, seed)
	if err := appendFile(path, buf); err != nil {
		return nil, err
	}
	return c, nil
}

// edit overwrites up to 64 bytes in the middle of the file at path and
// appends a line, recording in sv what undo needs.
func (c *treeChange) edit(path string, sv *savedFile, rng *rand.Rand) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	sv.off = sv.size / 2
	sv.data = make([]byte, min(64, sv.size-sv.off))
	if _, err := f.ReadAt(sv.data, sv.off); err != nil {
		return err
	}
	patch := make([]byte, len(sv.data))
	fillWords(patch, rng)
	if _, err := f.WriteAt(patch, sv.off); err != nil {
		return err
	}
	if _, err := f.WriteAt(fmt.Appendf(nil, "// edited: %s %s\n", word(rng), word(rng)), sv.size); err != nil {
		return err
	}
	return f.Close()
}

// undo brings the tree back to its state before the change: the same
// contents, modes and mtimes (of files and of the directories involved);
// edited and grown files keep their inodes.
func (c *treeChange) undo() error {
	for _, p := range c.added {
		if err := os.Remove(filepath.Join(c.root, p)); err != nil {
			return err
		}
	}
	for _, p := range c.deleted {
		sv := c.saved[p]
		path := filepath.Join(c.root, p)
		if err := os.WriteFile(path, sv.data, sv.mode); err != nil {
			return err
		}
		if err := os.Chmod(path, sv.mode); err != nil {
			return err
		}
		if err := os.Chtimes(path, sv.mtime, sv.mtime); err != nil {
			return err
		}
	}
	restore := func(p string) error {
		sv := c.saved[p]
		path := filepath.Join(c.root, p)
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		if _, err := f.WriteAt(sv.data, sv.off); err != nil {
			f.Close()
			return err
		}
		if err := f.Truncate(sv.size); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Chtimes(path, sv.mtime, sv.mtime)
	}
	for _, p := range c.modified {
		if err := restore(p); err != nil {
			return err
		}
	}
	if c.grown != "" {
		if err := restore(c.grown); err != nil {
			return err
		}
	}
	for d, t := range c.dirTimes {
		if err := os.Chtimes(d, t, t); err != nil {
			return err
		}
	}
	return nil
}

// afterChange is src as a later change may pick from it once c was made:
// without the files c deleted (the files it added are not picked, and the
// sizes of those it edited or grew are their sizes before). changeTree on
// the changed tree with it never picks a file that is gone; undo the two
// changes in the reverse order.
func afterChange(src *treeInfo, c *treeChange) *treeInfo {
	t := &treeInfo{entries: make(map[string]entry, len(src.entries)), files: src.files, dirs: src.dirs, links: src.links, bytes: src.bytes}
	for p, e := range src.entries {
		t.entries[p] = e
	}
	for _, p := range c.deleted {
		if e, ok := t.entries[p]; ok {
			delete(t.entries, p)
			t.files--
			t.bytes -= e.size
		}
	}
	return t
}

// fileGrowth is a file created or appended to with incompressible bytes
// (checkpoint-stop's session and stop changes), and what it takes to undo
// that.
type fileGrowth struct {
	path     string
	created  bool      // the file did not exist: undo removes it
	size     int64     // appended: the size before
	mtime    time.Time // appended: the mtime before
	dirMtime time.Time // created: the parent directory's mtime before
	added    int64     // bytes written
}

// growFile appends n bytes of incompressible data to the file at path,
// creating it (0644) if it does not exist. The data depends only on seed
// and n: 4 MiB blocks of a PRNG seeded by seed and the block's index,
// written in parallel.
func growFile(path string, n int64, seed uint64) (*fileGrowth, error) {
	g := &fileGrowth{path: path, added: n}
	info, err := os.Lstat(path)
	switch {
	case os.IsNotExist(err):
		g.created = true
		dir, err := os.Stat(filepath.Dir(path))
		if err != nil {
			return nil, err
		}
		g.dirMtime = dir.ModTime()
	case err != nil:
		return nil, err
	case !info.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file", path)
	default:
		g.size, g.mtime = info.Size(), info.ModTime()
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	const block = 4 << 20
	var eg errgroup.Group
	eg.SetLimit(runtime.NumCPU())
	for i := int64(0); i*block < n; i++ {
		eg.Go(func() error {
			buf := make([]byte, min(block, n-i*block))
			fillRandom(buf, rand.New(rand.NewPCG(genSeed^0x67726f77, seed<<32|uint64(i)))) // "grow"
			_, err := f.WriteAt(buf, g.size+i*block)
			return err
		})
	}
	if err := eg.Wait(); err != nil {
		if g.created {
			os.Remove(path)
		}
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return g, nil
}

// undo removes a created file (and gives its directory its mtime back) or
// truncates an appended one to its size and mtime before, same inode.
func (g *fileGrowth) undo() error {
	if g.created {
		if err := os.Remove(g.path); err != nil {
			return err
		}
		return os.Chtimes(filepath.Dir(g.path), g.dirMtime, g.dirMtime)
	}
	if err := os.Truncate(g.path, g.size); err != nil {
		return err
	}
	return os.Chtimes(g.path, g.mtime, g.mtime)
}
