package main

import (
	"cmp"
	"context"
	binenc "encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/backupd/backupd/pkg/chunk"
	"github.com/backupd/backupd/pkg/dirfd"
	"github.com/backupd/backupd/pkg/placement"
	"github.com/backupd/backupd/pkg/repo"
	"github.com/backupd/backupd/pkg/storage/local"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// Attacks on the built daemon, running as root, by a workspace's owner
// (the tenant), who controls everything below a workspace root and races
// the daemon with renames, links and swaps. Each test sets up an arena: a
// parent directory holding only the daemon's workspace root R and an
// outside directory O on the same file system (so hard links between them
// work), full of marker entries with secret content, owners, modes, times
// and extended attributes. After every attack the arena's checks hold:
// nothing of O is in any snapshot (content, names, attribute values),
// nothing outside R was created, removed or changed, no file in R holds
// O's content unless the test linked it there, and the daemon is alive
// with no descriptor left open by an operation.

// Owners and modes of the outside entries, and of the workspace's, so that
// metadata written to the wrong inode shows.
const (
	outsideUID, outsideGID = 1111, 2222
	insideUID, insideGID   = 4321, 4321
)

var (
	outsideATime = time.Unix(1_000_000_000, 111) // before mtime: under relatime any read moves it
	outsideMTime = time.Unix(1_100_000_000, 222)
	insideMTime  = time.Unix(1_500_000_000, 333)
)

// arena is a workspace root R and an outside directory O side by side in
// a parent directory of their own, and a daemon serving R.
type arena struct {
	t                        *testing.T
	d                        *proc
	parent, root, outside    string
	secrets                  map[chunk.ID]string // content hashes of O's files
	secretSizes              map[int64]bool
	outsideInodes            map[uint64]string
	outsideNames             map[string]bool // names found only in O ("secret-*")
	outsideXattrs            map[string]bool // attribute values of O's entries
	before                   map[string]fsEntry
	rootBefore               fsEntry
	baseFds                  int
	sealed                   bool
	volatileCtime            map[string]bool // O entries the test links into R: ctime and nlink move
	public                   map[string]bool // O files whose content a snapshot may hold (the workspace's own too)
	linkedAt                 map[string]bool // names in R where the test put hard links to O's files
	snapshotsChecked         int
	treesChecked, inRChecked int
}

// newArena starts a daemon on a fresh arena, with extra flags.
func newArena(t *testing.T, extra ...string) *arena {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("these tests attack a daemon running as root: run them as root")
	}
	parent := t.TempDir()
	a := &arena{t: t, parent: parent, root: filepath.Join(parent, "workspaces"), outside: filepath.Join(parent, "outside"),
		secrets: map[chunk.ID]string{}, secretSizes: map[int64]bool{}, outsideInodes: map[uint64]string{},
		outsideNames: map[string]bool{}, outsideXattrs: map[string]bool{}, volatileCtime: map[string]bool{}, public: map[string]bool{}, linkedAt: map[string]bool{}}
	must(t, os.MkdirAll(a.outside, 0o755))
	a.d = startIn(t, "30s", a.root, extra...)
	a.baseFds = a.pathFds()
	return a
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// in returns the path of rel below R; out the path of rel below O.
func (a *arena) in(rel string) string  { return filepath.Join(a.root, rel) }
func (a *arena) out(rel string) string { return filepath.Join(a.outside, rel) }

// secretContent is the content of O's file rel: unique, recognisable.
func secretContent(rel string) []byte {
	return []byte("SECRET outside the workspace root: " + rel + strings.Repeat(".", len(rel)%7))
}

// outsideMeta gives an outside entry its owner, an extended attribute and
// times, without following it.
func (a *arena) outsideMeta(p string, xattrNS string) {
	t := a.t
	must(t, os.Lchown(p, outsideUID, outsideGID))
	rel, _ := filepath.Rel(a.outside, p)
	val := "XSECRET " + rel
	must(t, unix.Lsetxattr(p, xattrNS+".secret", []byte(val), 0))
	a.outsideXattrs[val] = true
	ts := []unix.Timespec{unix.NsecToTimespec(outsideATime.UnixNano()), unix.NsecToTimespec(outsideMTime.UnixNano())}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
}

// secretFile makes the file rel in O (and its directories) with secret
// content, mode 0600, the outside owner, a user xattr and old times.
func (a *arena) secretFile(rel string) string {
	p := a.out(rel)
	must(a.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(a.t, os.WriteFile(p, secretContent(rel), 0o600))
	a.outsideMeta(p, "user")
	return p
}

// secretFIFO and secretSymlink make a FIFO and a symlink (to target) in O,
// with the outside owner, a trusted xattr (user ones are for files and
// directories only) and old times.
func (a *arena) secretFIFO(rel string) string {
	p := a.out(rel)
	must(a.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(a.t, unix.Mkfifo(p, 0o600))
	a.outsideMeta(p, "trusted")
	return p
}

func (a *arena) secretSymlink(rel, target string) string {
	p := a.out(rel)
	must(a.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(a.t, os.Symlink(target, p))
	a.outsideMeta(p, "trusted")
	return p
}

// file makes a file in R with the workspace's owner and mtime.
func (a *arena) file(rel string, content []byte) string {
	p := a.in(rel)
	must(a.t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(a.t, os.WriteFile(p, content, 0o644))
	must(a.t, os.Chown(p, insideUID, insideGID))
	must(a.t, os.Chtimes(p, insideMTime, insideMTime))
	return p
}

// seal records the arena's state once the setup is done: every attack is
// judged against it.
func (a *arena) seal() {
	t := a.t
	t.Helper()
	a.before = listTree(t, a.parent, "workspaces")
	for rel, e := range a.before {
		if !strings.HasPrefix(rel, "outside/") {
			continue
		}
		if e.Type != "dir" {
			a.outsideInodes[e.Ino] = rel
		}
		if e.Type == "file" && !a.public[rel] {
			if e.Size >= 512<<10 {
				t.Fatalf("%s: outside secrets must fit in one chunk", rel)
			}
			a.secrets[e.Hash] = rel
			a.secretSizes[e.Size] = true
		}
		if strings.HasPrefix(filepath.Base(rel), "secret-") {
			a.outsideNames[filepath.Base(rel)] = true
		}
	}
	if len(a.secrets) == 0 || len(a.outsideNames) == 0 {
		t.Fatal("the arena has no outside secrets to steal")
	}
	a.rootBefore = statEntry(t, a.root)
	a.sealed = true
}

// volatile marks O entries the test itself hard-links into R: the kernel
// moves their ctime and link count with every link made or removed, so
// those two are not compared (owner, mode, times, content and attributes
// still are).
func (a *arena) volatile(rels ...string) {
	for _, r := range rels {
		a.volatileCtime[filepath.Join("outside", r)] = true
	}
}

// check asserts that nothing escaped R. Operations must have ended.
func (a *arena) check() {
	t := a.t
	t.Helper()
	if !a.sealed {
		t.Fatal("arena not sealed")
	}
	// 1. Nothing outside R created, removed or changed.
	after := listTree(t, a.parent, "workspaces")
	var diffs []string
	for rel, b := range a.before {
		e, ok := after[rel]
		if !ok {
			diffs = append(diffs, "removed: "+rel)
			continue
		}
		if a.volatileCtime[rel] {
			e.CTime, e.Nlink = b.CTime, b.Nlink
		}
		if e != b {
			diffs = append(diffs, fmt.Sprintf("changed: %s\n\tbefore %+v\n\tafter  %+v", rel, b, e))
		}
	}
	for rel := range after {
		if _, ok := a.before[rel]; !ok {
			diffs = append(diffs, "created: "+rel)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("outside the workspace root:\n%s", strings.Join(diffs, "\n"))
	}
	if r := statEntry(t, a.root); r.Mode != a.rootBefore.Mode || r.UID != a.rootBefore.UID || r.GID != a.rootBefore.GID || r.Xattrs != a.rootBefore.Xattrs {
		t.Errorf("the workspace root itself changed: %+v -> %+v", a.rootBefore, r)
	}
	// 2. Nothing of O in any snapshot.
	a.checkSnapshots()
	// 3. No file in R holds O's content, but the links the test made.
	a.checkInside()
	// 4. Nothing of O in the daemon's log (errors and warnings included).
	if logs := a.d.log(); strings.Contains(logs, "SECRET outside") || strings.Contains(logs, "XSECRET") {
		t.Errorf("the daemon's log holds outside content or attributes")
	}
	// 5. The daemon serves, and every operation closed what it opened.
	if n := a.pathFds(); n != a.baseFds {
		t.Errorf("backupd holds %d descriptors of files and directories, %d at start:\n%s", n, a.baseFds, a.fdList())
	}
	if err := a.d.cmd.Process.Signal(unix.Signal(0)); err != nil {
		t.Errorf("backupd died: %v", err)
	}
	if _, err := a.d.client.ListSnapshots(context.Background(), &pb.ListSnapshotsRequest{Owner: "o"}); err != nil {
		t.Errorf("backupd no longer answers: %v", err)
	}
	t.Logf("checked: %d outside entries unchanged, %d snapshots (%d trees) and %d files of a secret's size in the root free of outside content",
		len(a.before), a.snapshotsChecked, a.treesChecked, a.inRChecked)
}

// checkSnapshots walks every tree of every snapshot of every owner in the
// daemon's store.
func (a *arena) checkSnapshots() {
	t := a.t
	t.Helper()
	ctx := context.Background()
	root, err := local.New(a.d.store)
	must(t, err)
	owners, err := repo.ListOwners(ctx, root)
	must(t, err)
	for _, owner := range owners {
		st, err := placement.NewPrefixPerOwner(root).Owner(ctx, owner, false)
		must(t, err)
		r, err := repo.Load(ctx, st, false)
		must(t, err)
		refs, err := r.ListSnapshots(ctx, "")
		must(t, err)
		seen := map[chunk.ID]bool{}
		var walk func(id chunk.ID, p string)
		walk = func(id chunk.ID, p string) {
			if seen[id] {
				return
			}
			seen[id] = true
			a.treesChecked++
			tr, err := r.LoadTree(ctx, id)
			must(t, err)
			for _, n := range tr.Nodes {
				np := p + "/" + n.Name
				if a.outsideNames[n.Name] {
					t.Errorf("snapshot of %s holds %s, a name from outside the workspace root", owner, np)
				}
				for _, x := range n.Xattrs {
					if a.outsideXattrs[string(x.Value)] {
						t.Errorf("snapshot of %s holds %s with attribute %s of an outside entry", owner, np, x.Name)
					}
				}
				for _, b := range n.Content {
					if rel, ok := a.secrets[b]; ok {
						t.Errorf("snapshot of %s holds %s with the content of %s", owner, np, rel)
					}
				}
				if n.Type == repo.TypeDir {
					walk(n.Subtree, np)
				}
			}
		}
		for _, ref := range refs {
			snap, err := r.LoadSnapshot(ctx, ref)
			must(t, err)
			a.snapshotsChecked++
			if strings.HasPrefix(snap.Path, a.outside) {
				t.Errorf("snapshot %s of %s/%s was taken of %s", ref.ID.Short(), owner, snap.Workspace, snap.Path)
			}
			walk(snap.Tree, snap.Workspace+"@"+ref.ID.Short())
		}
	}
}

// checkInside walks R without following links: no file there may hold a
// secret's content, nor be an outside file, but where the test linked one.
func (a *arena) checkInside() {
	t := a.t
	t.Helper()
	walkFd(t, a.root, func(rel string, dfd int, name string, st *unix.Stat_t) {
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			return
		}
		if out, ok := a.outsideInodes[st.Ino]; ok {
			if !a.linkedAt[a.in(rel)] {
				t.Errorf("%s in the workspace root is a hard link to %s, which the test did not make", rel, out)
			}
			return
		}
		if !a.secretSizes[st.Size] {
			return
		}
		a.inRChecked++
		if rel, ok := a.secrets[hashAt(t, dfd, name)]; ok {
			t.Errorf("%s in the workspace root holds the content of %s", rel, filepath.Join("outside", rel))
		}
	})
}

// fsEntry is what a listing records of one entry.
type fsEntry struct {
	Type                string
	Size                int64
	Hash                chunk.ID
	UID, GID, Mode      uint32
	MTime, ATime, CTime int64
	Nlink, Ino          uint64
	Xattrs              string
}

// listTree lists dir and everything below it but the entry skip of dir,
// never following a link and never moving an access time.
func listTree(t *testing.T, dir, skip string) map[string]fsEntry {
	t.Helper()
	out := map[string]fsEntry{}
	top := statEntry(t, dir)
	top.ATime = 0 // moved by the daemon's own lookups below it
	out["."] = top
	walkFd(t, dir, func(rel string, dfd int, name string, st *unix.Stat_t) {
		if rel == skip || strings.HasPrefix(rel, skip+"/") {
			return
		}
		out[rel] = entryAt(t, dfd, name, st)
	}, skip)
	return out
}

// walkFd calls fn for every entry below dir, reached from its directory's
// descriptor without following links (so it goes deeper than PATH_MAX),
// not descending into the top-level names in prune.
func walkFd(t *testing.T, dir string, fn func(rel string, dfd int, name string, st *unix.Stat_t), prune ...string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	must(t, err)
	var walk func(fd int, rel string)
	walk = func(fd int, rel string) {
		defer unix.Close(fd)
		names, err := dirfd.ReadNames(fd)
		must(t, err)
		sort.Strings(names)
		for _, name := range names {
			r := name
			if rel != "" {
				r = rel + "/" + name
			}
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatalf("stat %s: %v", r, err)
			}
			fn(r, fd, name, &st)
			if st.Mode&unix.S_IFMT == unix.S_IFDIR && !(rel == "" && contains(prune, name)) {
				sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_CLOEXEC, 0)
				must(t, err)
				walk(sub, r)
			}
		}
	}
	walk(fd, "")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func statEntry(t *testing.T, p string) fsEntry {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(p, &st))
	return entryAt(t, unix.AT_FDCWD, p, &st)
}

// entryAt records the entry name of directory dfd, stat'ed as st.
func entryAt(t *testing.T, dfd int, name string, st *unix.Stat_t) fsEntry {
	t.Helper()
	e := fsEntry{Size: st.Size, UID: st.Uid, GID: st.Gid, Mode: st.Mode, MTime: st.Mtim.Nano(), ATime: st.Atim.Nano(),
		CTime: st.Ctim.Nano(), Nlink: uint64(st.Nlink), Ino: st.Ino}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		e.Type, e.Hash = "file", hashAt(t, dfd, name)
	case unix.S_IFDIR:
		e.Type, e.Size, e.ATime = "dir", 0, 0 // the atime of a directory moves with every lookup in it
	case unix.S_IFLNK:
		// Not read: readlink moves a link's atime, which is how a read by
		// the daemon shows. A link's target cannot change in place, and
		// its length and inode are compared.
		e.Type = "symlink"
	case unix.S_IFIFO:
		e.Type = "fifo"
	default:
		e.Type = fmt.Sprintf("%o", st.Mode&unix.S_IFMT)
	}
	// Attributes through an O_PATH descriptor of the entry itself: its
	// /proc path leads to that inode, even a symlink's, and no further.
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	proc := dirfd.ProcPath(fd)
	buf := make([]byte, 64<<10)
	n, err := unix.Listxattr(proc, buf)
	if err != nil && err != unix.ENOTSUP {
		t.Fatalf("listxattr %s: %v", name, err)
	}
	var xs []string
	for _, x := range strings.Split(string(buf[:max(n, 0)]), "\x00") {
		if x == "" {
			continue
		}
		v := make([]byte, 64<<10)
		k, err := unix.Getxattr(proc, x, v)
		must(t, err)
		xs = append(xs, x+"="+string(v[:k]))
	}
	sort.Strings(xs)
	e.Xattrs = strings.Join(xs, ";")
	return e
}

// hashAt hashes the content of the regular file name in dfd, without
// moving its access time.
func hashAt(t *testing.T, dfd int, name string) chunk.ID {
	t.Helper()
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	must(t, err)
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	b, err := io.ReadAll(f)
	must(t, err)
	return chunk.Hash(b)
}

// pathFds counts the daemon's descriptors of files and directories (not
// sockets, pipes or anonymous inodes).
func (a *arena) pathFds() int {
	return len(a.fds())
}

func (a *arena) fds() []string {
	dir := fmt.Sprintf("/proc/%d/fd", a.d.cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	must(a.t, err)
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "/") && !strings.HasPrefix(l, "/dev/") {
			out = append(out, l)
		}
	}
	return out
}

func (a *arena) fdList() string {
	l := a.fds()
	if len(l) > 20 {
		l = append(l[:20], fmt.Sprintf("... %d in all", len(l)))
	}
	return strings.Join(l, "\n")
}

// Operations through the daemon's API.

// backupReq and restoreReq are requests of owner "o".
func backupReq(workspace, path string) *pb.BackupWorkspaceRequest {
	return &pb.BackupWorkspaceRequest{Owner: "o", Workspace: workspace, Path: path}
}

func restoreReq(workspace, path string) *pb.RestoreWorkspaceRequest {
	return &pb.RestoreWorkspaceRequest{Owner: "o", Workspace: workspace, Path: path}
}

// begin starts a backup or restore and returns the operation as started.
func (d *proc) begin(req any) *pb.Operation {
	d.t.Helper()
	ctx := context.Background()
	switch r := req.(type) {
	case *pb.BackupWorkspaceRequest:
		resp, err := d.client.BackupWorkspace(ctx, r)
		if err != nil {
			d.t.Fatalf("backup %s: %v", r.Path, err)
		}
		return resp.Operation
	case *pb.RestoreWorkspaceRequest:
		resp, err := d.client.RestoreWorkspace(ctx, r)
		if err != nil {
			d.t.Fatalf("restore into %s: %v", r.Path, err)
		}
		return resp.Operation
	}
	d.t.Fatalf("begin: %T", req)
	return nil
}

func ended(op *pb.Operation) bool {
	return op.Progress.GetPhase() == pb.OperationPhase_OPERATION_PHASE_DONE
}

// until follows operation id until cond holds and returns it then; the
// operation ending first without cond is fatal.
func (d *proc) until(id string, what string, cond func(*pb.Operation) bool) *pb.Operation {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := d.client.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: id, Interval: durationpb.New(100 * time.Millisecond)})
	if err != nil {
		d.t.Fatalf("watch %s: %v", id, err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			d.t.Fatalf("operation %s never %s: %v", id, what, err)
		}
		if cond(m.Operation) {
			return m.Operation
		}
		if ended(m.Operation) {
			d.t.Fatalf("operation %s ended %v (%s) before it was %s", id, m.Operation.State, m.Operation.ErrorMessage, what)
		}
	}
}

