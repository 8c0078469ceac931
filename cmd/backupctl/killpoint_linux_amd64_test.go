package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kill points that are states, not guesses at timing. A backupctl child
// runs under a seccomp filter that holds each of its file creations
// (openat with O_CREAT) and renames until the test has looked at it: the
// test either lets the call through, or kills the child with SIGKILL
// while the call waits, so that the call never happens. "Killed before
// renaming its third pack into place" is then exactly that, however
// loaded the machine; no sleep decides it.
//
// The filter is installed by this test binary itself, re-executed as a
// wrapper (see init): it sets no_new_privs, installs the filter with a
// listener, hands the listener to the test over a socket and execs
// backupctl. The filter is kept across exec, and the test reads the
// paths a held call names from /proc/PID/mem.

const killWrapperEnv = "BACKUPCTL_TEST_KILLPOINT_WRAPPER"

func init() {
	if os.Getenv(killWrapperEnv) != "1" {
		return
	}
	err := wrapAndExec()
	fmt.Fprintf(os.Stderr, "killpoint wrapper: %v\n", err)
	os.Exit(127)
}

// seccomp_data, seccomp_notif and seccomp_notif_resp of linux/seccomp.h.
type seccompData struct {
	Nr   int32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

type seccompNotif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Data  seccompData
}

type seccompNotifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

// heldCalls is the filter: openat with O_CREAT and the renames go to the
// listener, everything else is allowed.
func heldCalls() []unix.SockFilter {
	stmt := func(code uint16, k uint32) unix.SockFilter { return unix.SockFilter{Code: code, K: k} }
	jump := func(code uint16, k uint32, jt, jf uint8) unix.SockFilter {
		return unix.SockFilter{Code: code, Jt: jt, Jf: jf, K: k}
	}
	const (
		ld   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq  = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		jset = unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K
		ret  = unix.BPF_RET | unix.BPF_K
	)
	nrOff := uint32(unsafe.Offsetof(seccompData{}.Nr))
	archOff := uint32(unsafe.Offsetof(seccompData{}.Arch))
	arg2Low := uint32(unsafe.Offsetof(seccompData{}.Args)) + 2*8 // little endian: the low half first
	return []unix.SockFilter{
		/* 0 */ stmt(ld, archOff),
		/* 1 */ jump(jeq, unix.AUDIT_ARCH_X86_64, 0, 8), // else 10: allow
		/* 2 */ stmt(ld, nrOff),
		/* 3 */ jump(jeq, unix.SYS_OPENAT, 3, 0), // 7
		/* 4 */ jump(jeq, unix.SYS_RENAMEAT, 4, 0), // 9
		/* 5 */ jump(jeq, unix.SYS_RENAMEAT2, 3, 0), // 9
		/* 6 */ jump(jeq, unix.SYS_RENAME, 2, 3), // 9, else 10
		/* 7 */ stmt(ld, arg2Low),
		/* 8 */ jump(jset, unix.O_CREAT, 0, 1), // 9, else 10
		/* 9 */ stmt(ret, unix.SECCOMP_RET_USER_NOTIF),
		/* 10 */ stmt(ret, unix.SECCOMP_RET_ALLOW),
	}
}

// wrapAndExec runs in the re-executed test binary: os.Args[1:] is the
// command to exec under the filter, fd 3 the socket to the test.
func wrapAndExec() error {
	runtime.LockOSThread() // the filter is the thread's, and so is the exec
	if len(os.Args) < 2 {
		return errors.New("no command")
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	filter := heldCalls()
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	var fd uintptr
	var errno syscall.Errno
	// Once the test has received a held call, only SIGKILL interrupts
	// the wait (a signal to the Go runtime would otherwise make the call
	// come again): kernels before 5.19 lack the flag, and the test then
	// recognises a call that comes again.
	for _, flags := range []uintptr{unix.SECCOMP_FILTER_FLAG_NEW_LISTENER | unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, unix.SECCOMP_FILTER_FLAG_NEW_LISTENER} {
		fd, _, errno = unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&prog)))
		if errno != unix.EINVAL {
			break
		}
	}
	if errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	if err := unix.Sendmsg(3, []byte{0}, unix.UnixRights(int(fd)), nil, 0); err != nil {
		return fmt.Errorf("send listener: %w", err)
	}
	unix.Close(int(fd))
	unix.Close(3)
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, killWrapperEnv+"=") {
			env = append(env, e)
		}
	}
	return unix.Exec(os.Args[1], os.Args[1:], env)
}

// fsCall is a held call: a file about to be created, or a rename.
type fsCall struct {
	Create bool   // else a rename
	Path   string // the file to create, or the rename's target
	From   string // the rename's source
}

func (c fsCall) String() string {
	if c.Create {
		return "create " + c.Path
	}
	return "rename " + c.From + " -> " + c.Path
}

