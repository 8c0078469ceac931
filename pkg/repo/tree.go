package repo

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/backupd/backupd/pkg/chunk"
)

// NodeType is the kind of a directory entry.
type NodeType uint8

// Node types.
const (
	TypeFile    NodeType = 1
	TypeDir     NodeType = 2
	TypeSymlink NodeType = 3
	TypeFIFO    NodeType = 4
)

func (t NodeType) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeFIFO:
		return "fifo"
	}
	return fmt.Sprintf("type(%d)", t)
}

// Node is one entry of a directory.
type Node struct {
	// Name is the entry's name: arbitrary bytes but "", ".", "..", '/' and NUL.
	Name string
	Type NodeType
	// Mode holds the permission bits and setuid/setgid/sticky (07777).
	Mode uint32
	// MTime is the modification time in Unix nanoseconds.
	MTime int64
	// Size is a file's length in bytes.
	Size uint64
	// Content lists a file's data blobs in order.
	Content []chunk.ID
	// Subtree is a directory's tree id.
	Subtree chunk.ID
	// Target is a symlink's target, never interpreted.
	Target string
	// Inode and CTime (Unix nanoseconds) of a file, for change detection.
	Inode uint64
	CTime int64
	// UID and GID are the numeric owner and group.
	UID, GID uint32
	// Xattrs are the extended attributes, sorted by name.
	Xattrs []Xattr
	// Device and Nlink of a file: files of one snapshot that share device
	// and inode, with Nlink > 1, are hard links of each other.
	Device, Nlink uint64
	// Flags of a file: NodeChanging.
	Flags NodeFlags
}

// NodeFlags say what a backup could not vouch for about a file.
type NodeFlags uint32

// NodeChanging marks a file that kept changing while the backup read it:
// its stored content is what the last of its bounded reads saw, which may
// mix bytes from before and after a write.
const NodeChanging NodeFlags = 1

// knownFlags are the flags this version reads; a tree with others is
// refused.
const knownFlags = NodeChanging

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Tree is one directory's listing, sorted by name.
type Tree struct {
	Nodes []Node
}

const treeMagic = "BKPDTR01"

const (
	tagName = 1 + iota
	tagType
	tagMode
	tagMTime
	tagSize
	tagContent
	tagSubtree
	tagTarget
	tagInode
	tagCTime
	tagUID
	tagGID
	tagXattrs
	tagDevice
	tagNlink
	tagFlags
)

// ValidName reports whether name may be a directory entry: it must not be
// empty, "." or "..", nor contain '/' or NUL.
func ValidName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: forbidden entry name %q", ErrCorrupt, name)
	}
	return nil
}

// Fields each node type may carry (bit i for tag i), and those it must.
// EncodeTree writes exactly these: name and type always, the others when
// not zero (subtree and target always for their types).
const (
	fieldsAll     = 1<<tagName | 1<<tagType | 1<<tagMode | 1<<tagMTime | 1<<tagUID | 1<<tagGID | 1<<tagXattrs
	fieldsFile    = fieldsAll | 1<<tagSize | 1<<tagContent | 1<<tagInode | 1<<tagCTime | 1<<tagDevice | 1<<tagNlink | 1<<tagFlags
	fieldsDir     = fieldsAll | 1<<tagSubtree
	fieldsSymlink = fieldsAll | 1<<tagTarget
	fieldsFIFO    = fieldsAll
)

// minNodeSize is the smallest encoding of a node: name tag, length and one
// byte, type tag and value, end mark.
const minNodeSize = 6

// minXattrSize is the smallest encoding of an xattr: a one-byte name and an
// empty value, each with its length.
const minXattrSize = 3