// end follows operation id to the end of its watch stream, once the
// operation has ended and released what it held, and returns it then.
func (d *proc) end(id string) *pb.Operation {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := d.client.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: id})
	if err != nil {
		d.t.Fatalf("watch %s: %v", id, err)
	}
	var last *pb.Operation
	for {
		m, err := stream.Recv()
		if err == io.EOF && last != nil && ended(last) {
			if err := d.loggedEnd(id); err != nil {
				d.t.Fatal(err)
			}
			return last
		}
		if err != nil {
			d.t.Fatalf("watch %s: %v", id, err)
		}
		last = m.Operation
	}
}

// run starts an operation and follows it to its end.
func (d *proc) run(req any) *pb.Operation {
	d.t.Helper()
	return d.end(d.begin(req).Id)
}

// mustSucceed runs an operation that must succeed.
func (d *proc) mustSucceed(req any) *pb.Operation {
	d.t.Helper()
	op := d.run(req)
	if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		d.t.Fatalf("%v %s: %v %s", op.Kind, op.Path, op.State, op.ErrorMessage)
	}
	return op
}

func (d *proc) state(id string) pb.OperationState {
	d.t.Helper()
	resp, err := d.client.GetOperation(context.Background(), &pb.GetOperationRequest{OperationId: id})
	if err != nil {
		d.t.Fatal(err)
	}
	return resp.Operation.State
}

