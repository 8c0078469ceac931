package ctxsleep

import (
	"context"
	"testing"
	"time"
)

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) || !Sleep(context.Background(), 0) {
		t.Fatal("a sleep under a live context did not pass")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) || Sleep(ctx, 0) {
		t.Fatal("a sleep under a cancelled context passed")
	}
	if time.Since(start) > time.Minute {
		t.Fatal("a cancelled context did not end the sleep")
	}
}
