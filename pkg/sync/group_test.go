package sync

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/retention"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// writeSmallFiles writes n text files of 1-8 KiB, as in a node_modules:
// each begins with the same license header, then words from a small
// vocabulary. Alone, a file cannot compress its header away; in a group
// all but the first do.
func writeSmallFiles(t *testing.T, dir string, n int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	words := strings.Fields("const let function return import export default class extends async await module require value index node")
	header := "/*\n * Copyright (c) Example Authors. Licensed under the MIT License: permission is hereby granted, free of charge,\n" +
		" * to any person obtaining a copy of this software and associated documentation files (the \"Software\"), to deal\n" +
		" * in the Software without restriction, including without limitation the rights to use, copy, modify, merge,\n" +
		" * publish, distribute, sublicense, and/or sell copies of the Software. THE SOFTWARE IS PROVIDED \"AS IS\".\n */\n"
	for i := range n {
		var b strings.Builder
		b.WriteString(header)
		for size := 1024 + rng.IntN(7<<10); b.Len() < size; {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteByte(" \n"[rng.IntN(2)])
		}
		writeFile(t, filepath.Join(dir, fmt.Sprintf("p%02d", i%20), fmt.Sprintf("f%04d.js", i)), []byte(b.String()), 0o644, time.Unix(1e9, 0))
	}
}

// groupedBlobs counts the blobs of each type the index places in groups,
// and all blobs.
func groupedBlobs(r *repo.Repository) (grouped [2]int, all int) {
	for _, entries := range r.Index().Packs() {
		for _, e := range entries {
			all++
			if e.Compression == chunk.ZstdGroup {
				grouped[e.Type]++
			}
		}
	}
	return grouped, all
}

// TestSmallFilesAreGrouped: in a new (version 2) repository small files
// and trees are stored in groups, which store less than a version 1
// repository of the same files (a frame per file); both restore byte for
// byte and check clean, reading every blob.
func TestSmallFilesAreGrouped(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	writeSmallFiles(t, src, 600, 1)
	// Above GroupMaxBlob: stored alone.
	writeFile(t, filepath.Join(src, "big.js"), []byte(strings.Repeat("not grouped, ", 200<<10/13)), 0o644, time.Unix(1e9, 0))

	v2 := mem.New()
	r := ownerRepo(t, v2)
	if v := r.Config().Version; v != 3 {
		t.Fatalf("a new repository has format version %d, want 3", v)
	}
	doBackup(t, r, src)
	grouped, all := groupedBlobs(ownerRepo(t, v2))
	if grouped[repo.DataBlob] != 600 || grouped[repo.TreeBlob] < 21 {
		t.Fatalf("grouped %v of %d blobs, want the 600 small files and every tree", grouped, all)
	}
	restoreEqual(t, v2, src)
	checkClean(t, v2)

	v1 := mem.New()
	st, err := placement.NewPrefixPerOwner(v1).Owner(ctx, "owner1", true)
	must(t, err)
	cfg, err := repo.NewConfig(0, 0)
	must(t, err)
	cfg.Version = 1
	_, err = repo.Init(ctx, st, cfg)
	must(t, err)
	doBackup(t, ownerRepo(t, v1), src)
	if g, _ := groupedBlobs(ownerRepo(t, v1)); g != [2]int{} {
		t.Fatalf("a version 1 repository got grouped blobs: %v", g)
	}
	restoreEqual(t, v1, src)
	checkClean(t, v1)

	n1, _ := storedBytes(t, v1, "owner1/data/")
	n2, _ := storedBytes(t, v2, "owner1/data/")
	t.Logf("packs: version 1 %d bytes, version 2 (groups) %d bytes", n1, n2)
	if float64(n2) > 0.8*float64(n1) {
		t.Errorf("groups store %d bytes, a frame per file %d: want at least 20%% less", n2, n1)
	}
}

