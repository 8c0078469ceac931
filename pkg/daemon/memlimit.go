package daemon

import "sync"

// memoryLimit keeps the Go runtime's soft memory limit at
// Limits.SoftMemoryBytes while at most one operation runs, and raises it
// by Limits.SoftMemoryPerOperationBytes for each further one, up to
// Limits.SoftMemoryMaxBytes: a limit below what the running operations
// need makes the collector run back to back without lowering the peak.
// As operations end it comes down again, and the collector gives back
// what they used.
type memoryLimit struct {
	set                  func(int64) int64 // debug.SetMemoryLimit
	base, perOp, ceiling int64

	mu      sync.Mutex
	running int
}

// newMemoryLimit returns the limit set keeps for l, already at its idle
// value; nil when l asks for no soft limit.
func newMemoryLimit(l Limits, set func(int64) int64) *memoryLimit {
	if l.SoftMemoryBytes <= 0 {
		return nil
	}
	m := &memoryLimit{set: set, base: l.SoftMemoryBytes, perOp: max(l.SoftMemoryPerOperationBytes, 0), ceiling: max(l.SoftMemoryMaxBytes, l.SoftMemoryBytes)}
	set(m.limit(0))
	return m
}

// limit is the soft limit while running operations run.
func (m *memoryLimit) limit(running int) int64 {
	extra := int64(max(running-1, 0))
	if m.perOp > 0 && extra > (m.ceiling-m.base)/m.perOp { // also where the sum would overflow
		return m.ceiling
	}
	return m.base + extra*m.perOp
}

// add counts delta operations started (or, negative, ended) and sets the
// limit for what runs now. A nil m does nothing.
func (m *memoryLimit) add(delta int) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.running += delta
	m.set(m.limit(m.running))
}