// allowedFields returns the fields a node of type t may carry and those it
// must, or ok false for an unknown type.
func allowedFields(t NodeType) (allowed, required uint32, ok bool) {
	const base = 1<<tagName | 1<<tagType
	switch t {
	case TypeFile:
		return fieldsFile, base, true
	case TypeDir:
		return fieldsDir, base | 1<<tagSubtree, true
	case TypeSymlink:
		return fieldsSymlink, base | 1<<tagTarget, true
	case TypeFIFO:
		return fieldsFIFO, base, true
	}
	return 0, 0, false
}

// checkNode checks what the format says about one node's values, whatever
// its encoding: name, type, mode, a file's size and content, a symlink's
// target, fields only files have, extended attributes.
func checkNode(n *Node) error {
	if len(n.Name) > MaxNameLen {
		return fmt.Errorf("%w: entry name of %d bytes (at most %d)", ErrCorrupt, len(n.Name), MaxNameLen)
	}
	if err := ValidName(n.Name); err != nil {
		return err
	}
	if _, _, ok := allowedFields(n.Type); !ok {
		return fmt.Errorf("%w: entry %q: unknown type %d", ErrCorrupt, n.Name, n.Type)
	}
	if n.Mode&^07777 != 0 {
		return fmt.Errorf("%w: entry %q: mode %o", ErrCorrupt, n.Name, n.Mode)
	}
	switch n.Type {
	case TypeFile:
		if (n.Size == 0) != (len(n.Content) == 0) {
			return fmt.Errorf("%w: file %q: size %d with %d content blobs", ErrCorrupt, n.Name, n.Size, len(n.Content))
		}
		if len(n.Content) > MaxFileBlobs {
			return fmt.Errorf("%w: file %q: %d content blobs (at most %d)", ErrCorrupt, n.Name, len(n.Content), MaxFileBlobs)
		}
	case TypeSymlink:
		if len(n.Target) == 0 || len(n.Target) > MaxTargetLen {
			return fmt.Errorf("%w: symlink %q: target of %d bytes (1 to %d)", ErrCorrupt, n.Name, len(n.Target), MaxTargetLen)
		}
	}
	if n.Flags&^knownFlags != 0 {
		return fmt.Errorf("%w: entry %q: unknown flags %#x", ErrCorrupt, n.Name, n.Flags)
	}
	if n.Type != TypeFile && (n.Device != 0 || n.Nlink != 0 || n.Flags != 0) {
		return fmt.Errorf("%w: %v %q: device, link count or flags (files only)", ErrCorrupt, n.Type, n.Name)
	}
	list := 0
	for i, x := range n.Xattrs {
		switch {
		case x.Name == "" || len(x.Name) > MaxXattrNameLen || strings.IndexByte(x.Name, 0) >= 0:
			return fmt.Errorf("%w: entry %q: xattr name %q", ErrCorrupt, n.Name, x.Name)
		case len(x.Value) > MaxXattrValueLen:
			return fmt.Errorf("%w: entry %q: xattr %q value of %d bytes (at most %d)", ErrCorrupt, n.Name, x.Name, len(x.Value), MaxXattrValueLen)
		case i > 0 && n.Xattrs[i-1].Name >= x.Name:
			return fmt.Errorf("%w: entry %q: xattrs unsorted or duplicate at %q", ErrCorrupt, n.Name, x.Name)
		}
		if list += len(x.Name) + 1; list > MaxXattrListLen {
			return fmt.Errorf("%w: entry %q: xattr names exceed %d bytes", ErrCorrupt, n.Name, MaxXattrListLen)
		}
	}
	return nil
}

// Validate reports whether t is a tree that DecodeTree accepts once
// encoded (except for MaxTreeSize, which only EncodeTreeChecked can tell):
// entries sorted by name and unique, every value within the format's rules
// and limits. Errors wrap ErrCorrupt.
func (t *Tree) Validate() error {
	if len(t.Nodes) > MaxTreeNodes {
		return fmt.Errorf("%w: tree of %d entries (at most %d)", ErrCorrupt, len(t.Nodes), MaxTreeNodes)
	}
	xattrs := 0
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if err := checkNode(n); err != nil {
			return err
		}
		if i > 0 && t.Nodes[i-1].Name >= n.Name {
			return fmt.Errorf("%w: tree entries unsorted or duplicate at %q", ErrCorrupt, n.Name)
		}
		if xattrs += len(n.Xattrs); xattrs > MaxTreeXattrs {
			return fmt.Errorf("%w: tree with more than %d xattrs", ErrCorrupt, MaxTreeXattrs)
		}
	}
	return nil
}