func (d *proc) cancel(id string) {
	d.t.Helper()
	if _, err := d.client.CancelOperation(context.Background(), &pb.CancelOperationRequest{OperationId: id}); err != nil {
		d.t.Fatal(err)
	}
}

func isRunning(op *pb.Operation) bool { return op.State == pb.OperationState_OPERATION_STATE_RUNNING }

// snapshotTree loads snapshot id of owner "o" and returns its entries by
// path: type, and for files the content blobs.
func (a *arena) snapshotTree(id string) map[string]repo.Node {
	t := a.t
	t.Helper()
	ctx := context.Background()
	root, err := local.New(a.d.store)
	must(t, err)
	st, err := placement.NewPrefixPerOwner(root).Owner(ctx, "o", false)
	must(t, err)
	r, err := repo.Load(ctx, st, false)
	must(t, err)
	snap, _, err := r.FindSnapshot(ctx, "", id)
	must(t, err)
	out := map[string]repo.Node{}
	var walk func(id chunk.ID, p string)
	walk = func(id chunk.ID, p string) {
		tr, err := r.LoadTree(ctx, id)
		must(t, err)
		for _, n := range tr.Nodes {
			out[p+n.Name] = n
			if n.Type == repo.TypeDir {
				walk(n.Subtree, p+n.Name+"/")
			}
		}
	}
	walk(snap.Tree, "")
	return out
}

// holds reports whether snapshot node n is a file of exactly content.
func holds(n repo.Node, content []byte) bool {
	return n.Type == repo.TypeFile && len(n.Content) == 1 && n.Content[0] == chunk.Hash(content)
}

// wantInvalid asserts that err is INVALID_ARGUMENT.
func wantInvalid(t *testing.T, what string, err error) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("%s: %v, want InvalidArgument", what, err)
	}
}