// TestPruneRegroupsPartlyDeadGroups: half of the small files deleted and
// the old snapshot forgotten, prune frees their space although they shared
// frames with live files (the live ones are compressed again as groups of
// their own), and the repository restores, checks clean and stores about
// what a fresh one would.
func TestPruneRegroupsPartlyDeadGroups(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	writeSmallFiles(t, src, 800, 2)
	root := mem.New()
	doBackup(t, ownerRepo(t, root), src)
	must(t, filepath.Walk(src, func(path string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(path, "1.js") || strings.HasSuffix(path, "3.js") || strings.HasSuffix(path, "5.js") || strings.HasSuffix(path, "7.js") || strings.HasSuffix(path, "9.js") {
			return os.Remove(path)
		}
		return err
	}))
	doBackup(t, ownerRepo(t, root), src)
	before, _ := storedBytes(t, root, "owner1/data/")
	r := ownerRepo(t, root)
	_, err := r.Forget(ctx, "", retention.Policy{KeepLast: 1}, false)
	must(t, err)
	res, err := r.Prune(ctx, repo.PruneOptions{})
	must(t, err)
	after, _ := storedBytes(t, root, "owner1/data/")
	t.Logf("prune: %+v; data %d -> %d bytes", *res, before, after)
	if res.PacksRepacked == 0 || after > before*3/4 {
		t.Fatalf("prune freed too little of the dead grouped blobs: %d -> %d bytes", before, after)
	}
	grouped, all := groupedBlobs(ownerRepo(t, root))
	if grouped[repo.DataBlob] != 400 || all > 400+25 {
		t.Errorf("after prune: grouped %v of %d blobs, want the 400 live files grouped and no dead blob", grouped, all)
	}
	restoreEqual(t, root, src)
	checkClean(t, root)

	fresh := mem.New()
	doBackup(t, ownerRepo(t, fresh), src)
	want, _ := storedBytes(t, fresh, "owner1/data/")
	if float64(after) > 1.10*float64(want) {
		t.Errorf("after prune %d bytes of packs, a fresh repository %d: more than 10%% over", after, want)
	}
}

var _ storage.Storage = mem.New()

// TestGroupsHoldOneKindOfFile: small files are grouped by their name's
// extension, with the kinds interleaved in every directory; each group's
// members are files of one extension (or all without one), and the
// backup restores byte for byte.
func TestGroupsHoldOneKindOfFile(t *testing.T) {
	testGroupKinds(t, []string{"js", "json", "md", ""}, true)
}

// TestGroupsOfManyKinds: with more kinds than a compressor holds groups
// for, every small file is still grouped (the rare kinds together) and
// restores byte for byte.
func TestGroupsOfManyKinds(t *testing.T) {
	testGroupKinds(t, []string{"js", "json", "md", "ts", "map", "css", "html", "txt", "yml", ""}, false)
}

func testGroupKinds(t *testing.T, kinds []string, oneKind bool) {
	src := t.TempDir()
	kindOf := map[chunk.ID]string{}
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range 900 {
		k := kinds[rng.IntN(len(kinds))]
		name := fmt.Sprintf("d%02d/f%04d", i%30, i)
		if k != "" {
			name += "." + strings.ToUpper(k[:1]) + k[1:] // case does not matter
		}
		data := []byte(fmt.Sprintf("%s file %d %s\n", k, i, strings.Repeat(k+" content ", 50+rng.IntN(200))))
		kindOf[chunk.Hash(data)] = k
		writeFile(t, filepath.Join(src, name), data, 0o644, time.Unix(1e9, 0))
	}
	st := mem.New()
	doBackup(t, ownerRepo(t, st), src)
	frames := kindsByFrame(ownerRepo(t, st), kindOf)
	if oneKind && len(frames) < len(kinds) {
		t.Fatalf("%d group frames for %d kinds of file", len(frames), len(kinds))
	}
	members := 0
	for f, ks := range frames {
		if oneKind && len(ks) != 1 {
			t.Errorf("group frame %v holds files of %d kinds: %v", f, len(ks), ks)
		}
		for _, n := range ks {
			members += n
		}
	}
	if members != len(kindOf) {
		t.Errorf("%d of %d small files are in groups", members, len(kindOf))
	}
	restoreEqual(t, st, src)
	checkClean(t, st)
}

