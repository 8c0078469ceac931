package mem_test

import (
	"testing"

	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/mem"
	"github.com/backupd/backupd/pkg/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage { return mem.New() })
}
