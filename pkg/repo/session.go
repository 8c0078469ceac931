package repo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	gosync "sync"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/storage"
)

// ErrSessionFenced means a backup's session was fenced by a prune (its
// lease had lapsed: the backup was paused, partitioned or too slow to
// renew it), so the backup may not commit: the blobs it relied on may be
// gone. Nothing was written as its snapshot; the previous snapshots are
// intact. Run the backup again.
var ErrSessionFenced = errors.New("backup session fenced by a prune: its lease lapsed")

// Session states.
const (
	sessionRunning   = "running"
	sessionCommitted = "committed"
	sessionFenced    = "fenced"
)

// sessionRecord is the object sessions/<id>.
type sessionRecord struct {
	State     string    `json:"state"`
	Workspace string    `json:"workspace,omitempty"`
	Host      string    `json:"host,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	LeaseMS   int64     `json:"lease_ms,omitempty"`
	Renewals  uint64    `json:"renewals,omitempty"`
	// Snapshot is the whole snapshot object, once committed.
	Snapshot json.RawMessage `json:"snapshot,omitempty"`
}

func decodeSession(b []byte) (*sessionRecord, error) {
	var s sessionRecord
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	switch s.State {
	case sessionRunning, sessionFenced:
	case sessionCommitted:
		if len(s.Snapshot) == 0 {
			return nil, fmt.Errorf("%w: committed without a snapshot", ErrCorrupt)
		}
	default:
		return nil, fmt.Errorf("%w: unknown state %q", ErrCorrupt, s.State)
	}
	if s.LeaseMS < 0 || s.LeaseMS > int64(24*time.Hour/time.Millisecond) {
		return nil, fmt.Errorf("%w: lease %d ms", ErrCorrupt, s.LeaseMS)
	}
	return &s, nil
}

func (s *sessionRecord) lease() time.Duration {
	if s.LeaseMS <= 0 {
		return DefaultLease
	}
	return time.Duration(s.LeaseMS) * time.Millisecond
}

// SessionOptions configure a backup session.
type SessionOptions struct {
	Workspace, Host string
	// Lease is how long the session stands unrenewed (DefaultLease if 0);
	// it is renewed every fifth of it.
	Lease time.Duration
	// OnFenced is called (once, from the renewing goroutine) when a renewal
	// finds the session fenced; the backup should stop.
	OnFenced func(error)
}

// Session is one backup's claim on the repository (FORMAT.md,
// "Lifecycle"): while it stands, a prune waits for it before deleting
// anything, and resurrects what its snapshot reaches; a prune that finds
// it lapsed fences it, and then it cannot commit.
type Session struct {
	r    *Repository
	key  string
	opts SessionOptions

	mu      gosync.Mutex // guards rec, version, fenced, ended
	rec     sessionRecord
	version string
	fenced  error
	ended   bool

	stop chan struct{}
	done chan struct{}
}

// BeginSession creates a session for a backup, then reads the prune state:
// while a prune has condemned blobs, Usable reports them absent, so that
// the backup neither deduplicates against them nor reuses its parent's
// content lists that name them.
func (r *Repository) BeginSession(ctx context.Context, opts SessionOptions) (*Session, error) {
	if opts.Lease <= 0 {
		opts.Lease = DefaultLease
	}
	s := &Session{r: r, key: sessionsPrefix + randomHex(16), opts: opts, stop: make(chan struct{}), done: make(chan struct{})}
	s.rec = sessionRecord{State: sessionRunning, Workspace: opts.Workspace, Host: opts.Host,
		Started: time.Now().UTC().Truncate(time.Millisecond), LeaseMS: opts.Lease.Milliseconds()}
	b, err := json.Marshal(&s.rec)
	if err != nil {
		return nil, err
	}
	// The name is random: a mismatch can only be our own write after a
	// lost reply, which casPut tells by reading it back.
	if s.version, err = casPut(ctx, r.st, s.key, b, "", MaxSessionSize); err != nil {
		return nil, fmt.Errorf("begin backup session: %w", err)
	}
	ps, condemned, err := r.loadCondemned(ctx)
	if err != nil {
		s.deleteSession(ctx)
		return nil, fmt.Errorf("begin backup session: %w", err)
	}
	if prev := r.indexPrune.Load(); prev == nil || prev.Generation != ps.Generation || prev.Phase != ps.Phase {
		// The index was loaded before a prune state other than this one:
		// a prune may have ended in between, never seeing this session,
		// and deleted what the index still names. Loaded now, after the
		// session exists, the index is what any later prune waits for.
		if err := r.ReloadIndex(ctx); err != nil {
			s.deleteSession(ctx)
			return nil, fmt.Errorf("begin backup session: %w", err)
		}
	}
	// Only now, with the index fresh: another backup of this repository
	// that began under the old state still avoids what it condemned.
	r.condemned.set(condemned)
	go s.renew()
	return s, nil
}

// loadCondemned reads the prune state and, if a prune has condemned
// blobs, the list of them (BeginSession puts it in place).
func (r *Repository) loadCondemned(ctx context.Context) (*pruneState, []chunk.ID, error) {
	for attempt := 1; ; attempt++ {
		ps, _, err := readPruneState(ctx, r.st)
		if err != nil {
			return nil, nil, err
		}
		if !ps.condemning() {
			return ps, nil, nil
		}
		ids, err := loadIDList(ctx, r.st, ps.Condemned, condemnedMagic, MaxCondemned)
		if errors.Is(err, storage.ErrNotFound) && attempt < 5 {
			// The prune ended between the two reads and deleted its list:
			// the state has changed too.
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		return ps, ids, nil
	}
}

// Key returns the session's object key.
func (s *Session) Key() string { return s.key }

// renew rewrites the session every fifth of its lease until stopped, or
// until it finds the session fenced.
func (s *Session) renew() {
	defer close(s.done)
	t := time.NewTicker(s.opts.Lease / 5)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.opts.Lease/2)
		err := s.write(ctx, func(rec *sessionRecord) { rec.Renewals++ })
		cancel()
		if errors.Is(err, ErrSessionFenced) {
			if s.opts.OnFenced != nil {
				s.opts.OnFenced(err)
			}
			return
		}
		// Any other failure: try again at the next tick. Should the lease
		// lapse meanwhile, a prune fences the session and the commit
		// fails: the backup is lost, never the data.
	}
}

// write changes the record by compare-and-swap. A mismatch means a prune
// fenced the session (nothing else writes it), unless it is our own write
// after a lost reply, which reading the object back tells.
func (s *Session) write(ctx context.Context, change func(*sessionRecord)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fenced != nil {
		return s.fenced
	}
	rec := s.rec
	change(&rec)
	b, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	v, err := casPut(ctx, s.r.st, s.key, b, s.version, MaxSessionSize)
	if errors.Is(err, storage.ErrVersionMismatch) {
		s.fenced = fmt.Errorf("%w (session %s)", ErrSessionFenced, s.key)
		return s.fenced
	}
	if err != nil {
		return fmt.Errorf("write backup session %s: %w", s.key, err)
	}
	s.rec, s.version = rec, v
	return nil
}

// stopRenewing ends the renewals and waits for the renewing goroutine.
func (s *Session) stopRenewing() {
	s.mu.Lock()
	ended := s.ended
	s.ended = true
	s.mu.Unlock()
	if !ended {
		close(s.stop)
	}
	<-s.done
}

// Commit commits the backup: by compare-and-swap it writes the whole
// snapshot into the session (which fails if a prune fenced it, with
// ErrSessionFenced), then stores the snapshot object and deletes the
// session. It returns the snapshot's id. ErrSnapshotUnconfirmed has
// SaveSnapshot's meaning.
func (s *Session) Commit(ctx context.Context, snap *Snapshot) (chunk.ID, error) {
	s.stopRenewing()
	b, key, id, err := prepareSnapshot(snap)
	if err != nil {
		return chunk.ID{}, err
	}
	if err := s.write(ctx, func(rec *sessionRecord) {
		rec.State, rec.Snapshot = sessionCommitted, json.RawMessage(b)
	}); err != nil {
		// After a lost reply a prune may have seen our commit, written the
		// snapshot out and removed the session: then it is committed.
		if got, rerr := storage.ReadAll(ctx, s.r.st, key, 0, -1); errors.Is(err, ErrSessionFenced) && rerr == nil && bytes.Equal(got, b) {
			return id, nil
		}
		return chunk.ID{}, fmt.Errorf("commit backup: %w", err)
	}
	// Committed: from here a prune keeps what the snapshot reaches, and
	// writes the snapshot out itself should we not get to it.
	if err := s.r.putSnapshot(ctx, key, id, b); err != nil {
		return id, err // the committed session still holds it
	}
	s.deleteSession(ctx)
	return id, nil
}

// End ends a session that will not commit (the backup failed): it stops
// renewing and deletes the session object, if it still can.
func (s *Session) End(ctx context.Context) {
	s.stopRenewing()
	s.mu.Lock()
	committed := s.rec.State == sessionCommitted
	s.mu.Unlock()
	if !committed {
		s.deleteSession(ctx)
	}
}

func (s *Session) deleteSession(ctx context.Context) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = s.r.st.Delete(dctx, s.key) // a leftover lapses, and the next prune removes it
}

// sessionKey reports whether key names a session object.
func sessionKey(key string) bool {
	rest, ok := strings.CutPrefix(key, sessionsPrefix)
	return ok && len(rest) == 32 && strings.Trim(rest, "0123456789abcdef") == ""
}
