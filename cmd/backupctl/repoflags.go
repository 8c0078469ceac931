package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/backupd/backupd/internal/iogate"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/location"
	bsync "github.com/backupd/backupd/pkg/sync"
)

// repoFlags are the flags every command shares.
type repoFlags struct {
	repo          string
	storageConfig string
	connections   int
	owner         string
	json          bool
	cacheDir      string
	noCache       bool

	uploads, downloads int // set by openOwner

	// skipIndex makes openOwner leave the index unloaded (prune loads it
	// its own way, in less memory).
	skipIndex bool

	// wrap, if set, wraps the owner's storage before the repository is
	// opened on it (prune counts its requests so).
	wrap func(storage.Storage) storage.Storage
}

func (f *repoFlags) register(cmd *cobra.Command, ownerRequired bool) {
	cmd.Flags().StringVarP(&f.repo, "repo", "r", "", "storage root `URL` (default $BACKUPD_REPO, else a local repository under the user's data directory)")
	cmd.Flags().StringVar(&f.storageConfig, "storage-config", "", "YAML `FILE` with storage parameters and credentials (the storage section of backupd's config; see docs/STORAGE.md)")
	cmd.Flags().IntVar(&f.connections, "connections", 0, "concurrent pack uploads and downloads (default: 4 for object stores; 2 uploads for a local directory)")
	cmd.Flags().StringVar(&f.owner, "owner", "", "owner `ID` whose repository to use")
	cmd.Flags().StringVar(&f.cacheDir, "cache-dir", "", "node-local cache of index and trees (default: backupd/cache under the user's cache directory); it only saves downloads")
	cmd.Flags().BoolVar(&f.noCache, "no-cache", false, "do not use the node-local cache")
	if ownerRequired {
		_ = cmd.MarkFlagRequired("owner")
	}
}

func (f *repoFlags) registerJSON(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.json, "json", false, "print the result as JSON on stdout (and no progress bar)")
}

// storageConfigFromFlags builds the storage configuration: the file of
// --storage-config (its `storage:` section or the whole file), then the
// location from -r, $BACKUPD_REPO, the file, or the embedded default.
func (f *repoFlags) storageConfigFromFlags() (location.Config, error) {
	var cfg location.Config
	if f.storageConfig != "" {
		c, err := location.ParseFile(f.storageConfig)
		if err != nil {
			return cfg, fmt.Errorf("--storage-config %w", err) // the error starts with the file's name
		}
		cfg = c
	}
	if f.repo != "" {
		cfg.URL = f.repo
	} else if u := location.FromEnv(); u != "" && cfg.URL == "" {
		cfg.URL = u
	}
	if cfg.URL == "" {
		d, err := location.Default()
		if err != nil {
			return cfg, err
		}
		cfg.URL = d
	}
	if f.connections != 0 {
		cfg.Connections = f.connections
	}
	return cfg, nil
}

// checkOwner checks --owner (when given) before anything is opened: a
// malformed one is a usage error.
func (f *repoFlags) checkOwner() error {
	if f.owner == "" {
		return nil
	}
	if err := repo.ValidateName("owner", f.owner); err != nil {
		return usageError{Err: err}
	}
	return nil
}

// openPlacement opens the storage and the placement of owners in it. With
// create (backup, init) a missing storage root is created where the
// config allows; read-only commands never create anything.
func (f *repoFlags) openPlacement(ctx context.Context, create bool) (*placement.Placement, error) {
	if err := f.checkOwner(); err != nil {
		return nil, err
	}
	cfg, err := f.storageConfigFromFlags()
	if err != nil {
		return nil, err
	}
	return placement.Open(ctx, cfg, create) // its errors name the backend and the bucket
}

// openOwners opens the placement and returns the owners to show: --owner,
// or without it every owner under the root.
func (f *repoFlags) openOwners(ctx context.Context) (*placement.Placement, []string, error) {
	p, err := f.openPlacement(ctx, false)
	if err != nil {
		return nil, nil, err
	}
	if f.owner != "" {
		return p, []string{f.owner}, nil
	}
	owners, err := p.Owners(ctx)
	if err != nil {
		p.Close()
		return nil, nil, err
	}
	return p, owners, nil
}

