package repo

import (
	"bytes"
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

// TestForgetKind applies a policy to one kind of snapshot only: the other
// kind is neither counted nor forgotten, and a snapshot that cannot be
// read (of unknown kind) is kept.
func TestForgetKind(t *testing.T) {
	ctx := context.Background()
	st := mem.New()
	r, err := OpenOrInit(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	kinds := []bool{false, true, true, false, true, true, true} // oldest first
	ids := map[bool][]string{}
	for i, cp := range kinds {
		s := &Snapshot{Time: base.Add(time.Duration(i) * time.Hour), Tree: chunk.Hash([]byte("t")), Owner: "o", Workspace: "w", Checkpoint: cp}
		id, err := r.SaveSnapshot(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		ids[cp] = append(ids[cp], id.String())
	}
	// The oldest checkpoint damaged: kept, whatever the policy.
	refs, err := r.ListSnapshots(ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range refs {
		if ref.ID.String() == ids[true][0] {
			if err := st.Put(ctx, ref.Key, bytes.NewReader([]byte("{")), 1); err != nil {
				t.Fatal(err)
			}
		}
	}
	res, err := r.ForgetKind(ctx, "w", retention.Policy{KeepLast: 2}, true, false)
	if err != nil {
		t.Fatal(err)
	}
	// Checkpoints 2, 3 of 1..5 (1 damaged) forgotten; 4 and 5 kept.
	if len(res.Forget) != 2 || res.Forget[0].ID.String() != ids[true][2] || res.Forget[1].ID.String() != ids[true][1] {
		t.Fatalf("forgot %+v, want checkpoints %v", res.Forget, ids[true][1:3])
	}
	res, err = r.ForgetKind(ctx, "w", retention.Policy{KeepLast: 1}, false, false)
	if err != nil || len(res.Forget) != 1 || res.Forget[0].ID.String() != ids[false][0] {
		t.Fatalf("backups' retention forgot %+v (%v), want only the oldest backup", res.Forget, err)
	}
	refs, _ = r.ListSnapshots(ctx, "w")
	left := map[string]bool{}
	for _, ref := range refs {
		left[ref.ID.String()] = true
	}
	for _, id := range []string{ids[false][1], ids[true][0], ids[true][3], ids[true][4]} {
		if !left[id] || len(left) != 4 {
			t.Fatalf("left %v, want %s among 4", left, id)
		}
	}
}
