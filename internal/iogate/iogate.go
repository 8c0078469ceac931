// Package iogate holds a background job's writes back while others use
// the block device they go to: the idle I/O class, in user space, for the
// I/O schedulers that ignore I/O priorities (none, kyber and, for most
// requests, mq-deadline; only bfq honours IOPRIO_CLASS_IDLE).
//
// A Gate samples, every Tick, the bytes the devices behind its paths
// transferred (/sys/dev/block/MAJ:MIN/stat, sectors read and written)
// and the bytes this process made them transfer (/proc/self/io:
// read_bytes, write_bytes less cancelled_write_bytes). What the devices
// did beyond this process's share is others' I/O; a tick with more of it
// than Threshold is busy. Wait returns at once when the last Quiet ticks
// were all quiet, and else waits until they are, at most MaxWait: a job on
// a device that never goes quiet still makes progress, one Wait per
// MaxWait. Quiet spans several ticks because the job's own I/O, while the
// device does it, slows others' down: the tick of the job's write may look
// quiet for that alone.
//
// The process's share is counted when it is caused (a page dirtied, a
// read submitted) and the device's when it is done, later (writeback, an
// fsync): what the process caused beyond what the devices did is carried
// to the next ticks as credit, which fades slowly, so that its own writes
// reaching the device late are not taken for others'. I/O of
// this process on other devices lowers the estimate of others' I/O on
// these (a Gate errs towards letting the job run). So does I/O of the
// process's other work: in the daemon, another operation's writes are
// not others' I/O.
//
// A file system on no block device (tmpfs, an overlay or a btrfs
// subvolume, whose devices are anonymous; NFS) gives no device, nor does
// object storage; a Gate without one never waits.
package iogate

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure a Gate; zero fields take the defaults.
type Options struct {
	// Tick is the sampling period (default 50 ms).
	Tick time.Duration
	// Threshold is the bytes of others' I/O in one tick that make it
	// busy (default 256 KiB: 5 MB/s over 50 ms).
	Threshold int64
	// MaxWait is the longest one Wait holds back (default 1 s).
	MaxWait time.Duration
	// Quiet is how many quiet ticks in a row let a Wait through
	// (default 4: 200 ms at the default Tick).
	Quiet int
}

func (o *Options) defaults() {
	if o.Tick <= 0 {
		o.Tick = 50 * time.Millisecond
	}
	if o.Threshold <= 0 {
		o.Threshold = 256 << 10
	}
	if o.MaxWait <= 0 {
		o.MaxWait = time.Second
	}
	if o.Quiet <= 0 {
		o.Quiet = 4
	}
}

// maxCredit bounds the credit; it fades by a quarter of Threshold a
// tick, so that what the process caused and the devices never did (a
// page dirtied and dirtied again) stops hiding others' I/O after a while,
// while a write the devices take a few ticks to do is not taken for
// others' (the fading over those ticks stays under Threshold).
const maxCredit = 64 << 20

// counters is one sample: bytes the devices transferred, and bytes this
// process made storage transfer.
type counters struct{ device, own int64 }

// Gate is safe for concurrent use. A nil *Gate never waits.
type Gate struct {
	opts    Options
	devices []string // the devices' stat files
	read    func() (counters, error)

	mu     sync.Mutex
	quiet  int           // quiet ticks in a row, up to opts.Quiet
	tick   chan struct{} // closed at the next tick
	held   time.Duration // Wait's time spent waiting, in all
	waits  int64         // Waits that waited
	busy   int64         // busy ticks
	closed bool

	stop chan struct{}
	done chan struct{}
}

// New returns a Gate for the block devices devs (st_dev numbers, as
// DeviceOf and DeviceOfFd return them; duplicates and devices with no
// stat file are passed over); with none left, a Gate that never waits.
// Close it when the job ends.
func New(devs []uint64, o Options) *Gate {
	seen := map[string]bool{}
	var devices []string
	for _, dev := range devs {
		if f, ok := deviceStat(dev); ok && !seen[f] {
			seen[f] = true
			devices = append(devices, f)
		}
	}
	return newGate(devices, o, func() (counters, error) { return sample(devices) })
}

// DeviceOf returns the device path is on (of the nearest ancestor that
// exists: a repository not made yet is made there).
func DeviceOf(path string) (uint64, bool) {
	for {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err == nil {
			return st.Dev, true
		}
		parent := filepath.Dir(path)
		if parent == path {
			return 0, false
		}
		path = parent
	}
}

// DeviceOfFd returns the device an open file or directory is on.
func DeviceOfFd(fd int) (uint64, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, false
	}
	return st.Dev, true
}

// newGate starts a Gate's sampling with read (tests give their own).
func newGate(devices []string, o Options, read func() (counters, error)) *Gate {
	o.defaults()
	g := &Gate{opts: o, devices: devices, read: read, quiet: o.Quiet, tick: make(chan struct{})}
	if len(devices) == 0 {
		return g
	}
	g.stop, g.done = make(chan struct{}), make(chan struct{})
	prev, err := read()
	go g.sampling(prev, err == nil)
	return g
}