// EncodeTreeChecked is EncodeTree for trees that may break the format's
// rules or limits (a directory of more than MaxTreeNodes entries, an
// encoding above MaxTreeSize): it returns an error wrapping ErrCorrupt
// instead of a tree no reader would accept.
func EncodeTreeChecked(t *Tree) ([]byte, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	b := EncodeTree(t)
	if len(b) > MaxTreeSize {
		return nil, fmt.Errorf("%w: tree of %d entries encodes to %d bytes (at most %d)", ErrCorrupt, len(t.Nodes), len(b), MaxTreeSize)
	}
	return b, nil
}

// EncodeTree returns the canonical encoding of t. Nodes must already be
// sorted by name; EncodeTree panics otherwise (a programming error).
func EncodeTree(t *Tree) []byte {
	b := make([]byte, 0, 64+len(t.Nodes)*96)
	b = append(b, treeMagic...)
	b = binary.AppendUvarint(b, uint64(len(t.Nodes)))
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if i > 0 && t.Nodes[i-1].Name >= n.Name {
			panic("repo: EncodeTree: nodes not sorted or duplicate name " + n.Name)
		}
		b = binary.AppendUvarint(b, tagName)
		b = binary.AppendUvarint(b, uint64(len(n.Name)))
		b = append(b, n.Name...)
		b = binary.AppendUvarint(b, tagType)
		b = binary.AppendUvarint(b, uint64(n.Type))
		if n.Mode != 0 {
			b = binary.AppendUvarint(b, tagMode)
			b = binary.AppendUvarint(b, uint64(n.Mode))
		}
		if n.MTime != 0 {
			b = binary.AppendUvarint(b, tagMTime)
			b = binary.AppendVarint(b, n.MTime)
		}
		switch n.Type {
		case TypeFile:
			if n.Size != 0 {
				b = binary.AppendUvarint(b, tagSize)
				b = binary.AppendUvarint(b, n.Size)
			}
			if len(n.Content) > 0 {
				b = binary.AppendUvarint(b, tagContent)
				b = binary.AppendUvarint(b, uint64(len(n.Content)))
				for _, id := range n.Content {
					b = append(b, id[:]...)
				}
			}
			if n.Inode != 0 {
				b = binary.AppendUvarint(b, tagInode)
				b = binary.AppendUvarint(b, n.Inode)
			}
			if n.CTime != 0 {
				b = binary.AppendUvarint(b, tagCTime)
				b = binary.AppendVarint(b, n.CTime)
			}
		case TypeDir:
			b = binary.AppendUvarint(b, tagSubtree)
			b = append(b, n.Subtree[:]...)
		case TypeSymlink:
			b = binary.AppendUvarint(b, tagTarget)
			b = binary.AppendUvarint(b, uint64(len(n.Target)))
			b = append(b, n.Target...)
		}
		if n.UID != 0 {
			b = binary.AppendUvarint(b, tagUID)
			b = binary.AppendUvarint(b, uint64(n.UID))
		}
		if n.GID != 0 {
			b = binary.AppendUvarint(b, tagGID)
			b = binary.AppendUvarint(b, uint64(n.GID))
		}
		if len(n.Xattrs) > 0 {
			b = binary.AppendUvarint(b, tagXattrs)
			b = binary.AppendUvarint(b, uint64(len(n.Xattrs)))
			for _, x := range n.Xattrs {
				b = binary.AppendUvarint(b, uint64(len(x.Name)))
				b = append(b, x.Name...)
				b = binary.AppendUvarint(b, uint64(len(x.Value)))
				b = append(b, x.Value...)
			}
		}
		if n.Device != 0 {
			b = binary.AppendUvarint(b, tagDevice)
			b = binary.AppendUvarint(b, n.Device)
		}
		if n.Nlink != 0 {
			b = binary.AppendUvarint(b, tagNlink)
			b = binary.AppendUvarint(b, n.Nlink)
		}
		if n.Flags != 0 {
			b = binary.AppendUvarint(b, tagFlags)
			b = binary.AppendUvarint(b, uint64(n.Flags))
		}
		b = append(b, 0)
	}
	return b
}

