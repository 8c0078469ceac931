package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	bsync "github.com/backupd/backupd/pkg/sync"
)

// progressBar redraws one status line on w while an operation runs.
type progressBar struct {
	w     io.Writer
	p     *bsync.Progress
	verb  string
	stop  chan struct{}
	done  chan struct{}
	start time.Time
}

// startProgress shows a bar on w when enabled; the returned func stops it.
func startProgress(enabled bool, w io.Writer, verb string, p *bsync.Progress) func() {
	if !enabled {
		return func() {}
	}
	b := &progressBar{w: w, p: p, verb: verb, stop: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	go b.run()
	return func() {
		close(b.stop)
		<-b.done
	}
}

func (b *progressBar) run() {
	defer close(b.done)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			fmt.Fprint(b.w, "\r\x1b[K")
			return
		case <-t.C:
			fmt.Fprint(b.w, "\r"+b.line()+"\x1b[K")
		}
	}
}

func (b *progressBar) line() string {
	el := time.Since(b.start)
	files, bytes := b.p.Files.Load(), b.p.Bytes.Load()
	rate := float64(bytes) / el.Seconds()
	s := fmt.Sprintf("%s %s  %d files  %s  %s/s", b.verb, fmtDuration(el), files, fmtBytes(bytes), fmtBytes(int64(rate)))
	if total := b.p.TotalBytes.Load(); total > 0 {
		frac := min(float64(bytes)/float64(total), 1)
		const width = 24
		n := int(frac * width)
		s += fmt.Sprintf("  [%s%s] %3.0f%%", strings.Repeat("=", n), strings.Repeat(" ", width-n), frac*100)
		if rate > 0 && bytes < total {
			s += "  ETA " + fmtDuration(time.Duration(float64(total-bytes)/rate*float64(time.Second)))
		}
	}
	return s
}

func fmtDuration(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// newWarner returns a function that prints one warning per line on stderr,
// first clearing the progress bar's line when one is shown. It is safe for
// concurrent use.
func newWarner(bar bool) func(path string, err error) {
	clearLine := ""
	if bar {
		clearLine = "\r\x1b[K"
	}
	var mu sync.Mutex
	return func(path string, err error) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(os.Stderr, "%swarning: %s: %v\n", clearLine, path, err)
	}
}