// mirrorLayout fills O/dir with the names of a workspace (a, sub/b, old)
// holding secrets, and a name of its own: a link to it stands in for the
// workspace with the same shape.
func (a *arena) mirrorLayout(dir string) {
	for _, rel := range []string{"a", "sub/b", "old", "secret-" + filepath.Base(dir), "sub/secret-sub"} {
		a.secretFile(filepath.Join(dir, rel))
	}
}

// workspace makes a small workspace at rel in R: a, sub/b and, with old,
// the file "old" (which snapshots of the workspace lack).
func (a *arena) workspace(rel string, old bool) {
	a.file(rel+"/a", []byte("inside: a of "+rel))
	a.file(rel+"/sub/b", []byte("inside: b of "+rel))
	if old {
		a.file(rel+"/old", []byte("inside: old of "+rel))
	}
}

// swapForLink renames the directory at rel away (to rel.orig, still in R)
// and puts a symlink to target in its place.
func (a *arena) swapForLink(rel, target string) string {
	moved := a.in(rel + ".orig")
	must(a.t, os.Rename(a.in(rel), moved))
	must(a.t, os.Symlink(target, a.in(rel)))
	return moved
}

// TestAttackQueuedBackupPathSwapped: a backup requested while another
// holds the only slot waits in the queue; meanwhile the tenant renames the
// workspace away and puts a symlink at its path, to O or to a copy of the
// workspace's layout in O. Once the slot is free the backup must read the
// directory it was asked for (now under its new name: it sees a file added
// there after the swap) or fail, never O.
func TestAttackQueuedBackupPathSwapped(t *testing.T) {
	a := newArena(t, "--max-backups", "1")
	d := a.d
	a.mirrorLayout("layout")
	a.secretFile("secret-top")
	writeRandom(t, a.in("slow/big"), 8<<20, 11) // 8 s at the harness's 1 MiB/s
	a.workspace("w1", false)
	a.workspace("w2", false)
	a.seal()

	slow := d.begin(backupReq("slow", a.in("slow")))
	d.until(slow.Id, "running", isRunning)
	ops := map[string]*pb.Operation{}
	for _, ws := range []string{"w1", "w2"} {
		op := d.begin(backupReq(ws, a.in(ws)))
		if op.State != pb.OperationState_OPERATION_STATE_QUEUED {
			t.Fatalf("backup of %s is %v, want QUEUED behind the slow one", ws, op.State)
		}
		ops[ws] = op
	}
	a.swapForLink("w1", a.outside)
	a.swapForLink("w2", a.out("layout"))
	for _, ws := range []string{"w1", "w2"} {
		a.file(ws+".orig/added", []byte("inside: added to "+ws+" after the request"))
		if s := d.state(ops[ws].Id); s != pb.OperationState_OPERATION_STATE_QUEUED {
			t.Fatalf("backup of %s is %v after the swap, want still QUEUED", ws, s)
		}
	}
	d.cancel(slow.Id)
	if op := d.end(slow.Id); op.State != pb.OperationState_OPERATION_STATE_CANCELLED {
		t.Fatalf("slow backup: %v %s", op.State, op.ErrorMessage)
	}
	for _, ws := range []string{"w1", "w2"} {
		op := d.end(ops[ws].Id)
		if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
			t.Logf("backup of %s after the swap: %v %s (failing is allowed)", ws, op.State, op.ErrorMessage)
			continue
		}
		tree := a.snapshotTree(op.Result.SnapshotId)
		for rel, content := range map[string]string{"a": "inside: a of " + ws, "sub/b": "inside: b of " + ws, "added": "inside: added to " + ws + " after the request"} {
			if !holds(tree[rel], []byte(content)) {
				t.Errorf("backup of %s: %s is %+v, want the renamed workspace's file", ws, rel, tree[rel])
			}
		}
		if len(tree) != 4 {
			t.Errorf("backup of %s holds %d entries, want a, sub, sub/b, added", ws, len(tree))
		}
		t.Logf("backup of %s after the swap: the renamed directory, %d entries", ws, len(tree))
	}
	a.check()
}

// TestAttackQueuedRestorePathSwapped: restores requested while a slow one
// holds the only slot wait in the queue; meanwhile the tenant swaps each
// target for a symlink into O (which has the snapshot's names). Once they
// run they must write into the directory they were asked for (now under
// its new name) or fail: nothing may be written into O. Targets: an empty
// one (no overwrite), one with --overwrite --delete, one with --overwrite
// --verify, and one whose last directories the request created.
func TestAttackQueuedRestorePathSwapped(t *testing.T) {
	a := newArena(t, "--max-restores", "1", "--upload-limit", "1GiB", "--download-limit", "256KiB")
	d := a.d
	writeRandom(t, a.in("big/data"), 3<<20, 12) // 12 s to restore at 256 KiB/s
	a.workspace("w", false)
	must(t, unix.Mkfifo(a.in("w/fifo"), 0o644))
	must(t, os.Symlink("a", a.in("w/link")))
	d.mustSucceed(backupReq("big", a.in("big")))
	d.mustSucceed(backupReq("w", a.in("w")))
	a.mirrorLayout("layout")
	a.secretFile("secret-top")
	must(t, os.MkdirAll(a.in("t1"), 0o755))
	a.workspace("t2", true)
	a.workspace("t3", true)
	must(t, os.WriteFile(a.in("t3/a"), []byte("changed, same size?"), 0o644))
	must(t, os.MkdirAll(a.in("t4"), 0o755))
	a.seal()

	slow := d.begin(restoreReq("big", a.in("bigout")))
	d.until(slow.Id, "running", isRunning)
	reqs := map[string]*pb.RestoreWorkspaceRequest{
		"t1": restoreReq("w", a.in("t1")),
		"t2": {Owner: "o", Workspace: "w", Path: a.in("t2"), Overwrite: true, Delete: true},
		"t3": {Owner: "o", Workspace: "w", Path: a.in("t3"), Overwrite: true, Verify: true},
		"t4": restoreReq("w", a.in("t4/new/deep")),
	}
	targets := []string{"t1", "t2", "t3", "t4"}
	ops := map[string]*pb.Operation{}
	for _, tg := range targets {
		op := d.begin(reqs[tg])
		if op.State != pb.OperationState_OPERATION_STATE_QUEUED {
			t.Fatalf("restore into %s is %v, want QUEUED behind the slow one", tg, op.State)
		}
		ops[tg] = op
	}
	a.swapForLink("t1", a.outside)
	a.swapForLink("t2", a.out("layout"))
	a.swapForLink("t3", a.out("layout"))
	a.swapForLink("t4", a.out("layout"))
	must(t, os.Symlink(a.out("layout"), a.in("t4.orig/new/deep.link"))) // a link beside the open target, too
	for _, tg := range targets {
		if s := d.state(ops[tg].Id); s != pb.OperationState_OPERATION_STATE_QUEUED {
			t.Fatalf("restore into %s is %v after the swap, want still QUEUED", tg, s)
		}
	}
	d.cancel(slow.Id)
	if op := d.end(slow.Id); op.State != pb.OperationState_OPERATION_STATE_CANCELLED {
		t.Fatalf("slow restore: %v %s", op.State, op.ErrorMessage)
	}
	where := map[string]string{"t1": "t1.orig", "t2": "t2.orig", "t3": "t3.orig", "t4": "t4.orig/new/deep"}
	for _, tg := range targets {
		op := d.end(ops[tg].Id)
		if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
			t.Logf("restore into %s after the swap: %v %s (failing is allowed)", tg, op.State, op.ErrorMessage)
			continue
		}
		dir := a.in(where[tg])
		for rel, content := range map[string]string{"a": "inside: a of w", "sub/b": "inside: b of w"} {
			if b, err := os.ReadFile(filepath.Join(dir, rel)); err != nil || string(b) != content {
				t.Errorf("restore into %s: %s/%s is %q, %v", tg, where[tg], rel, b, err)
			}
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, "fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			t.Errorf("restore into %s: no FIFO in %s: %v", tg, where[tg], err)
		}
		_, err := os.Lstat(filepath.Join(dir, "old"))
		if tg == "t2" && err == nil {
			t.Errorf("restore --delete into t2 left %s/old", where[tg])
		}
		if tg == "t3" && err != nil {
			t.Errorf("restore --overwrite into t3 removed %s/old: %v", where[tg], err)
		}
		t.Logf("restore into %s after the swap: written into %s", tg, where[tg])
	}
	a.check()
}