// treeDecoder reads the fields of a tree blob.
type treeDecoder struct {
	r   []byte
	err error
}

func (d *treeDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: tree: "+format, append([]any{ErrCorrupt}, args...)...)
	}
}

// uvarint reads a minimally encoded uvarint (binary.Uvarint also takes
// overlong ones, which would give a tree a second encoding).
func (d *treeDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, k := binary.Uvarint(d.r)
	switch {
	case k <= 0:
		d.fail("truncated or varint overflow")
		return 0
	case k > 1 && d.r[k-1] == 0:
		d.fail("overlong varint")
		return 0
	}
	d.r = d.r[k:]
	return v
}

// nonzero reads the uvarint of an optional field, which the encoder omits
// when zero.
func (d *treeDecoder) nonzero(what string) uint64 {
	v := d.uvarint()
	if v == 0 {
		d.fail("%s field present with value 0", what)
	}
	return v
}

// varint reads a minimally encoded, non-zero zigzag varint.
func (d *treeDecoder) varint(what string) int64 {
	u := d.nonzero(what)
	return int64(u>>1) ^ -int64(u&1)
}

// take returns the next n bytes, or nil if fewer remain.
func (d *treeDecoder) take(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.r)) {
		d.fail("truncated")
		return nil
	}
	b := d.r[:n]
	d.r = d.r[n:]
	return b
}

// str reads a length-prefixed byte string of at most max bytes.
func (d *treeDecoder) str(what string, max int) []byte {
	l := d.uvarint()
	if l > uint64(max) {
		d.fail("%s of %d bytes (at most %d)", what, l, max)
		return nil
	}
	return d.take(l)
}

// DecodeTree parses and validates a tree blob. It accepts exactly the
// canonical form, the one EncodeTree writes, and nothing else: minimal
// varints, fields in ascending order and only those the node's type has,
// no optional field with its zero value, names and values within the
// format's limits, entries sorted by unique, valid names. Counts are
// checked against the bytes left before anything is allocated, so memory is
// bounded by the blob (MaxTreeSize) and MaxTreeNodes. Errors wrap
// ErrCorrupt.
func DecodeTree(b []byte) (*Tree, error) {
	if len(b) > MaxTreeSize {
		return nil, fmt.Errorf("%w: tree of %d bytes exceeds %d", ErrCorrupt, len(b), MaxTreeSize)
	}
	if !bytes.HasPrefix(b, []byte(treeMagic)) {
		return nil, fmt.Errorf("%w: tree magic missing", ErrCorrupt)
	}
	d := treeDecoder{r: b[len(treeMagic):]}
	count := d.uvarint()
	if d.err == nil && (count > uint64(len(d.r))/minNodeSize || count > MaxTreeNodes) {
		d.fail("%d entries in %d bytes (at most %d)", count, len(d.r), MaxTreeNodes)
	}
	if d.err != nil {
		return nil, d.err
	}
	t := &Tree{Nodes: make([]Node, count)}
	xattrs := 0
	for i := range t.Nodes {
		n := &t.Nodes[i]
		if err := d.node(n, &xattrs); err != nil {
			return nil, err
		}
		if err := checkNode(n); err != nil {
			return nil, err
		}
		if i > 0 && t.Nodes[i-1].Name >= n.Name {
			return nil, fmt.Errorf("%w: tree entries unsorted or duplicate at %q", ErrCorrupt, n.Name)
		}
	}
	if len(d.r) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after tree", ErrCorrupt, len(d.r))
	}
	return t, nil
}

