module github.com/backupd/backupd

go 1.26.8

require (
	github.com/klauspost/compress v1.18.0
	github.com/restic/chunker v0.4.0
	github.com/spf13/cobra v1.9.1
	golang.org/x/sync v0.12.0
	golang.org/x/sys v0.31.0
	golang.org/x/term v0.30.0
)

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/pflag v1.0.6 // indirect
)
