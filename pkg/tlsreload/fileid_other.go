//go:build !unix

package tlsreload

import "os"

// fileID returns zeros: off unix, files are told apart by modification
// time, size and, while recently changed, content.
func fileID(os.FileInfo) (dev, ino uint64) { return 0, 0 }