// Devices returns the stat files of the devices the Gate watches.
func (g *Gate) Devices() []string {
	if g == nil {
		return nil
	}
	return g.devices
}

// sampling judges every tick until Close.
func (g *Gate) sampling(prev counters, ok bool) {
	defer close(g.done)
	t := time.NewTicker(g.opts.Tick)
	defer t.Stop()
	var credit int64 // bytes the process caused that the devices have not shown yet
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
		c, err := g.read()
		quiet := true // unreadable counters: let the job run
		if err == nil && ok {
			d := (c.device - prev.device) - (c.own - prev.own) - credit
			credit = 0
			if d < 0 {
				credit = min(-d, maxCredit) - g.opts.Threshold/4
				credit = max(credit, 0)
			} else {
				quiet = d <= g.opts.Threshold
			}
		}
		prev, ok = c, err == nil
		g.mu.Lock()
		if quiet {
			g.quiet = min(g.quiet+1, g.opts.Quiet)
		} else {
			g.quiet = 0
			g.busy++
		}
		close(g.tick)
		g.tick = make(chan struct{})
		g.mu.Unlock()
	}
}

// Wait returns once the devices' last Quiet ticks were quiet, or after MaxWait;
// only the context's end makes it fail.
func (g *Gate) Wait(ctx context.Context) error {
	if g == nil || len(g.devices) == 0 {
		return ctx.Err()
	}
	wait, tick := g.state()
	if !wait {
		return ctx.Err()
	}
	defer g.account(time.Now())
	t := time.NewTimer(g.opts.MaxWait)
	defer t.Stop()
	for wait {
		select {
		case <-tick:
		case <-t.C:
			return ctx.Err()
		case <-ctx.Done():
			return ctx.Err()
		}
		wait, tick = g.state()
	}
	return ctx.Err()
}

// state says whether a Wait must wait (the last Quiet ticks were not all
// quiet, and the Gate is not closed), and returns the next tick's channel.
func (g *Gate) state() (wait bool, tick chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.quiet < g.opts.Quiet && !g.closed, g.tick
}

func (g *Gate) account(start time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.held += time.Since(start)
	g.waits++
}

// Stats says how long Waits were held back in all, how many of them
// were, and how many ticks were busy.
func (g *Gate) Stats() (held time.Duration, waits, busyTicks int64) {
	if g == nil {
		return 0, 0, 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held, g.waits, g.busy
}

// Close stops the sampling; Waits after it do not wait.
func (g *Gate) Close() {
	if g == nil {
		return
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	close(g.tick)
	g.tick = make(chan struct{})
	g.mu.Unlock()
	if g.stop != nil {
		close(g.stop)
		<-g.done
	}
}

// deviceStat returns the stat file of block device dev.
func deviceStat(dev uint64) (string, bool) {
	major, minor := unix.Major(dev), unix.Minor(dev)
	if major == 0 { // anonymous: tmpfs, overlay, btrfs subvolumes, NFS...
		return "", false
	}
	f := fmt.Sprintf("/sys/dev/block/%d:%d/stat", major, minor)
	if _, err := os.Stat(f); err != nil {
		return "", false
	}
	return f, true
}

// sample reads the devices' and the process's counters.
func sample(devices []string) (counters, error) {
	var c counters
	for _, f := range devices {
		b, err := os.ReadFile(f)
		if err != nil {
			return c, err
		}
		n, err := parseDeviceStat(b)
		if err != nil {
			return c, fmt.Errorf("%s: %w", f, err)
		}
		c.device += n
	}
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return c, err
	}
	c.own, err = parseProcIO(b)
	return c, err
}

// parseDeviceStat returns the bytes read and written of a block device's
// stat file (Documentation/block/stat.rst: fields 3 and 7 are sectors of
// 512 bytes, whatever the device's own sector size).
func parseDeviceStat(b []byte) (int64, error) {
	f := bytes.Fields(b)
	if len(f) < 7 {
		return 0, fmt.Errorf("%d fields, want at least 7", len(f))
	}
	r, err1 := strconv.ParseInt(string(f[2]), 10, 64)
	w, err2 := strconv.ParseInt(string(f[6]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("sector counts %q, %q", f[2], f[6])
	}
	return (r + w) * 512, nil
}

// parseProcIO returns read_bytes + write_bytes - cancelled_write_bytes of
// a /proc/PID/io.
func parseProcIO(b []byte) (int64, error) {
	var n int64
	found := 0
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		sign := int64(1)
		switch string(k) {
		case "read_bytes", "write_bytes":
		case "cancelled_write_bytes":
			sign = -1
		default:
			continue
		}
		x, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/self/io: %s: %w", k, err)
		}
		n += sign * x
		found++
	}
	if found != 3 {
		return 0, fmt.Errorf("/proc/self/io: %d of read_bytes, write_bytes, cancelled_write_bytes", found)
	}
	return n, nil
}