// insideMeta gives a workspace entry (not followed) the workspace's owner,
// a trusted xattr and its mtime.
func (a *arena) insideMeta(p string) {
	must(a.t, os.Lchown(p, insideUID, insideGID))
	must(a.t, unix.Lsetxattr(p, "trusted.snap", []byte("inside"), 0))
	ts := []unix.Timespec{unix.NsecToTimespec(insideMTime.UnixNano()), unix.NsecToTimespec(insideMTime.UnixNano())}
	must(a.t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
}

// link hard-links the outside entry rel (a symlink itself, not its
// target) at the path p in R.
func (a *arena) link(rel, p string) {
	must(a.t, unix.Linkat(unix.AT_FDCWD, a.out(rel), unix.AT_FDCWD, p, 0))
	a.linkedAt[p] = true
}

// wantRestored asserts that p in R is a fresh entry of kind typ (one link,
// not an outside inode) with the workspace's owner and, for a file,
// content.
func (a *arena) wantRestored(p string, typ uint32, content string) {
	t := a.t
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Errorf("%s: %v", p, err)
		return
	}
	if rel, ok := a.outsideInodes[st.Ino]; ok {
		t.Errorf("%s is still a link to outside/%s", p, rel)
	}
	if st.Mode&unix.S_IFMT != typ || st.Nlink != 1 || st.Uid != insideUID {
		t.Errorf("%s: type %o, %d links, owner %d; want type %o, one link, owner %d", p, st.Mode&unix.S_IFMT, st.Nlink, st.Uid, typ, insideUID)
	}
	if typ == unix.S_IFREG {
		if b, err := os.ReadFile(p); err != nil || string(b) != content {
			t.Errorf("%s holds %q, %v; want %q", p, b, err, content)
		}
	}
}

// TestAttackOverwriteHardLinksOut: a restore --overwrite target holds hard
// links to entries of O: a file with the size and mtime of the snapshot's
// (it looks unchanged), one with the snapshot's very content, size and
// mtime, one that differs, a FIFO and a symlink with the snapshot's target
// where the snapshot has a FIFO and that symlink, one where the snapshot
// has nothing (for --delete), and a symlink into O where the snapshot has
// a file. With --overwrite, --overwrite --verify and --overwrite --delete
// through the daemon, O's entries keep content, owner, mode, times and
// attributes (their ctime and link count move when the restore removes
// the target's link: the kernel's doing, so not compared for those), and
// each target entry ends as a new one with one link and the snapshot's
// content and owner.
func TestAttackOverwriteHardLinksOut(t *testing.T) {
	a := newArena(t)
	d := a.d
	contents := map[string]string{"f": "the snapshot's f, 32 bytes long.", "g": "the snapshot's g", "c": "the snapshot's c, as outside", "s": "the snapshot's s"}
	for name, c := range contents {
		a.file("w/"+name, []byte(c))
		must(t, unix.Setxattr(a.in("w/"+name), "user.snap", []byte("inside"), 0))
		must(t, os.Chtimes(a.in("w/"+name), insideMTime, insideMTime))
	}
	must(t, unix.Mkfifo(a.in("w/p"), 0o640))
	a.insideMeta(a.in("w/p"))
	must(t, os.Symlink("target-x", a.in("w/l")))
	a.insideMeta(a.in("w/l"))
	snap := d.mustSucceed(backupReq("w", a.in("w")))

	// hf looks unchanged (size and mtime of f); hc is c exactly.
	a.secretFile("hf")
	must(t, os.WriteFile(a.out("hf"), []byte(strings.Repeat("S", len(contents["f"]))), 0o600))
	must(t, os.Chtimes(a.out("hf"), outsideATime, insideMTime))
	a.secretFile("hc")
	must(t, os.WriteFile(a.out("hc"), []byte(contents["c"]), 0o600))
	must(t, os.Chtimes(a.out("hc"), outsideATime, insideMTime))
	a.public["outside/hc"] = true
	a.secretFile("hg")
	a.secretFile("secret-he")
	a.secretFile("hs")
	a.secretFIFO("hp")
	a.secretSymlink("hl", "target-x")
	a.volatile("hf", "hc", "hg", "secret-he", "hp", "hl")
	variants := []struct {
		name                  string
		verify, delete, keeps bool
	}{{"overwrite", false, false, true}, {"verify", true, false, true}, {"delete", false, true, false}}
	for _, v := range variants {
		tg := a.in("t-" + v.name)
		must(t, os.MkdirAll(tg, 0o755))
		for name, rel := range map[string]string{"f": "hf", "c": "hc", "g": "hg", "p": "hp", "l": "hl", "secret-he": "secret-he"} {
			a.link(rel, filepath.Join(tg, name))
		}
		must(t, os.Symlink(a.out("hs"), filepath.Join(tg, "s")))
	}
	a.seal()

	for _, v := range variants {
		tg := a.in("t-" + v.name)
		op := d.run(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", SnapshotId: snap.Result.SnapshotId, Path: tg,
			Overwrite: true, Verify: v.verify, Delete: v.delete})
		if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
			t.Errorf("restore --%s: %v %s", v.name, op.State, op.ErrorMessage)
			continue
		}
		for name, c := range contents {
			a.wantRestored(filepath.Join(tg, name), unix.S_IFREG, c)
		}
		a.wantRestored(filepath.Join(tg, "p"), unix.S_IFIFO, "")
		a.wantRestored(filepath.Join(tg, "l"), unix.S_IFLNK, "")
		var st unix.Stat_t
		err := unix.Lstat(filepath.Join(tg, "secret-he"), &st)
		if v.keeps && (err != nil || a.outsideInodes[st.Ino] != "outside/secret-he") {
			t.Errorf("restore --%s: the extra entry (a link to outside/secret-he) went: %v", v.name, err)
		}
		if !v.keeps && err == nil {
			t.Errorf("restore --%s left the extra entry", v.name)
		}
		t.Logf("restore --%s: %d files, %d unchanged, %d deleted", v.name, op.Result.Files, op.Result.UnchangedFiles, op.Result.Deleted)
	}
	a.check()
}

// linkRacer replaces entries of a restore target by hard links to O's
// entries of the same kind (a symlink with the snapshot's target, a FIFO),
// as fast as it can: link at a temporary name, rename over the entry.
type linkRacer struct {
	a        *arena
	replaced atomic.Int64
	tmp      atomic.Int64
}

// victim is the outside entry that stands in for the restored entry name.
func victim(name string) string {
	if strings.HasPrefix(name, "s") {
		return "vl"
	}
	return "vp"
}