// heldChild is a child process (backupctl, backupd) whose creations and
// renames wait for decide.
type heldChild struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr watchedBuffer
	start  time.Time
	exited chan struct{} // closed once the child is reaped

	mu       sync.Mutex
	decide   func(*heldChild, fsCall) (kill bool, why string)
	killed   bool
	killWhy  string
	killTime time.Duration
	err      error // of the supervisor

	mem   *os.File
	retry map[uint32]seccompData // per thread: a call let through whose wait was interrupted
	stop  [2]int                 // pipe: ends serve
	done  chan struct{}
}

// startHeld starts backupctl with args, every creation and rename of it
// held until decide lets it through or kills the child. decide is called
// for one call at a time, in the order the child makes them, with the
// child's lock held: it may call KillAfter, not Kill.
func startHeld(t *testing.T, env []string, decide func(*heldChild, fsCall) (bool, string), args ...string) *heldChild {
	t.Helper()
	return startHeldProgram(t, binary, env, decide, args...)
}

// startHeldProgram is startHeld for any program.
func startHeldProgram(t *testing.T, program string, env []string, decide func(*heldChild, fsCall) (bool, string), args ...string) *heldChild {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	childEnd := os.NewFile(uintptr(sp[1]), "killpoint-socket")
	h := &heldChild{decide: decide, retry: map[uint32]seccompData{}, done: make(chan struct{}), exited: make(chan struct{})}
	h.cmd = exec.Command(self, append([]string{program}, args...)...)
	h.cmd.Env = append(append(os.Environ(), "XDG_CACHE_HOME="+childCache, killWrapperEnv+"=1"), env...)
	h.cmd.Stdout, h.cmd.Stderr = &h.stdout, &h.stderr
	h.cmd.ExtraFiles = []*os.File{childEnd}
	h.start = time.Now()
	err = h.cmd.Start()
	childEnd.Close()
	if err != nil {
		unix.Close(sp[0])
		t.Fatal(err)
	}
	listener, err := recvFD(sp[0])
	unix.Close(sp[0])
	if err != nil {
		h.cmd.Process.Kill()
		h.cmd.Wait()
		close(h.exited)
		t.Fatalf("no seccomp listener from the wrapper: %v; stderr: %s", err, h.stderr.String())
	}
	if err := unix.Pipe2(h.stop[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	go h.serve(listener)
	go func() { h.cmd.Wait(); close(h.exited) }()
	return h
}

func recvFD(sock int) (int, error) {
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return -1, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return -1, fmt.Errorf("control message: %v (%d)", err, len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return -1, fmt.Errorf("rights: %v", err)
	}
	return fds[0], nil
}

// Since is the time since the child started.
func (h *heldChild) Since() time.Duration { return time.Since(h.start) }

// Kill kills the child with SIGKILL unless it is killed already; why says
// where, for the log.
func (h *heldChild) Kill(why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.killLocked(why)
}

func (h *heldChild) killLocked(why string) {
	if h.killed {
		return
	}
	h.killed, h.killWhy, h.killTime = true, why, time.Since(h.start)
	h.cmd.Process.Signal(syscall.SIGKILL)
}

// KillAfter kills the child d after its start, unless it is killed
// before; the returned func cancels that.
func (h *heldChild) KillAfter(d time.Duration, why string) func() {
	tm := time.AfterFunc(time.Until(h.start.Add(d)), func() { h.Kill(why) })
	return func() { tm.Stop() }
}

// Wait waits for the child and the supervisor; it returns the child's
// wait status, whether this test killed it, and where.
func (h *heldChild) Wait(t *testing.T) (ws syscall.WaitStatus, killed bool, why string, at time.Duration) {
	t.Helper()
	<-h.exited
	unix.Write(h.stop[1], []byte{0})
	<-h.done
	unix.Close(h.stop[0])
	unix.Close(h.stop[1])
	if h.mem != nil {
		h.mem.Close()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		t.Fatalf("supervising backupctl: %v", h.err)
	}
	return h.cmd.ProcessState.Sys().(syscall.WaitStatus), h.killed, h.killWhy, h.killTime
}

// serve answers the held calls until Wait stops it.
func (h *heldChild) serve(listener int) {
	defer close(h.done)
	defer unix.Close(listener)
	fail := func(err error) {
		h.mu.Lock()
		if h.err == nil {
			h.err = err
		}
		h.killLocked("supervisor failed: " + err.Error())
		h.mu.Unlock()
	}
	for {
		fds := []unix.PollFd{{Fd: int32(listener), Events: unix.POLLIN}, {Fd: int32(h.stop[0]), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			fail(fmt.Errorf("poll: %w", err))
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		if fds[0].Revents&unix.POLLIN == 0 {
			if fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0 {
				<-h.stopped() // the child is gone: wait for Wait
				return
			}
			continue
		}
		var n seccompNotif
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(listener), unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&n))); e != 0 {
			if e == unix.EINTR || e == unix.ENOENT {
				continue // interrupted, or the call went away (killed)
			}
			fail(fmt.Errorf("receive a held call: %w", e))
			return
		}
		h.answer(listener, &n, fail)
	}
}

// stopped returns a channel closed once Wait has asked serve to stop.
func (h *heldChild) stopped() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		fds := []unix.PollFd{{Fd: int32(h.stop[0]), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); !errors.Is(err, unix.EINTR) {
				break
			}
		}
		close(ch)
	}()
	return ch
}

