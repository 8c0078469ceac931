package iogate

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// stepped is a Gate whose ticks the test makes: every sample is one the
// test sends, and each send returns once the tick is judged.
type stepped struct {
	t       *testing.T
	g       *Gate
	samples chan counters // closed: reads return zero counters
	once    sync.Once
	now     counters
}

func newStepped(t *testing.T, o Options) *stepped {
	s := &stepped{t: t, samples: make(chan counters)}
	o.Tick = time.Millisecond // the ticker only lets the sampler ask for the test's next sample
	first := true
	s.g = newGate([]string{"test"}, o, func() (counters, error) {
		if first { // newGate's own first sample
			first = false
			return counters{}, nil
		}
		return <-s.samples, nil
	})
	t.Cleanup(s.close)
	return s
}

// close closes the Gate, its sampler let out of a read first.
func (s *stepped) close() {
	s.once.Do(func() { close(s.samples) })
	s.g.Close()
}

// tick makes one tick in which the devices did device bytes and the
// process own, and waits for its verdict.
func (s *stepped) tick(device, own int64) {
	s.t.Helper()
	s.g.mu.Lock()
	judged := s.g.tick
	s.g.mu.Unlock()
	s.now.device += device
	s.now.own += own
	s.samples <- s.now
	<-judged
}

// quiet reports whether the last tick was quiet.
func (s *stepped) quiet() bool {
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	return s.g.quiet > 0
}

// waitAsync starts a Wait and returns its result's channel.
func (s *stepped) waitAsync(ctx context.Context) chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.g.Wait(ctx) }()
	return ch
}

func TestGateHoldsBackWhileOthersDoIO(t *testing.T) {
	s := newStepped(t, Options{Threshold: 1 << 20, MaxWait: time.Hour, Quiet: 2})
	ctx := context.Background()
	if err := s.g.Wait(ctx); err != nil {
		t.Fatalf("Wait before any tick: %v", err)
	}
	s.tick(512<<10, 0) // others: 512 KiB, under the threshold
	if !s.quiet() {
		t.Fatal("512 KiB of others' I/O in a tick of a 1 MiB threshold: busy")
	}
	s.tick(8<<20, 0) // others: 8 MiB
	if s.quiet() {
		t.Fatal("8 MiB of others' I/O: quiet")
	}
	done := s.waitAsync(ctx)
	s.tick(8<<20, 0)
	s.tick(16<<20, 8<<20) // the process's 8 MiB do not count
	select {
	case err := <-done:
		t.Fatalf("Wait returned during busy ticks: %v", err)
	default:
	}
	s.tick(8<<20, 8<<20) // all the process's: one quiet tick
	select {
	case err := <-done:
		t.Fatalf("Wait returned after one quiet tick of two: %v", err)
	default:
	}
	s.tick(0, 0)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if held, waits, busy := s.g.Stats(); waits != 1 || held <= 0 || busy != 3 {
		t.Errorf("stats: held %v, %d waits, %d busy ticks; want one wait held, 3 busy ticks", held, waits, busy)
	}
}

func TestGateTakesOwnLateWritesForOwn(t *testing.T) {
	s := newStepped(t, Options{Threshold: 1 << 20, MaxWait: time.Hour})
	// The process dirties 64 MiB; the device writes them over the next
	// ticks (writeback, an fsync).
	s.tick(0, 64<<20)
	for i := 0; i < 4; i++ {
		s.tick(16<<20, 0)
		if !s.quiet() {
			t.Fatalf("tick %d: the process's own writes reaching the device taken for others'", i)
		}
	}
	// The credit is spent: others' I/O counts again.
	s.tick(4<<20, 0)
	if s.quiet() {
		t.Fatal("4 MiB of others' I/O after the process's writes were done: quiet")
	}
}

func TestGateCreditFades(t *testing.T) {
	s := newStepped(t, Options{Threshold: 1 << 20, MaxWait: time.Hour})
	s.tick(0, 64<<20) // caused, never shown (overwritten in the page cache, say)
	s.tick(4<<20, 0)
	if !s.quiet() {
		t.Fatal("4 MiB of others' I/O under 64 MiB of credit: busy")
	}
	// A quarter of the threshold a tick: 60 MiB of credit are gone after
	// 240 ticks.
	for i := 0; i < 240; i++ {
		s.tick(0, 0)
	}
	s.tick(4<<20, 0)
	if s.quiet() {
		t.Fatal("4 MiB of others' I/O 240 ticks after the process caused 64 MiB it never did: quiet")
	}
}