// replace puts a link to name's victim at dir/name (only if something is
// there: the race is with the restore's metadata, not with its creation).
func (lr *linkRacer) replace(dir, name string) {
	tmp := filepath.Join(dir, fmt.Sprintf(".race%d", lr.tmp.Add(1)))
	if unix.Linkat(unix.AT_FDCWD, lr.a.out(victim(name)), unix.AT_FDCWD, tmp, 0) != nil {
		return
	}
	if unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, filepath.Join(dir, name), 0) == nil {
		lr.replaced.Add(1)
	} else {
		unix.Unlink(tmp)
	}
}

// onCreate replaces each entry the moment inotify reports it created in
// dir, until stop is called.
func (lr *linkRacer) onCreate(dir string) (stop func()) {
	t := lr.a.t
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	must(t, err)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Close ends a Read
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				l := int(binenc.LittleEndian.Uint32(buf[off+12:]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+l]), "\x00")
				off += unix.SizeofInotifyEvent + l
				if name != "" && !strings.HasPrefix(name, ".") {
					lr.replace(dir, name)
				}
			}
		}
	}()
	return func() { f.Close(); <-done }
}

// loop replaces every entry of dir named in names, round after round,
// until stop is called.
func (lr *linkRacer) loop(dir string, names []string) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			for _, n := range names {
				select {
				case <-quit:
					return
				default:
				}
				lr.replace(dir, n)
			}
		}
	}()
	return func() { close(quit); <-done }
}