func (h *heldChild) answer(listener int, n *seccompNotif, fail func(error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.killed {
		return // dying: the call never completes
	}
	prev, again := h.retry[n.Pid]
	delete(h.retry, n.Pid)
	if !again || prev != n.Data {
		call, err := h.readCall(n)
		if err != nil {
			if !h.idValid(listener, n.ID) {
				return // the call went away meanwhile
			}
			h.err = err
			h.killLocked("supervisor failed: " + err.Error())
			return
		}
		if kill, why := h.decide(h, call); kill {
			h.killLocked(why)
			return
		}
	}
	resp := seccompNotifResp{ID: n.ID, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(listener), unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&resp))); e != 0 {
		if e == unix.ENOENT {
			// A signal ended the wait before the answer: the same call
			// comes again, already decided.
			h.retry[n.Pid] = n.Data
			return
		}
		h.err = fmt.Errorf("answer a held call: %w", e)
		h.killLocked("supervisor failed")
	}
}

func (h *heldChild) idValid(listener int, id uint64) bool {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(listener), unix.SECCOMP_IOCTL_NOTIF_ID_VALID, uintptr(unsafe.Pointer(&id)))
	return e == 0
}

// readCall reads the paths a held call names from the child's memory.
func (h *heldChild) readCall(n *seccompNotif) (fsCall, error) {
	if h.mem == nil {
		// Opened at the first held call, which comes after the exec: the
		// wrapper's memory is not backupctl's.
		f, err := os.Open(fmt.Sprintf("/proc/%d/mem", h.cmd.Process.Pid))
		if err != nil {
			return fsCall{}, err
		}
		h.mem = f
	}
	a := n.Data.Args
	path := func(dirfd int32, addr uint64) (string, error) {
		p, err := h.readString(addr)
		if err != nil || filepath.IsAbs(p) {
			return p, err
		}
		dir := fmt.Sprintf("/proc/%d/cwd", n.Pid)
		if dirfd != unix.AT_FDCWD {
			dir = fmt.Sprintf("/proc/%d/fd/%d", n.Pid, dirfd)
		}
		d, err := os.Readlink(dir)
		if err != nil {
			return "", err
		}
		return filepath.Join(d, p), nil
	}
	var c fsCall
	var err error
	switch n.Data.Nr {
	case unix.SYS_OPENAT:
		c.Create = true
		c.Path, err = path(int32(a[0]), a[1])
	case unix.SYS_RENAMEAT, unix.SYS_RENAMEAT2:
		if c.From, err = path(int32(a[0]), a[1]); err == nil {
			c.Path, err = path(int32(a[2]), a[3])
		}
	case unix.SYS_RENAME:
		if c.From, err = path(unix.AT_FDCWD, a[0]); err == nil {
			c.Path, err = path(unix.AT_FDCWD, a[1])
		}
	default:
		err = fmt.Errorf("unexpected system call %d held", n.Data.Nr)
	}
	return c, err
}

// readString reads a NUL-terminated string at addr in the child.
func (h *heldChild) readString(addr uint64) (string, error) {
	var s []byte
	for len(s) <= unix.PathMax {
		page := make([]byte, 4096-addr%4096)
		n, err := h.mem.ReadAt(page, int64(addr))
		if i := bytes.IndexByte(page[:n], 0); i >= 0 {
			return string(append(s, page[:i]...)), nil
		}
		if err != nil {
			return "", fmt.Errorf("read the child's memory: %w", err)
		}
		s = append(s, page[:n]...)
		addr += uint64(n)
	}
	return "", errors.New("path longer than PATH_MAX")
}

// watchedBuffer is a child's output, which a test can wait to contain a
// string.
type watchedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	waiters []outputWaiter
}

type outputWaiter struct {
	s  []byte
	ch chan struct{}
}

func (w *watchedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	waiting := w.waiters[:0]
	for _, o := range w.waiters {
		if bytes.Contains(w.buf.Bytes(), o.s) {
			close(o.ch)
		} else {
			waiting = append(waiting, o)
		}
	}
	w.waiters = waiting
	return len(p), nil
}

func (w *watchedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// Contains returns a channel closed once the output contains s.
func (w *watchedBuffer) Contains(s string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan struct{})
	if bytes.Contains(w.buf.Bytes(), []byte(s)) {
		close(ch)
		return ch
	}
	w.waiters = append(w.waiters, outputWaiter{[]byte(s), ch})
	return ch
}
