package faults

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestConformanceWithoutFaults(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return New(mem.New(), Options{}) })
}

func TestRateAndDeterminism(t *testing.T) {
	run := func() (int64, []bool) {
		f := New(mem.New(), Options{Rate: 0.2, Seed: 7, AfterRate: 0.5})
		var outcome []bool
		for range 1000 {
			err := f.Put(context.Background(), "k", bytes.NewReader([]byte("x")), 1)
			if err != nil && (!errors.Is(err, ErrInjected) || !storage.IsTransient(err)) {
				t.Fatalf("unexpected error %v", err)
			}
			outcome = append(outcome, err == nil)
		}
		if f.Calls(Put) != 1000 {
			t.Fatalf("counted %d puts", f.Calls(Put))
		}
		return f.Injected(), outcome
	}
	n1, o1 := run()
	n2, o2 := run()
	if n1 < 150 || n1 > 250 {
		t.Fatalf("20%% rate injected %d of 1000", n1)
	}
	if n1 != n2 || len(o1) != len(o2) {
		t.Fatal("same seed, different faults")
	}
	for i := range o1 {
		if o1[i] != o2[i] {
			t.Fatal("same seed, different faults")
		}
	}
}

func TestFaultAfterCallStillStores(t *testing.T) {
	m := mem.New()
	f := New(m, Options{Rate: 1, AfterRate: 1, Ops: []Op{Put}})
	err := f.Put(context.Background(), "k", bytes.NewReader([]byte("data")), 4)
	if !errors.Is(err, ErrInjected) {
		t.Fatalf("err = %v", err)
	}
	if got, err := storage.ReadAll(context.Background(), m, "k", 0, -1); err != nil || string(got) != "data" {
		t.Fatalf("object after a lost reply: %q, %v", got, err)
	}
	if _, err := f.Stat(context.Background(), "k"); err != nil {
		t.Fatalf("Stat is not in Ops and must not fail: %v", err)
	}
}

// PutIfAbsent fails like Put, before or after the call; CleanUploads
// before it. Both are counted.
func TestPutIfAbsentAndCleanUploadsFaults(t *testing.T) {
	ctx := context.Background()
	m := mem.New()
	f := New(m, Options{Rate: 1, AfterRate: 1, Ops: []Op{PutIfAbsent, CleanUploads}})
	err := f.PutIfAbsent(ctx, "k", bytes.NewReader([]byte("data")), 4)
	if !errors.Is(err, ErrInjected) || !storage.IsTransient(err) {
		t.Fatalf("PutIfAbsent: %v, want an injected transient fault", err)
	}
	if got, err := storage.ReadAll(ctx, m, "k", 0, -1); err != nil || string(got) != "data" {
		t.Fatalf("object after a lost reply: %q, %v", got, err)
	}
	if n, err := f.CleanUploads(ctx, "", time.Now()); n != 0 || !errors.Is(err, ErrInjected) {
		t.Fatalf("CleanUploads = %d, %v; want an injected fault", n, err)
	}
	f.SetOptions(Options{Rate: 1, Ops: []Op{PutIfAbsent}})
	if err := f.PutIfAbsent(ctx, "k2", bytes.NewReader([]byte("x")), 1); !errors.Is(err, ErrInjected) {
		t.Fatalf("PutIfAbsent: %v", err)
	}
	if _, err := m.Stat(ctx, "k2"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a fault before the call stored the object: %v", err)
	}
	if err := f.Put(ctx, "k2", bytes.NewReader([]byte("x")), 1); err != nil {
		t.Errorf("Put is not in Ops and must not fail: %v", err)
	}
	if f.Calls(PutIfAbsent) != 2 || f.Calls(CleanUploads) != 1 {
		t.Errorf("counted %d PutIfAbsent, %d CleanUploads; want 2, 1", f.Calls(PutIfAbsent), f.Calls(CleanUploads))
	}
}

// PutIfMatch fails like Put, before or after the call (a lost reply);
// GetWithInfo before it. Both are counted.
func TestPutIfMatchAndGetWithInfoFaults(t *testing.T) {
	ctx := context.Background()
	m := mem.New()
	if err := m.Put(ctx, "k", bytes.NewReader([]byte("old")), 3); err != nil {
		t.Fatal(err)
	}
	oi, err := m.Stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	f := New(m, Options{Rate: 1, AfterRate: 1, Ops: []Op{PutIfMatch, GetWithInfo}})
	if _, err := f.PutIfMatch(ctx, "k", bytes.NewReader([]byte("new")), 3, oi.Version); !errors.Is(err, ErrInjected) || !storage.IsTransient(err) {
		t.Fatalf("PutIfMatch: %v, want an injected transient fault", err)
	}
	if got, err := storage.ReadAll(ctx, m, "k", 0, -1); err != nil || string(got) != "new" {
		t.Fatalf("object after a lost reply: %q, %v", got, err)
	}
	if _, _, err := f.GetWithInfo(ctx, "k"); !errors.Is(err, ErrInjected) {
		t.Fatalf("GetWithInfo: %v, want an injected fault", err)
	}
	f.SetOptions(Options{Rate: 1, Ops: []Op{PutIfMatch}})
	cur, err := m.Stat(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.PutIfMatch(ctx, "k", bytes.NewReader([]byte("newer")), 5, cur.Version); !errors.Is(err, ErrInjected) {
		t.Fatalf("PutIfMatch: %v", err)
	}
	if got, err := storage.ReadAll(ctx, m, "k", 0, -1); err != nil || string(got) != "new" {
		t.Errorf("a fault before the call stored the object: %q, %v", got, err)
	}
	if rc, _, err := f.GetWithInfo(ctx, "k"); err != nil {
		t.Errorf("GetWithInfo is not in Ops and must not fail: %v", err)
	} else {
		rc.Close()
	}
	if f.Calls(PutIfMatch) != 2 || f.Calls(GetWithInfo) != 2 {
		t.Errorf("counted %d PutIfMatch, %d GetWithInfo; want 2, 2", f.Calls(PutIfMatch), f.Calls(GetWithInfo))
	}
}