func TestGateWaitEnds(t *testing.T) {
	t.Run("MaxWait", func(t *testing.T) {
		s := newStepped(t, Options{Threshold: 1 << 20, MaxWait: 30 * time.Millisecond})
		s.tick(8<<20, 0)
		start := time.Now()
		if err := s.g.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 30*time.Millisecond {
			t.Errorf("Wait on a busy device returned after %v, before MaxWait", d)
		}
	})
	t.Run("context", func(t *testing.T) {
		s := newStepped(t, Options{Threshold: 1 << 20, MaxWait: time.Hour})
		s.tick(8<<20, 0)
		ctx, cancel := context.WithCancel(context.Background())
		done := s.waitAsync(ctx)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait after its context ended: %v", err)
		}
	})
	t.Run("Close", func(t *testing.T) {
		s := newStepped(t, Options{Threshold: 1 << 20, MaxWait: time.Hour})
		s.tick(8<<20, 0)
		done := s.waitAsync(context.Background())
		s.close()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if err := s.g.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestNoDeviceNeverWaits(t *testing.T) {
	var nilGate *Gate
	if err := nilGate.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	nilGate.Close()
	dev, ok := DeviceOf("/proc")
	if !ok {
		t.Fatal("no device for /proc")
	}
	g := New([]uint64{dev}, Options{})
	defer g.Close()
	if len(g.Devices()) != 0 {
		t.Fatalf("devices of /proc: %v", g.Devices())
	}
	if err := g.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	n, err := parseDeviceStat([]byte("    1589416   193845 38254130  5777014   936925  1917995 125526944   935557        0   599904  6963301\n"))
	if err != nil || n != (38254130+125526944)*512 {
		t.Errorf("parseDeviceStat: %d, %v", n, err)
	}
	if _, err := parseDeviceStat([]byte("1 2 3")); err == nil {
		t.Error("parseDeviceStat of 3 fields: no error")
	}
	n, err = parseProcIO([]byte("rchar: 6976\nwchar: 0\nsyscr: 10\nsyscw: 0\nread_bytes: 4096\nwrite_bytes: 10000\ncancelled_write_bytes: 1000\n"))
	if err != nil || n != 4096+10000-1000 {
		t.Errorf("parseProcIO: %d, %v", n, err)
	}
	if _, err := parseProcIO([]byte("rchar: 6976\nread_bytes: 4096\n")); err == nil {
		t.Error("parseProcIO without write_bytes: no error")
	}
}

// TestRealDevice runs a Gate on the block device of the package's own
// directory (the checkout, on a disk: CI's and this machine's are): the
// process's own fsynced writes show in its counters as in the device's,
// and another process's writes make a tick busy.
func TestRealDevice(t *testing.T) {
	dir, err := os.MkdirTemp(".", "iogate-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	dev, ok := DeviceOf(filepath.Join(dir, "not", "made", "yet"))
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	devFd, okFd := DeviceOfFd(int(d.Fd()))
	d.Close()
	if !ok || !okFd || dev != devFd {
		t.Fatalf("DeviceOf %d, %v; DeviceOfFd %d, %v", dev, ok, devFd, okFd)
	}
	g := New([]uint64{dev, devFd}, Options{MaxWait: time.Hour})
	defer g.Close()
	if len(g.Devices()) != 1 {
		t.Fatalf("the checkout %s is on no block device with a stat file: devices %v (this test needs one)", dir, g.Devices())
	}
	t.Logf("device: %s", g.Devices()[0])

	// Own writes: 64 MiB, each 4 MiB fsynced.
	before, err := sample(g.Devices())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	f, err := os.Create(filepath.Join(dir, "own"))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 16; i++ {
		if _, err := f.Write(buf); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	after, err := sample(g.Devices())
	if err != nil {
		t.Fatal(err)
	}
	if own, dev := after.own-before.own, after.device-before.device; own < 64<<20 || dev < 64<<20 {
		t.Fatalf("64 MiB written and fsynced: the process's counter grew by %d, the device's by %d", own, dev)
	}

	// Another process's writes: dd, each 4 MiB synced.
	_, _, busyBefore := g.Stats()
	cmd := exec.Command("dd", "if=/dev/zero", "of="+filepath.Join(dir, "other"), "bs=4M", "count=64", "oflag=dsync", "status=none")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ddDone := make(chan error, 1)
	go func() { ddDone <- cmd.Wait() }()
	sawBusy := false
	for !sawBusy && len(ddDone) == 0 {
		g.mu.Lock()
		ch := g.tick
		g.mu.Unlock()
		<-ch
		_, _, busy := g.Stats()
		sawBusy = busy > busyBefore
	}
	if sawBusy {
		cmd.Process.Kill() // enough seen
		<-ddDone
	} else if err := <-ddDone; err != nil {
		t.Fatalf("dd: %v", err)
	}
	if !sawBusy {
		t.Error("256 MiB written by another process: no busy tick")
	}
}