func TestNameKind(t *testing.T) {
	for name, want := range map[string]string{
		"index.js": "js", "README.MD": "md", "Makefile": "", ".bashrc": "", "a.d.ts": "ts",
		"x.": "", "v.0123456789abcdefg": "", "v.0123456789abcdef": "0123456789abcdef",
	} {
		if got := nameKind(name); got != want {
			t.Errorf("nameKind(%q) = %q, want %q", name, got, want)
		}
	}
}

// TestRareKindsDoNotHoldGroups: files of rare extensions seen first do
// not keep the frequent ones out of groups of their own: once idle, a
// rare kind's blobs move to the mixed group and its place goes to a
// frequent kind, so most frequent files end in frames of one kind.
func TestRareKindsDoNotHoldGroups(t *testing.T) {
	src := t.TempDir()
	kindOf := map[chunk.ID]string{}
	add := func(name, k string, data []byte) {
		kindOf[chunk.Hash(data)] = k
		writeFile(t, filepath.Join(src, name), data, 0o644, time.Unix(1e9, 0))
	}
	rare := []string{"cfg", "lock", "toml", "yml", "ini", "xml", "svg", "txt"}
	for i, k := range rare {
		add(fmt.Sprintf("a/%d.%s", i, k), k, []byte(strings.Repeat(k+" rare ", 40)))
	}
	rng := rand.New(rand.NewPCG(3, 3))
	frequent := 0
	for i := range 6000 {
		k := []string{"js", "ts"}[i%2]
		add(fmt.Sprintf("b%02d/f%04d.%s", i%40, i, k), k, []byte(fmt.Sprintf("%s %d %s", k, i, strings.Repeat(k+" x ", 50+rng.IntN(150)))))
		frequent++
	}
	st := mem.New()
	doBackup(t, ownerRepo(t, st), src)
	kinds := kindsByFrame(ownerRepo(t, st), kindOf)
	alone, grouped := 0, 0
	for _, ks := range kinds {
		for k, n := range ks {
			grouped += n
			if len(ks) == 1 && (k == "js" || k == "ts") {
				alone += n
			}
		}
	}
	// A group left with one blob at the end is stored as a blob alone.
	if grouped < len(kindOf)-2*(groupKinds+1) {
		t.Errorf("%d of %d small files are in groups", grouped, len(kindOf))
	}
	t.Logf("%d of %d js and ts files in frames of one kind", alone, frequent)
	if alone < frequent*85/100 {
		t.Errorf("%d of %d js and ts files are in frames of one kind, want at least 85 %%", alone, frequent)
	}
	restoreEqual(t, st, src)
}

// groupFrame names a group frame: its pack and offset.
type groupFrame struct {
	pack chunk.ID
	off  uint32
}

// kindsByFrame counts, for each group frame of r's data blobs, its
// members of each kind that kindOf names (blobs it does not name are left
// out).
func kindsByFrame(r *repo.Repository, kindOf map[chunk.ID]string) map[groupFrame]map[string]int {
	frames := map[groupFrame]map[string]int{}
	for pack, entries := range r.Index().Packs() {
		for _, e := range entries {
			k, ok := kindOf[e.ID]
			if e.Type != repo.DataBlob || e.Compression != chunk.ZstdGroup || !ok {
				continue
			}
			f := groupFrame{pack, e.Offset}
			if frames[f] == nil {
				frames[f] = map[string]int{}
			}
			frames[f][k]++
		}
	}
	return frames
}