// node reads one node's fields up to its end mark; xattrs counts the
// tree's extended attributes so far.
func (d *treeDecoder) node(n *Node, xattrs *int) error {
	var seen uint32
	last := uint64(0)
	for d.err == nil {
		tag := d.uvarint()
		if d.err != nil || tag == 0 {
			break
		}
		if tag <= last || tag > tagFlags {
			d.fail("field %d out of order or unknown", tag)
			break
		}
		last = tag
		seen |= 1 << tag
		switch tag {
		case tagName:
			n.Name = string(d.str("name", MaxNameLen))
		case tagType:
			v := d.uvarint()
			if _, _, ok := allowedFields(NodeType(v)); !ok || v > 0xff {
				d.fail("unknown node type %d", v)
			}
			n.Type = NodeType(v)
		case tagMode:
			v := d.nonzero("mode")
			if v&^07777 != 0 {
				d.fail("mode %o", v)
			}
			n.Mode = uint32(v)
		case tagMTime:
			n.MTime = d.varint("mtime")
		case tagSize:
			n.Size = d.nonzero("size")
		case tagContent:
			c := d.nonzero("content")
			if d.err == nil && (c > uint64(len(d.r))/chunk.IDSize || c > MaxFileBlobs) {
				d.fail("%d content blobs in %d bytes", c, len(d.r))
			}
			if ids := d.take(c * chunk.IDSize); ids != nil {
				n.Content = make([]chunk.ID, c)
				for j := range n.Content {
					n.Content[j] = chunk.ID(ids[j*chunk.IDSize:])
				}
			}
		case tagSubtree:
			if id := d.take(chunk.IDSize); id != nil {
				n.Subtree = chunk.ID(id)
			}
		case tagTarget:
			n.Target = string(d.str("symlink target", MaxTargetLen))
		case tagInode:
			n.Inode = d.nonzero("inode")
		case tagCTime:
			n.CTime = d.varint("ctime")
		case tagUID, tagGID:
			v := d.nonzero("uid/gid")
			if v > math.MaxUint32 {
				d.fail("uid/gid %d out of range", v)
			}
			if tag == tagUID {
				n.UID = uint32(v)
			} else {
				n.GID = uint32(v)
			}
		case tagXattrs:
			c := d.nonzero("xattrs")
			if d.err == nil && (c > uint64(len(d.r))/minXattrSize || c > uint64(MaxTreeXattrs-*xattrs)) {
				d.fail("%d xattrs in %d bytes (at most %d in a tree)", c, len(d.r), MaxTreeXattrs)
			}
			if d.err != nil {
				break
			}
			*xattrs += int(c)
			n.Xattrs = make([]Xattr, c)
			for j := range n.Xattrs {
				x := &n.Xattrs[j]
				x.Name = string(d.str("xattr name", MaxXattrNameLen))
				if v := d.str("xattr value", MaxXattrValueLen); len(v) > 0 {
					x.Value = bytes.Clone(v)
				}
			}
		case tagDevice:
			n.Device = d.nonzero("device")
		case tagNlink:
			n.Nlink = d.nonzero("nlink")
		case tagFlags:
			v := d.nonzero("flags")
			if v&^uint64(knownFlags) != 0 {
				d.fail("unknown flags %#x", v)
			}
			n.Flags = NodeFlags(v)
		}
	}
	if d.err != nil {
		return d.err
	}
	allowed, required, ok := allowedFields(n.Type)
	if !ok || seen&required != required || seen&^allowed != 0 {
		return fmt.Errorf("%w: tree entry %q of type %v has invalid fields", ErrCorrupt, n.Name, n.Type)
	}
	return nil
}