// openOwner opens the owner's repository; with create (a backup) a
// missing one is created. Without, an owner with no repository is
// placement.NoBackupsError ("no backups for owner O").
func (f *repoFlags) openOwner(ctx context.Context, create bool) (*repo.Repository, func(), error) {
	cfg, err := f.storageConfigFromFlags()
	if err != nil {
		return nil, nil, err
	}
	f.uploads, f.downloads = cfg.Transfers()
	p, err := f.openPlacement(ctx, create)
	if err != nil {
		return nil, nil, err
	}
	st, err := p.Owner(ctx, f.owner, create) // its errors name the owner
	if err != nil {
		p.Close()
		return nil, nil, err
	}
	if f.wrap != nil {
		st = f.wrap(st)
	}
	// The owner's storage is closed too: a bucket of its own under
	// bucket-per-owner (closing a prefix of the root is a no-op).
	closeAll := func() { st.Close(); p.Close() }
	load := repo.LoadCached
	if f.skipIndex {
		load = repo.OpenCached
	}
	r, err := load(ctx, st, create, f.cacheDirectory(), 0)
	if err != nil {
		closeAll()
		if errors.Is(err, repo.ErrNoRepository) {
			return nil, nil, placement.NoBackups(f.owner, err)
		}
		return nil, nil, fmt.Errorf("owner %s: %w", f.owner, err)
	}
	if !f.skipIndex {
		warnIndex(r)
	}
	return r, closeAll, nil
}

// cacheDirectory is the node-local cache directory the flags select: ""
// with --no-cache, else --cache-dir, else backupd/cache under the user's
// cache directory.
func (f *repoFlags) cacheDirectory() string {
	if f.noCache {
		return ""
	}
	if f.cacheDir != "" {
		return f.cacheDir
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "backupd", "cache")
	}
	return ""
}

// showProgress says whether to draw a progress bar: only for humans, that
// is when stdout and stderr are terminals and JSON was not asked for.
func (f *repoFlags) showProgress() bool {
	return !f.json && term.IsTerminal(int(os.Stdout.Fd())) && term.IsTerminal(int(os.Stderr.Fd()))
}

// idMapFlags are --map-uid and --map-gid.
type idMapFlags struct{ uid, gid []string }

func (m *idMapFlags) register(cmd *cobra.Command, direction string) {
	cmd.Flags().StringArrayVar(&m.uid, "map-uid", nil, "map user ids `CONTAINER:HOST:COUNT` ("+direction+"; repeatable), as a user namespace's uid_map")
	cmd.Flags().StringArrayVar(&m.gid, "map-gid", nil, "map group ids `CONTAINER:HOST:COUNT` (repeatable), as a user namespace's gid_map")
}

func (m *idMapFlags) parse() (uids, gids bsync.IDMap, err error) {
	for _, spec := range m.uid {
		r, err := bsync.ParseIDRange(spec)
		if err != nil {
			return nil, nil, usageError{Err: fmt.Errorf("--map-uid: %w", err)}
		}
		uids = append(uids, r)
	}
	for _, spec := range m.gid {
		r, err := bsync.ParseIDRange(spec)
		if err != nil {
			return nil, nil, usageError{Err: fmt.Errorf("--map-gid: %w", err)}
		}
		gids = append(gids, r)
	}
	return uids, gids, nil
}

// checkpointGate returns the gate that holds a checkpoint's packs back
// while others use the disk of the workspace dir or of a local repository
// (internal/iogate), as the daemon's checkpoints do.
func (f *repoFlags) checkpointGate(dir string) (*iogate.Gate, error) {
	cfg, err := f.storageConfigFromFlags()
	if err != nil {
		return nil, err
	}
	var devs []uint64
	if dev, ok := iogate.DeviceOf(dir); ok {
		devs = append(devs, dev)
	}
	if local, ok := location.LocalDir(cfg.URL); ok {
		if dev, ok := iogate.DeviceOf(local); ok {
			devs = append(devs, dev)
		}
	}
	return iogate.New(devs, iogate.Options{}), nil
}
