package repo

import (
	"context"
	"sync"
	"testing"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/local"
	"github.com/backupd/backupd/pkg/storage/mem"
)

// TestConcurrentFirstBackupsShareOneConfig: any number of first backups of
// a new owner racing to create its repository all end up with the one
// config that was written (create-only), on a local store and in memory.
func TestConcurrentFirstBackupsShareOneConfig(t *testing.T) {
	l, err := local.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, st := range map[string]storage.Storage{"mem": mem.New(), "local": l} {
		const n = 16
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r, err := OpenOrInit(context.Background(), st)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				ids[i] = r.Config().ID + r.Config().Polynomial
			}()
		}
		wg.Wait()
		stored, err := Open(context.Background(), st)
		if err != nil {
			t.Fatal(err)
		}
		for i, id := range ids {
			if id != stored.Config().ID+stored.Config().Polynomial {
				t.Fatalf("%s: writer %d uses config %s, the repository holds %s", name, i, id, stored.Config().ID)
			}
		}
		if _, err := Init(context.Background(), st, stored.Config()); err != ErrRepositoryExists {
			t.Fatalf("%s: Init over an existing repository = %v", name, err)
		}
	}
}
