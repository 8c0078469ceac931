package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// tbfArgs is the tc command that shapes loopback's egress to rate bytes
// per second: a token bucket with a burst of 2 MB (a few of loopback's
// 64 KiB packets; tbf needs at least one packet's worth, and more at a
// high rate to keep up with the kernel's timer) and at most 100 ms of
// queue. Every packet on lo leaves through it, so each direction of
// every connection to MinIO shares the one rate.
func tbfArgs(rate int64) []string {
	return []string{"tc", "qdisc", "add", "dev", "lo", "root", "tbf",
		"rate", strconv.FormatInt(rate*8, 10) + "bit", "burst", "2000000", "latency", "100ms"}
}

// shapeLoopback puts tbfArgs(rate) on lo and returns what takes it off,
// which an interrupt (SIGINT, SIGTERM) runs too before the harness exits:
// a shaped lo would outlive it and slow the whole machine. It refuses to
// replace a qdisc already there (tc's "File exists"): that is someone
// else's.
func shapeLoopback(rate int64) (undo func(), err error) {
	args := tbfArgs(rate)
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("--net-shape: %s: %v: %s (it needs root, tc from iproute2, and no qdisc of another's on lo)",
			strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	var once sync.Once
	del := func() {
		once.Do(func() {
			if out, err := exec.Command("tc", "qdisc", "del", "dev", "lo", "root").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "harness: taking --net-shape's qdisc off lo: %v: %s (remove it with: tc qdisc del dev lo root)\n", err, strings.TrimSpace(string(out)))
			}
		})
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			del()
			fmt.Fprintf(os.Stderr, "harness: %v: took --net-shape's qdisc off lo\n", sig)
			os.Exit(1)
		case <-done:
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
		del()
	}, nil
}
