package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	bsync "github.com/backupd/backupd/pkg/sync"
	"github.com/backupd/backupd/pkg/tlsreload"
	pb "github.com/backupd/backupd/proto/backupd/v1"
)

// daemonFlags select running a command through a backupd daemon.
type daemonFlags struct {
	addr, ca, cert, key string
}

func (d *daemonFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&d.addr, "daemon", "", "run through the backupd daemon at `ADDR` (host:port or unix:///path; default $BACKUPD_DAEMON) instead of opening the repository here")
	cmd.Flags().StringVar(&d.ca, "daemon-ca", "", "with --daemon: verify the daemon's TLS certificate against this CA `FILE` (enables TLS)")
	cmd.Flags().StringVar(&d.cert, "daemon-cert", "", "with --daemon: client certificate `FILE` for mutual TLS")
	cmd.Flags().StringVar(&d.key, "daemon-key", "", "with --daemon: client key `FILE` for mutual TLS")
}

// enabled reports whether --daemon (or $BACKUPD_DAEMON) is set.
func (d *daemonFlags) enabled() bool {
	if d.addr == "" {
		d.addr = os.Getenv("BACKUPD_DAEMON")
	}
	return d.addr != ""
}

// dial connects to the daemon: TLS when any TLS file is given, else
// plaintext (a unix socket or loopback).
func (d *daemonFlags) dial() (pb.BackupServiceClient, func(), error) {
	target := d.addr
	if !strings.HasPrefix(target, "unix://") {
		target = "passthrough:///" + target
	}
	creds := insecure.NewCredentials()
	if d.ca != "" || d.cert != "" || d.key != "" {
		tc, err := tlsreload.Client(tlsreload.ClientFiles{CA: d.ca, Cert: d.cert, Key: d.key})
		if err != nil {
			return nil, nil, usageError{Err: err}
		}
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, usageError{Err: fmt.Errorf("--daemon %s: %w", d.addr, err)}
	}
	return pb.NewBackupServiceClient(conn), func() { conn.Close() }, nil
}

// rpcError turns a daemon's error status into a plain error message.
func rpcError(d *daemonFlags, err error) error {
	if st, ok := status.FromError(err); ok {
		return fmt.Errorf("daemon %s: %s (%s)", d.addr, st.Message(), st.Code())
	}
	return err
}

// follow watches an operation to its end, mirroring its progress into
// prog for the progress bar. If ctx ends first (Ctrl-C), the operation is
// cancelled on the daemon.
func follow(ctx context.Context, c pb.BackupServiceClient, op *pb.Operation, prog *bsync.Progress) (*pb.Operation, error) {
	return followEach(ctx, c, op, prog, nil)
}

// followEach is follow, telling each (if set) of every state received.
func followEach(ctx context.Context, c pb.BackupServiceClient, op *pb.Operation, prog *bsync.Progress, each func(*pb.Operation)) (*pb.Operation, error) {
	stream, err := c.WatchOperation(ctx, &pb.WatchOperationRequest{OperationId: op.Id})
	if err != nil {
		return nil, err
	}
	last := op
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return last, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c.CancelOperation(cctx, &pb.CancelOperationRequest{OperationId: op.Id})
				cancel()
			}
			return nil, err
		}
		last = m.Operation
		p := last.Progress
		prog.Files.Store(p.GetFilesDone())
		prog.Bytes.Store(p.GetBytesDone())
		prog.TotalFiles.Store(p.GetFilesTotal())
		prog.TotalBytes.Store(p.GetBytesTotal())
		if each != nil {
			each(last)
		}
	}
}

// opFailed is the error of an operation that did not succeed: the
// daemon's message, with the operation's id (and its state, when it did
// not simply fail) after it.
func opFailed(op *pb.Operation) error {
	if op.State == pb.OperationState_OPERATION_STATE_SUCCEEDED {
		return nil
	}
	state := strings.ToLower(strings.TrimPrefix(op.State.String(), "OPERATION_STATE_"))
	if state == "failed" {
		return fmt.Errorf("%s (operation %s)", op.ErrorMessage, op.Id)
	}
	return fmt.Errorf("%s (operation %s %s)", op.ErrorMessage, op.Id, state)
}

func idMappings(m bsync.IDMap) []*pb.IdMapping {
	var out []*pb.IdMapping
	for _, r := range m {
		out = append(out, &pb.IdMapping{ContainerId: r.Container, HostId: r.Host, Count: r.Count})
	}
	return out
}

// snapshotsViaDaemon lists an owner's snapshots through the daemon,
// oldest first like the direct listing, the unreadable ones among them.
func snapshotsViaDaemon(ctx context.Context, d *daemonFlags, owner, workspace string, asJSON bool) error {
	c, closeConn, err := d.dial()
	if err != nil {
		return err
	}
	defer closeConn()
	type stats struct {
		Files       int64 `json:"files"`
		Dirs        int64 `json:"dirs"`
		Bytes       int64 `json:"bytes"`
		NewBytes    int64 `json:"new_bytes"`
		StoredBytes int64 `json:"stored_bytes"`
		Unreadable  int64 `json:"unreadable,omitempty"`
	}
	type snap struct {
		ID        string            `json:"id"`
		Time      time.Time         `json:"time"`
		Owner     string            `json:"owner"`
		Workspace string            `json:"workspace"`
		Host      string            `json:"host"`
		Path      string            `json:"path"`
		Parent    string            `json:"parent,omitempty"`
		Tags      map[string]string `json:"tags,omitempty"`
		Stats     stats             `json:"stats"`
		// As the direct listing's (repo.Snapshot.Checkpoint).
		Checkpoint bool `json:"checkpoint,omitempty"`
	}
	var out []listed
	token := ""
	for {
		resp, err := c.ListSnapshots(ctx, &pb.ListSnapshotsRequest{Owner: owner, Workspace: workspace, PageSize: 1000, PageToken: token})
		if err != nil {
			return rpcError(d, err)
		}
		for _, s := range resp.Snapshots {
			t := s.Time.AsTime()
			out = append(out, listed{
				row: snapshotRow{ID: s.Id, Time: t, Owner: s.Owner, Workspace: s.Workspace, Host: s.Host, Files: s.Files, Bytes: s.Bytes, Tags: s.Tags, Checkpoint: s.Checkpoint},
				json: snap{ID: s.Id, Time: t, Owner: s.Owner, Workspace: s.Workspace, Host: s.Host, Path: s.Path,
					Parent: s.ParentId, Tags: s.Tags, Stats: stats{s.Files, s.Dirs, s.Bytes, s.NewBytes, s.StoredBytes, s.UnreadableEntries}, Checkpoint: s.Checkpoint},
			})
		}
		for _, s := range resp.UnreadableSnapshots {
			out = append(out, unreadable(s.Id, s.Owner, s.Workspace, s.Time.AsTime(), s.Error))
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	if len(out) == 0 && !asJSON {
		noneFound(owner, workspace)
		return nil
	}
	// Oldest first, as the direct listing (by time, then workspace and id:
	// the order of the snapshot keys).
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].row, out[j].row
		if !a.Time.Equal(b.Time) {
			return a.Time.Before(b.Time)
		}
		if a.Workspace != b.Workspace {
			return a.Workspace < b.Workspace
		}
		return a.ID < b.ID
	})
	return printListing(out, asJSON)
}
