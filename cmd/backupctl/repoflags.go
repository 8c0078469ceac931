package main

import (
	"context"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage"
	"github.com/backupd/backupd/pkg/storage/location"
)

// repoFlags are the flags every command shares.
type repoFlags struct {
	repo  string
	owner string
	json  bool
}

func (f *repoFlags) register(cmd *cobra.Command, ownerRequired bool) {
	cmd.Flags().StringVarP(&f.repo, "repo", "r", "", "storage root `URL` (default $BACKUPD_REPO, else a local repository under the user's data directory)")
	cmd.Flags().StringVar(&f.owner, "owner", "", "owner `ID` whose repository to use")
	if ownerRequired {
		_ = cmd.MarkFlagRequired("owner")
	}
}

func (f *repoFlags) registerJSON(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.json, "json", false, "print the result as JSON on stdout (and no progress bar)")
}

// openRoot opens the storage root named by the flags or the environment.
func (f *repoFlags) openRoot(ctx context.Context) (storage.Storage, error) {
	u := f.repo
	if u == "" {
		u = location.FromEnv()
	}
	if u == "" {
		d, err := location.Default()
		if err != nil {
			return nil, err
		}
		u = d
	}
	st, err := location.Open(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("open repository %s: %w", location.Redact(u), err)
	}
	return st, nil
}

func (f *repoFlags) openOwner(ctx context.Context, create bool) (*repo.Repository, func(), error) {
	root, err := f.openRoot(ctx)
	if err != nil {
		return nil, nil, err
	}
	r, err := repo.OpenOwner(ctx, root, f.owner, create)
	if err != nil {
		root.Close()
		return nil, nil, err
	}
	return r, func() { root.Close() }, nil
}

// showProgress says whether to draw a progress bar: only for humans, that
// is when stdout and stderr are terminals and JSON was not asked for.
func (f *repoFlags) showProgress() bool {
	return !f.json && term.IsTerminal(int(os.Stdout.Fd())) && term.IsTerminal(int(os.Stderr.Fd()))
}