// TestAttackRestoreMetadataRacingLinks: while restores write symlinks and
// FIFOs (with owner, mode, mtime and an xattr to set), the tenant replaces
// them in the target with hard links to O's symlink and FIFO: in fresh
// targets the moment inotify reports each entry created, and over an
// existing target (--overwrite) round after round. O's entries must keep
// owner, mode, times and attributes (their ctime and link count are the
// racer's). Failing restores are allowed.
func TestAttackRestoreMetadataRacingLinks(t *testing.T) {
	a := newArena(t, "--max-restores", "1")
	d := a.d
	const count = 150
	var names []string
	for i := range count {
		s, p := fmt.Sprintf("s%03d", i), fmt.Sprintf("p%03d", i)
		must(t, os.MkdirAll(a.in("w"), 0o755))
		must(t, os.Symlink("t", a.in("w/"+s)))
		must(t, unix.Mkfifo(a.in("w/"+p), 0o640))
		a.insideMeta(a.in("w/" + s))
		a.insideMeta(a.in("w/" + p))
		names = append(names, s, p)
	}
	snap := d.mustSucceed(backupReq("w", a.in("w")))
	a.secretSymlink("vl", "t")
	a.secretFIFO("vp")
	a.secretFile("secret-f")
	a.volatile("vl", "vp")
	d.mustSucceed(restoreReq("w", a.in("t")))
	a.seal()

	lr := &linkRacer{a: a}
	var ok, failed, fresh int
	var firstErr [2]string
	for round := range 8 {
		// A fresh target, raced on creation.
		dir := a.in(fmt.Sprintf("fresh%d", round))
		must(t, os.Mkdir(dir, 0o755))
		stop := lr.onCreate(dir)
		op := d.run(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", SnapshotId: snap.Result.SnapshotId, Path: dir})
		stop()
		fresh++
		if op.State == pb.OperationState_OPERATION_STATE_SUCCEEDED {
			ok++
		} else {
			failed++
			firstErr[0] = cmp.Or(firstErr[0], op.ErrorMessage)
		}
		// Over the existing target, raced all along.
		stop = lr.loop(a.in("t"), names)
		op = d.run(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", SnapshotId: snap.Result.SnapshotId, Path: a.in("t"), Overwrite: true, Delete: round%2 == 1})
		stop()
		if op.State == pb.OperationState_OPERATION_STATE_SUCCEEDED {
			ok++
		} else {
			failed++
			firstErr[1] = cmp.Or(firstErr[1], op.ErrorMessage)
		}
	}
	t.Logf("%d restores (%d of them fresh) of %d symlinks and FIFOs: %d succeeded, %d failed (first in a fresh target: %q; over one: %q); %d entries replaced by links out",
		fresh*2, fresh, 2*count, ok, failed, firstErr[0], firstErr[1], lr.replaced.Load())
	if lr.replaced.Load() < 1000 {
		t.Fatalf("only %d replacements: race not exercised", lr.replaced.Load())
	}
	a.check()
}

// exchanger swaps pairs of entries atomically (renameat2 RENAME_EXCHANGE)
// in a loop, counting the swaps made.
type exchanger struct {
	pairs [][2]string
	swaps atomic.Int64
	quit  chan struct{}
	done  chan struct{}
}

// exchange swaps pairs until stopped; repair, if set, is called with the
// second of a pair that could not be swapped because it was missing.
func exchange(pairs [][2]string, repair func(missing string)) *exchanger {
	x := &exchanger{pairs: pairs, quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(x.done)
		for {
			for _, p := range x.pairs {
				select {
				case <-x.quit:
					return
				default:
				}
				err := unix.Renameat2(unix.AT_FDCWD, p[0], unix.AT_FDCWD, p[1], unix.RENAME_EXCHANGE)
				if err == nil {
					x.swaps.Add(1)
				} else if err == unix.ENOENT && repair != nil {
					repair(p[1])
				}
			}
		}
	}()
	return x
}

func (x *exchanger) stop() int64 { close(x.quit); <-x.done; return x.swaps.Load() }

// TestAttackRacingSwaps: while the daemon runs backup after backup of W
// and, at the same time, restore after restore of W's latest snapshot
// over a target T (--overwrite, with --delete and --verify in turn), the
// tenant swaps, atomically and thousands of times, in W and in T: a
// directory with a symlink to O's copy of it, a file with a symlink to a
// secret file of O, and a directory with a directory of the same name
// elsewhere in the workspace. Operations may fail; none may read O into a
// snapshot or write to O.
func TestAttackRacingSwaps(t *testing.T) {
	a := newArena(t, "--upload-limit", "1GiB")
	d := a.d
	for _, ws := range []string{"w"} {
		for i := range 10 {
			a.file(fmt.Sprintf("%s/d/f%02d", ws, i), []byte(fmt.Sprintf("inside: d/f%02d", i)))
			a.secretFile(fmt.Sprintf("mirror/f%02d", i))
		}
		a.file(ws+"/d/deeper/g", []byte("inside: d/deeper/g"))
		a.file(ws+"/f", []byte("inside: f"))
		a.file(ws+"/e/x/x1", []byte("inside: e/x/x1"))
		a.file(ws+"/other/x/y1", []byte("inside: other/x/y1"))
	}
	a.secretFile("mirror/deeper/g")
	a.secretFile("mirror/secret-m")
	a.secretFile("secret-f")
	must(t, os.Symlink(a.out("mirror"), a.in("w/dlink")))
	must(t, os.Symlink(a.out("secret-f"), a.in("w/flink")))
	a.file("w/h1", []byte("inside: h1 and h2"))
	must(t, os.Link(a.in("w/h1"), a.in("w/h2"))) // restored as a hard link
	d.mustSucceed(backupReq("w", a.in("w")))
	d.mustSucceed(restoreReq("w", a.in("t")))
	// In the target, a hard link out to swap with the first name of the
	// pair, made again whenever a restore has removed it.
	a.secretFile("secret-h")
	a.link("secret-h", a.in("t/hx"))
	a.linkedAt[a.in("t/h1")] = true // where the swaps may leave it
	a.volatile("secret-h")
	a.seal()

	var pairs [][2]string
	for _, dir := range []string{"w", "t"} {
		pairs = append(pairs, [2]string{a.in(dir + "/d"), a.in(dir + "/dlink")}, [2]string{a.in(dir + "/f"), a.in(dir + "/flink")},
			[2]string{a.in(dir + "/e/x"), a.in(dir + "/other/x")})
	}
	pairs = append(pairs, [2]string{a.in("t/h1"), a.in("t/hx")})
	var relinked atomic.Int64
	x := exchange(pairs, func(missing string) {
		if missing == a.in("t/hx") && unix.Linkat(unix.AT_FDCWD, a.out("secret-h"), unix.AT_FDCWD, missing, 0) == nil {
			relinked.Add(1)
		}
	})
	type lane struct {
		ok, failed int
		errs       []string
	}
	var backups, restores lane
	record := func(l *lane, op *pb.Operation) {
		if op.State == pb.OperationState_OPERATION_STATE_SUCCEEDED {
			l.ok++
			return
		}
		l.failed++
		if len(l.errs) < 3 {
			l.errs = append(l.errs, op.ErrorMessage)
		}
	}
	const rounds = 50
	deadline := time.Now().Add(15 * time.Second)
	restoreDone := make(chan struct{})
	go func() {
		defer close(restoreDone)
		for i := 0; i < rounds && time.Now().Before(deadline); i++ {
			op := d.begin(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: a.in("t"), Overwrite: true, Delete: i%2 == 0, Verify: i%3 == 0})
			record(&restores, d.end(op.Id))
			// The second name restore made (no swap touches it) is never
			// a name of the outside file, which the swaps put at the first.
			var st unix.Stat_t
			if unix.Lstat(a.in("t/h2"), &st) == nil && a.outsideInodes[st.Ino] != "" {
				t.Errorf("restore %d made t/h2 a hard link to %s", i, a.outsideInodes[st.Ino])
			}
		}
	}()
	for i := 0; i < rounds && time.Now().Before(deadline); i++ {
		op := d.begin(&pb.BackupWorkspaceRequest{Owner: "o", Workspace: "w", Path: a.in("w"), Force: i%2 == 1})
		record(&backups, d.end(op.Id))
	}
	<-restoreDone
	swaps := x.stop()
	t.Logf("%d swaps (the hard link out made again %d times); backups: %d succeeded, %d failed %q; restores: %d succeeded, %d failed %q",
		swaps, relinked.Load(), backups.ok, backups.failed, backups.errs, restores.ok, restores.failed, restores.errs)
	if swaps < 2000 {
		t.Errorf("only %d swaps: race not exercised", swaps)
	}
	if backups.ok+backups.failed < 5 || restores.ok+restores.failed < 5 {
		t.Errorf("too few operations ran under the swaps")
	}
	a.check()
}

// TestEndedOperationFreesItsWorkspace: once an operation shows that it
// has ended (a watch message or GetOperation with a final state), a new
// operation on the same workspace, with other parameters, is accepted, as
// the workspace manager asks for the next one as soon as it sees the last
// end. (Found while attacking: the final state was published before the
// operation left the set of active ones, so the next request could be
// refused as conflicting with an operation that had already ended.) The
// operations here are queued behind a slow backup and cancelled, which
// ends them the same way at the cost of three calls; clients polling the
// daemon meanwhile, as dashboards do, take its locks.
func TestEndedOperationFreesItsWorkspace(t *testing.T) {
	d := startIn(t, "30s", "", "--max-backups", "1")
	ws := filepath.Join(d.root, "ws")
	writeRandom(t, filepath.Join(ws, "f"), 100, 21)
	writeRandom(t, filepath.Join(d.root, "slow", "big"), 16<<20, 22) // 16 s at 1 MiB/s: outlasts the rounds
	slow := d.begin(backupReq("slow", filepath.Join(d.root, "slow")))
	d.until(slow.Id, "running", isRunning)
	var current atomic.Value
	current.Store(slow.Id)
	quit := make(chan struct{})
	var polling sync.WaitGroup
	for range 4 {
		polling.Add(1)
		go func() {
			defer polling.Done()
			for {
				select {
				case <-quit:
					return
				default:
				}
				d.client.GetOperation(context.Background(), &pb.GetOperationRequest{OperationId: current.Load().(string)})
			}
		}()
	}
	defer func() { close(quit); polling.Wait() }()
	op := d.begin(&pb.BackupWorkspaceRequest{Owner: "o", Workspace: "w", Path: ws})
	const rounds = 1000
	for i := range rounds {
		current.Store(op.Id)
		d.cancel(op.Id)
		d.until(op.Id, "cancelled", func(o *pb.Operation) bool { return o.State == pb.OperationState_OPERATION_STATE_CANCELLED })
		// At once, with other parameters (force).
		resp, err := d.client.BackupWorkspace(context.Background(), &pb.BackupWorkspaceRequest{Owner: "o", Workspace: "w", Path: ws, Force: i%2 == 0})
		if err != nil {
			t.Fatalf("round %d of %d: backup right after the last one was cancelled: %v", i, rounds, err)
		}
		if resp.Joined {
			t.Fatalf("round %d: joined the operation that had ended", i)
		}
		op = resp.Operation
	}
	d.cancel(op.Id)
	d.cancel(slow.Id)
	d.end(op.Id)
	d.end(slow.Id)
}

// chain makes a chain of depth directories named d below dir (reached by
// descriptors: it goes deeper than PATH_MAX), with a file "leaf" at each
// depth in leaves.
func chain(t *testing.T, dir string, depth int, leaves ...int) {
	t.Helper()
	must(t, os.MkdirAll(dir, 0o755))
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	leaf := map[int]bool{}
	for _, l := range leaves {
		leaf[l] = true
	}
	for i := 1; i <= depth; i++ {
		must(t, unix.Mkdirat(fd, "d", 0o755))
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		must(t, err)
		unix.Close(fd)
		fd = next
		if leaf[i] {
			f, err := unix.Openat(fd, "leaf", unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
			must(t, err)
			unix.Write(f, []byte(fmt.Sprintf("leaf at depth %d", i)))
			unix.Close(f)
		}
	}
	unix.Close(fd)
}

// chainDepth follows the chain of directories d below dir and returns its
// length and the depths at which a file "leaf" is.
func chainDepth(t *testing.T, dir string) (int, []int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	depth := 0
	var leaves []int
	for {
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return depth, leaves
		}
		unix.Close(fd)
		fd = next
		depth++
		var st unix.Stat_t
		if unix.Fstatat(fd, "leaf", &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			leaves = append(leaves, depth)
		}
	}
}

// TestAttackPathsAndShapes: requests naming the workspace root itself,
// unclean paths and paths through the tenant's links; includes with ..;
// a partial restore whose way runs through a link in the target; an
// exclude file that is a link out; a directory chain deeper than
// repo.MaxTreeDepth (kept down to the limit with a warning, restorable,
// without failing another backup running beside it); a target holding
// such a chain; and a directory of 30,000 entries.
func TestAttackPathsAndShapes(t *testing.T) {
	a := newArena(t, "--upload-limit", "1GiB")
	d := a.d
	ctx := context.Background()
	a.mirrorLayout("layout")
	a.secretFile("secret-top")
	a.workspace("w", false)
	must(t, os.Symlink(a.outside, a.in("w/lnk")))   // the tenant's link out
	must(t, os.Symlink(a.outside, a.in("toplink"))) // a "workspace" that is a link
	a.file("ign/keep", []byte("inside: ign/keep"))
	must(t, os.Symlink(a.out("secret-top"), a.in("ign/.backupdignore")))
	chain(t, a.in("deep"), repo.MaxTreeDepth+76, 1000, repo.MaxTreeDepth, repo.MaxTreeDepth+1)
	chain(t, a.in("deeptarget"), repo.MaxTreeDepth+76)
	a.file("deeptarget/a", []byte("inside: a of deeptarget"))
	const wide = 30_000 // several restore batches
	must(t, os.MkdirAll(a.in("wide/many"), 0o755))
	wfd, err := unix.Open(a.in("wide/many"), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	for i := range wide {
		must(t, unix.Mknodat(wfd, fmt.Sprintf("%05d", i), unix.S_IFREG|0o644, 0))
	}
	unix.Close(wfd)
	must(t, os.MkdirAll(a.in("part2"), 0o755))
	must(t, os.Symlink(a.out("layout/sub"), a.in("part2/sub")))
	must(t, os.MkdirAll(a.in("part3/a/deeper"), 0o755))
	must(t, os.Symlink(a.out("layout"), a.in("part3/a/lnk")))
	must(t, os.Symlink(a.out("layout/sub"), a.in("part3/a/deeper/lnk")))
	a.link("secret-top", a.in("part3/a/deeper/hard"))
	a.volatile("secret-top")
	a.seal()

	// The root itself, unclean paths, links on the way: refused, nothing
	// created.
	for _, p := range []string{a.root, a.root + "/", a.root + "/.", a.root + "/w/..", a.root + "/./w", "/", a.in("w/lnk"),
		a.in("w/lnk/layout"), a.in("toplink"), a.in("toplink/layout"), "workspaces/w", filepath.Dir(a.root)} {
		_, err := d.client.BackupWorkspace(ctx, backupReq("w", p))
		wantInvalid(t, "backup of "+p, err)
		_, err = d.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: p, Overwrite: true, Delete: true})
		wantInvalid(t, "restore --overwrite --delete into "+p, err)
	}
	for _, p := range []string{a.in("w/lnk/new"), a.in("w/lnk/new/deeper"), a.in("toplink/new")} {
		_, err := d.client.RestoreWorkspace(ctx, restoreReq("w", p))
		wantInvalid(t, "restore into "+p, err)
	}
	// Includes with ..: refused.
	snap := d.mustSucceed(backupReq("w", a.in("w")))
	if tree := a.snapshotTree(snap.Result.SnapshotId); tree["lnk"].Type != repo.TypeSymlink || tree["lnk"].Target != a.outside {
		t.Errorf("the tenant's link was not kept as a link: %+v", tree["lnk"])
	}
	for _, inc := range []string{"..", "../outside", "sub/../../outside", "/../outside", "lnk/.."} {
		_, err := d.client.RestoreWorkspace(ctx, &pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: a.in("inc"), Includes: []string{inc}})
		wantInvalid(t, "include "+inc, err)
	}
	// An include below the snapshot's link: the link is not a directory.
	if op := d.run(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: a.in("inc"), Includes: []string{"lnk/secret-top"}}); op.State != pb.OperationState_OPERATION_STATE_FAILED || !strings.Contains(op.ErrorMessage, "not a directory") {
		t.Errorf("include below the snapshot's link: %v %s", op.State, op.ErrorMessage)
	}
	// A partial restore whose way (sub) is a link out in the target.
	must(t, os.MkdirAll(a.in("part"), 0o755))
	must(t, os.Symlink(a.out("layout"), a.in("part/sub")))
	op := d.run(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: a.in("part"), Overwrite: true, Includes: []string{"sub/b"}})
	if op.State == pb.OperationState_OPERATION_STATE_SUCCEEDED {
		a.wantRestored(a.in("part/sub/b"), unix.S_IFREG, "inside: b of w")
	} else {
		t.Logf("partial restore through a link: %v %s (failing is allowed)", op.State, op.ErrorMessage)
	}
	// A whole restore over a target whose sub is a link out (--delete:
	// the link goes, nothing below it), and over one whose a, a file in
	// the snapshot, is a directory of links out and a hard link out.
	for _, tg := range []string{"part2", "part3"} {
		op := d.run(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: a.in(tg), Overwrite: true, Delete: true})
		if op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
			t.Errorf("restore --overwrite --delete into %s: %v %s", tg, op.State, op.ErrorMessage)
			continue
		}
		a.wantRestored(a.in(tg+"/a"), unix.S_IFREG, "inside: a of w")
		a.wantRestored(a.in(tg+"/sub/b"), unix.S_IFREG, "inside: b of w")
	}
	// An exclude file that is a link out.
	op = d.run(backupReq("ign", a.in("ign")))
	t.Logf("backup with .backupdignore a link out: %v %s", op.State, op.ErrorMessage)

	// The deep chain, with another backup beside it.
	deep := d.begin(backupReq("deep", a.in("deep")))
	other := d.begin(backupReq("w", a.in("w")))
	if op := d.end(other.Id); op.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Errorf("backup beside the deep one: %v %s", op.State, op.ErrorMessage)
	}
	deepOp := d.end(deep.Id)
	if deepOp.State != pb.OperationState_OPERATION_STATE_SUCCEEDED {
		t.Fatalf("backup of a %d-level chain: %v %s", repo.MaxTreeDepth+76, deepOp.State, deepOp.ErrorMessage)
	}
	if deepOp.Result.Skipped != 1 || !strings.Contains(d.log(), "nested deeper than 1024 levels") {
		t.Errorf("backup of the deep chain skipped %d entries, want 1 with a warning", deepOp.Result.Skipped)
	}
	restored := d.mustSucceed(restoreReq("deep", a.in("deep-restored")))
	if depth, leaves := chainDepth(t, a.in("deep-restored")); depth != repo.MaxTreeDepth || fmt.Sprint(leaves) != fmt.Sprint([]int{1000, repo.MaxTreeDepth}) {
		t.Errorf("restored chain: %d levels, leaves at %v; want %d, [1000 %d]", depth, leaves, repo.MaxTreeDepth, repo.MaxTreeDepth)
	}
	t.Logf("deep chain: backup %d dirs, %d skipped; restore %d dirs", deepOp.Result.Dirs, deepOp.Result.Skipped, restored.Result.Dirs)
	// A target holding a chain deeper than the limit, which the snapshot
	// lacks (--delete) and which is in the way of nothing.
	op = d.run(&pb.RestoreWorkspaceRequest{Owner: "o", Workspace: "w", Path: a.in("deeptarget"), Overwrite: true, Delete: true})
	t.Logf("restore --overwrite --delete over a %d-level chain: %v %s", repo.MaxTreeDepth+76, op.State, op.ErrorMessage)

	// 30,000 entries in one directory.
	wideOp := d.mustSucceed(backupReq("wide", a.in("wide")))
	wideRestored := d.mustSucceed(restoreReq("wide", a.in("wide-restored")))
	if n, _ := os.ReadDir(a.in("wide-restored/many")); len(n) != wide || wideOp.Result.Files != wide || wideRestored.Result.Files != wide {
		t.Errorf("wide directory: backed up %d files, restored %d, %d on disk; want %d", wideOp.Result.Files, wideRestored.Result.Files, len(n), wide)
	}
	a.check()
}
