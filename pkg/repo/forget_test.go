package repo

import (
	"context"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/retention"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// TestForget keeps what the policy keeps, per workspace, deletes only the
// snapshot objects of the rest (nothing on a dry run), and reads tags only
// for tag rules.
func TestForget(t *testing.T) {
	ctx := context.Background()
	r, err := OpenOrInit(ctx, mem.New())
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for ws, n := range map[string]int{"a": 5, "b": 2} {
		for i := range n {
			tags := map[string]string{}
			if i == 1 {
				tags["pin"] = "yes"
			}
			s := &Snapshot{Time: base.Add(time.Duration(i) * time.Hour), Tree: chunk.Hash([]byte("t")), Owner: "o", Workspace: ws, Tags: tags}
			if _, err := r.SaveSnapshot(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
	}
	count := func(ws string) int {
		refs, err := r.ListSnapshots(ctx, ws)
		if err != nil {
			t.Fatal(err)
		}
		return len(refs)
	}
	p := retention.Policy{KeepLast: 2, KeepTags: []string{"pin=yes"}}
	res, err := r.Forget(ctx, "", p, true)
	if err != nil || len(res) != 2 || count("a") != 5 {
		t.Fatalf("dry run: %+v %v, %d left", res, err, count("a"))
	}
	res, err = r.Forget(ctx, "", p, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range res {
		want := map[string]int{"a": 2, "b": 0}[w.Workspace] // a: 5 - last 2 - pinned 1
		if len(w.Forget) != want {
			t.Errorf("%s: forgot %d, want %d", w.Workspace, len(w.Forget), want)
		}
	}
	if count("a") != 3 || count("b") != 2 {
		t.Fatalf("left a=%d b=%d", count("a"), count("b"))
	}
	if _, err := r.Forget(ctx, "a", retention.Policy{KeepLast: -1}, false); err == nil {
		t.Fatal("an invalid policy was applied")
	}
}

func TestDeleteWorkspace(t *testing.T) {
	ctx := context.Background()
	r, err := OpenOrInit(ctx, mem.New())
	if err != nil {
		t.Fatal(err)
	}
	for i, ws := range []string{"a", "a", "a", "ab", "b"} {
		s := &Snapshot{Time: time.Unix(1e9+int64(i), 0), Tree: chunk.Hash([]byte("t")), Owner: "o", Workspace: ws}
		if _, err := r.SaveSnapshot(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := r.DeleteWorkspace(ctx, "a")
	if err != nil || rec.Objects != 3 || rec.Bytes == 0 {
		t.Fatalf("receipt %+v, %v", rec, err)
	}
	for ws, want := range map[string]int{"a": 0, "ab": 1, "b": 1} {
		if refs, _ := r.ListSnapshots(ctx, ws); len(refs) != want {
			t.Errorf("%s: %d snapshots left, want %d", ws, len(refs), want)
		}
	}
	if rec, err := r.DeleteWorkspace(ctx, "a"); err != nil || rec.Objects != 0 {
		t.Fatalf("again: %+v, %v", rec, err)
	}
	if _, err := r.DeleteWorkspace(ctx, "../x"); err == nil {
		t.Fatal("an invalid workspace name was accepted")
	}
}
