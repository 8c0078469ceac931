package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// errorCase is a misconfiguration: a command line, its environment and
// files, and the one line it must answer with. In args, env, files and
// want, {tmp} is the case's directory, {minio} MinIO's HOST:PORT,
// {gcs} fake-gcs-server's, {azurite} Azurite's blob endpoint (with the
// account) and {azuriteHost} its HOST:PORT.
type errorCase struct {
	name  string
	bin   string // backupctl (default) or backupd
	args  []string
	env   []string
	files map[string]string // name in {tmp} -> content
	// root: MinIO's root credentials in the environment (AWS_* and
	// MINIO_*).
	root bool
	code int
	want string // stderr's first line
}

// Values that must never show in an error.
const (
	fakeSecret = "s3cr3t-Wl8x2Qm9"
	// fakeKey is base64 of a wrong Azure account key.
	fakeKey = "d3Jvbmcta2V5LW5vdC10aGUtcmVhbC1vbmUtd3Jvbmcta2V5LW5vdC10aGUtcmVhbA=="
	// brokenKeyFile is a service-account key whose private key is cut off.
	brokenKeyFile = `{"type": "service_account", "client_email": "backupd@demo-project.iam.gserviceaccount.com",
  "private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n"}`
)

const azuriteKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

var azureLookedFor = "no credentials found: looked for connectionstring and accountkey in the azure section, $AZURE_STORAGE_CONNECTION_STRING, $AZURE_STORAGE_KEY (with accountname or $AZURE_STORAGE_ACCOUNT), and the default Azure credential (workload identity, a service principal in $AZURE_CLIENT_ID, managed identity, Azure CLI)"

var errorCases = []errorCase{
	// Usage errors, exit 2: one line, then the pointer to --help.
	{name: "unknown flag", args: []string{"snapshots", "--bogus"}, code: 2,
		want: "backupctl: unknown flag: --bogus"},
	{name: "missing argument", args: []string{"backup", "-r", "file://{tmp}/r", "--owner", "o", "--workspace", "w"}, code: 2,
		want: "backupctl: backup: missing argument DIR"},
	{name: "extra argument", args: []string{"snapshots", "-r", "file://{tmp}/r", "extra"}, code: 2,
		want: `backupctl: snapshots: unexpected argument "extra" (snapshots takes no arguments, only flags)`},
	{name: "missing required flag", args: []string{"restore", "-r", "file://{tmp}/r", "--workspace", "w", "{tmp}/d"}, code: 2,
		want: "backupctl: restore: missing required flag --owner"},
	{name: "flag value", args: []string{"snapshots", "--connections", "many"}, code: 2,
		want: `backupctl: --connections "many": want a whole number`},
	{name: "unknown command", args: []string{"snapshot"}, code: 2,
		want: `backupctl: unknown command "snapshot" for "backupctl"; did you mean snapshots?`},
	{name: "invalid owner", args: []string{"snapshots", "-r", "file://{tmp}/r", "--owner", "../x"}, code: 2,
		want: `backupctl: invalid owner "../x": must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`},
	{name: "local: relative path", args: []string{"snapshots", "-r", "backups", "--owner", "o"}, code: 2,
		want: "backupctl: storage URL backups: relative path refused: give an absolute path or a file:///abs/path URL"},
	{name: "unknown scheme", args: []string{"snapshots", "-r", "ftp://host/x", "--owner", "o"}, code: 2,
		want: `backupctl: storage URL ftp://host/x: unsupported scheme "ftp" (use file, s3, minio, gs or azblob)`},
	{name: "gcs: opaque URL", args: []string{"snapshots", "-r", "gs:my-bucket", "--owner", "o"}, code: 2,
		want: "backupctl: storage URL gs:my-bucket: want gs://BUCKET/PREFIX"},
	{name: "gcs: one slash", args: []string{"snapshots", "-r", "gs:/my-bucket", "--owner", "o"}, code: 2,
		want: "backupctl: storage URL gs:/my-bucket: want gs://BUCKET/PREFIX"},
	{name: "s3: credentials in the URL", args: []string{"snapshots", "-r", "s3://AKIAEXAMPLE:" + fakeSecret + "@my-bucket/p", "--owner", "o"}, code: 2,
		want: "backupctl: storage URL s3://my-bucket/p: credentials do not belong in the URL; put them in the storage config file (--storage-config) or the environment"},
	{name: "s3: secret parameter", args: []string{"snapshots", "-r", "s3://my-bucket/p?region=us-east-1&secretkey=" + fakeSecret, "--owner", "o"}, code: 2,
		want: `backupctl: storage URL s3://my-bucket/p?region=us-east-1: query parameter "secretkey" refused: credentials never come from the URL`},
	{name: "minio: unknown parameter", args: []string{"snapshots", "-r", "minio://{minio}/my-bucket?bogus=1", "--owner", "o"}, code: 2,
		want: `backupctl: storage URL minio://{minio}/my-bucket?bogus=1: unknown query parameter "bogus" (accepted: secure, region, partsize)`},
	{name: "azure: container name", args: []string{"snapshots", "-r", "azblob://c/p", "--owner", "o"}, code: 2,
		want: `backupctl: storage URL azblob://c/p: azure: container "c": must be 3 to 63 characters long`},
	{name: "backupd: unknown flag", bin: "backupd", args: []string{"--bogus"}, code: 2,
		want: "backupd: unknown flag: --bogus"},
	{name: "backupd: argument", bin: "backupd", args: []string{"serve"}, code: 2,
		want: `backupd: unexpected argument "serve" (backupd takes no arguments, only flags)`},
	{name: "backupd: no workspace root", bin: "backupd", args: []string{"--listen", "127.0.0.1:0"}, code: 2,
		want: "backupd: no workspace root: give --workspace-root DIR (repeatable), workspace_roots in the --config file, or $BACKUPD_WORKSPACE_ROOTS"},
	{name: "backupd: bad URL", bin: "backupd", args: []string{"--workspace-root", "{tmp}", "--repo", "gs:my-bucket"}, code: 2,
		want: "backupd: storage URL gs:my-bucket: want gs://BUCKET/PREFIX"},
	{name: "backupd: byte value", bin: "backupd", args: []string{"--workspace-root", "{tmp}", "--upload-limit", "fast"}, code: 2,
		want: `backupd: --upload-limit "fast": want a number of bytes like 1048576 or 100MiB`},

	// Everything else, exit 1: one line.
	{name: "local: unknown owner", args: []string{"restore", "-r", "file://{tmp}", "--owner", "nobody", "--workspace", "w", "{tmp}/d"}, code: 1,
		want: "backupctl: no backups for owner nobody"},
	{name: "local: root is a file", args: []string{"backup", "-r", "file://{tmp}/afile", "--owner", "o", "--workspace", "w", "{tmp}"},
		files: map[string]string{"afile": "x"}, code: 1,
		want: "backupctl: local: open {tmp}/afile: not a directory"},
	{name: "config: azblob section", args: []string{"snapshots", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "storage:\n  url: azblob://backups/p\n  azblob:\n    accountkey: " + fakeSecret + "\n"}, code: 1,
		want: `backupctl: --storage-config {tmp}/s.yaml: line 3: unknown key "azblob" in storage (accepted: url, placement, bucket_template, s3, minio, gcs, azure, connections, retry); the Azure section is called azure (azblob is the URL scheme)`},
	{name: "config: s3 endpoint", args: []string{"snapshots", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "url: s3://my-bucket/p\ns3:\n  endpoint: http://{minio}\n"}, code: 1,
		want: `backupctl: --storage-config {tmp}/s.yaml: line 3: unknown key "endpoint" in storage.s3 (accepted: accesskey, secretkey, region, regionendpoint, bucket, encrypt, keyid, secure, v4auth, chunksize, rootdirectory, storageclass, pathstyle, createbucket, uploadconcurrency); the s3 section calls it regionendpoint (or give ?endpoint= in the URL)`},
	{name: "config: azure createbucket", args: []string{"snapshots", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "azure:\n  createbucket: true\n"}, code: 1,
		want: `backupctl: --storage-config {tmp}/s.yaml: line 2: unknown key "createbucket" in storage.azure (accepted: container, prefix, endpoint, accountname, accountkey, connectionstring, createcontainer, blocksize, concurrency); the azure section calls it createcontainer`},
	{name: "config: value of the wrong kind", args: []string{"snapshots", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "storage:\n  connections: " + fakeSecret + "\n"}, code: 1,
		want: "backupctl: --storage-config {tmp}/s.yaml: line 2: storage.connections: want a whole number"},
	{name: "config: placement", args: []string{"snapshots", "-r", "file://{tmp}", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "placement: everywhere\n"}, code: 1,
		want: `backupctl: placement "everywhere": want prefix-per-owner or bucket-per-owner`},
	{name: "config: bucket per owner on a directory", args: []string{"snapshots", "-r", "file://{tmp}", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "placement: bucket-per-owner\nbucket_template: backupd-{owner}\n"}, code: 1,
		want: "backupctl: placement bucket-per-owner needs an object store (s3, minio, gs, azblob), not the local directory {tmp}"},
	{name: "config: missing file", args: []string{"snapshots", "--storage-config", "{tmp}/none.yaml", "--owner", "o"}, code: 1,
		want: "backupctl: --storage-config {tmp}/none.yaml: no such file or directory"},
	{name: "s3: no region", args: []string{"snapshots", "-r", "s3://my-bucket/p", "--owner", "o"}, code: 1,
		want: "backupctl: s3: open bucket my-bucket: no region: add ?region=REGION to the URL, or set region in the s3 section or $AWS_REGION"},
	{name: "s3: no credentials", args: []string{"snapshots", "-r", "s3://my-bucket/p?endpoint=http://{minio}", "--owner", "o"}, code: 1,
		want: "backupctl: s3: open bucket my-bucket: no credentials found: looked for accesskey and secretkey in the s3 section, $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, the shared files (~/.aws/credentials, ~/.aws/config, $AWS_PROFILE), web identity ($AWS_ROLE_ARN with $AWS_WEB_IDENTITY_TOKEN_FILE: IRSA) and the EC2 instance role"},
	{name: "s3: wrong secret", args: []string{"snapshots", "-r", "s3://my-bucket/p?endpoint=http://{minio}", "--owner", "o"},
		env: []string{"AWS_ACCESS_KEY_ID=backupd-user", "AWS_SECRET_ACCESS_KEY=" + fakeSecret}, code: 1,
		want: "backupctl: s3: open bucket my-bucket: access denied (HTTP 403): the credentials are wrong, or may not list this bucket (s3:ListBucket)"},
	{name: "s3: no bucket", args: []string{"snapshots", "-r", "s3://no-such-bucket/p?endpoint=http://{minio}", "--owner", "o"}, root: true, code: 1,
		want: "backupctl: s3: bucket no-such-bucket does not exist: create it, or set createbucket: true in the s3 section for the first backup to create it"},
	{name: "s3: unreachable", args: []string{"snapshots", "-r", "s3://my-bucket/p?endpoint=http://127.0.0.1:1", "--owner", "o"}, root: true, code: 1,
		want: "backupctl: s3: open bucket my-bucket: cannot reach http://127.0.0.1:1: connect: connection refused"},
	{name: "minio: no credentials", args: []string{"snapshots", "-r", "minio://{minio}/my-bucket?secure=false", "--owner", "o"}, code: 1,
		want: "backupctl: minio: no credentials: set accesskey and secretkey, or MINIO_ACCESS_KEY and MINIO_SECRET_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"},
	{name: "minio: https to an http server", args: []string{"snapshots", "-r", "minio://{minio}/my-bucket", "--owner", "o"}, root: true, code: 1,
		want: "backupctl: minio: open bucket my-bucket: {minio} speaks http, not https: add ?secure=false to the URL (or secure: false in the minio section)"},
	{name: "minio: wrong secret", args: []string{"snapshots", "-r", "minio://{minio}/my-bucket?secure=false", "--owner", "o"},
		env: []string{"MINIO_ACCESS_KEY=backupd-user", "MINIO_SECRET_KEY=" + fakeSecret}, code: 1,
		want: "backupctl: minio: open bucket my-bucket: access denied (HTTP 403 SignatureDoesNotMatch): the credentials are wrong, or may not list this bucket (s3:ListBucket)"},
	{name: "minio: no bucket", args: []string{"snapshots", "-r", "minio://{minio}/no-such-bucket?secure=false", "--owner", "o"}, root: true, code: 1,
		want: "backupctl: minio: bucket no-such-bucket does not exist: create it, or set createbucket: true in the minio section for the first backup to create it"},
	{name: "gcs: no credentials", args: []string{"snapshots", "-r", "gs://my-bucket/p", "--owner", "o"}, code: 1,
		want: "backupctl: gcs: open bucket my-bucket: no credentials found: looked for credentialsfile in the gcs section, $GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials (gcloud auth application-default login) and the metadata server (GKE workload identity, a GCE service account); for an emulator set ?endpoint=http://HOST:PORT or $STORAGE_EMULATOR_HOST"},
	{name: "gcs: broken key file", args: []string{"snapshots", "-r", "gs://my-bucket/p", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "gcs:\n  credentialsfile: {tmp}/key.json\n", "key.json": brokenKeyFile}, code: 1,
		want: "backupctl: gcs: open bucket my-bucket: credentialsfile {tmp}/key.json: private_key does not decode as an RSA private key (damaged or cut off?)"},
	{name: "gcs: key file not JSON", args: []string{"snapshots", "-r", "gs://my-bucket/p", "--owner", "o"},
		env: []string{"GOOGLE_APPLICATION_CREDENTIALS={tmp}/key.json"}, files: map[string]string{"key.json": fakeSecret}, code: 1,
		want: "backupctl: gcs: open bucket my-bucket: $GOOGLE_APPLICATION_CREDENTIALS {tmp}/key.json: not a JSON credentials file (want the key file of `gcloud iam service-accounts keys create`)"},
	{name: "gcs: missing key file", args: []string{"snapshots", "-r", "gs://my-bucket/p", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "gcs:\n  credentialsfile: {tmp}/none.json\n"}, code: 1,
		want: "backupctl: gcs: open bucket my-bucket: credentialsfile {tmp}/none.json: no such file or directory"},
	{name: "gcs: no bucket", args: []string{"snapshots", "-r", "gs://no-such-bucket/p?endpoint=http://{gcs}", "--owner", "o"}, code: 1,
		want: "backupctl: gcs: bucket no-such-bucket does not exist: create it, or set createbucket: true in the gcs section for the first backup to create it"},
	{name: "gcs: creating a bucket without a project", args: []string{"backup", "--storage-config", "{tmp}/s.yaml", "--owner", "o", "--workspace", "w", "{tmp}"},
		files: map[string]string{"s.yaml": "url: gs://unused/p?endpoint=http://{gcs}\nplacement: bucket-per-owner\nbucket_template: backupd-{owner}\n"}, code: 1,
		want: "backupctl: owner o: gcs: creating bucket backupd-o needs a project: set project in the gcs section, or ?project= in the URL"},
	{name: "azure: no credentials", args: []string{"snapshots", "-r", "azblob://backups/p?endpoint=https://myaccount.blob.core.windows.net", "--owner", "o"},
		code: 1,
		want: "backupctl: azure: open container backups: " + azureLookedFor},
	{name: "azure: no credentials, http endpoint", args: []string{"snapshots", "-r", "azblob://backups/p?endpoint={azurite}", "--owner", "o"}, code: 1,
		want: "backupctl: azure: open container backups: " + azureLookedFor + "; the default Azure credential needs an https endpoint, so with {azurite} (an emulator?) set accountkey or a connection string"},
	{name: "azure: no credentials, no endpoint", args: []string{"snapshots", "-r", "azblob://backups/p", "--owner", "o"}, code: 1,
		want: "backupctl: azure: open container backups: " + azureLookedFor + ", and no account: set endpoint (?endpoint=https://ACCOUNT.blob.core.windows.net) or accountname"},
	{name: "azure: endpoint without the account", args: []string{"snapshots", "-r", "azblob://backups/p?endpoint=http://{azuriteHost}", "--owner", "o"},
		env: []string{"AZURE_STORAGE_ACCOUNT=devstoreaccount1", "AZURE_STORAGE_KEY=" + azuriteKey}, code: 1,
		want: "backupctl: azure: open container backups: endpoint http://{azuriteHost} answers HTTP 404 ResourceNotFound: it names no storage account (an emulator's endpoint ends in the account, as http://127.0.0.1:10000/devstoreaccount1)"},
	{name: "azure: no container", args: []string{"snapshots", "-r", "azblob://no-such-container/p?endpoint={azurite}", "--owner", "o"},
		env: []string{"AZURE_STORAGE_ACCOUNT=devstoreaccount1", "AZURE_STORAGE_KEY=" + azuriteKey}, code: 1,
		want: "backupctl: azure: container no-such-container does not exist: create it, or set createcontainer: true in the azure section for the first backup to create it"},
	{name: "azure: wrong key", args: []string{"snapshots", "-r", "azblob://backups/p?endpoint={azurite}", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "azure:\n  accountname: devstoreaccount1\n  accountkey: " + fakeKey + "\n"}, code: 1,
		want: "backupctl: azure: open container backups: the service refused the credentials of accountkey (HTTP 403 AuthorizationFailure): check the account name and key (with the default Azure credential: its role on the container)"},
	{name: "azure: key not base64", args: []string{"snapshots", "-r", "azblob://backups/p?endpoint={azurite}", "--storage-config", "{tmp}/s.yaml", "--owner", "o"},
		files: map[string]string{"s.yaml": "azure:\n  accountname: devstoreaccount1\n  accountkey: " + fakeSecret + "!\n"}, code: 1,
		want: "backupctl: azure: accountkey: not valid base64"},
	{name: "backupd: unknown key", bin: "backupd", args: []string{"--config", "{tmp}/d.yaml"},
		files: map[string]string{"d.yaml": "listne: 127.0.0.1:7070\n"}, code: 1,
		want: `backupd: --config {tmp}/d.yaml: line 1: unknown key "listne" (accepted: listen, metrics_listen, allow_insecure, tls, workspace_roots, storage, cache_dir, cache_size, limits, retention, shutdown_grace, operation_retention, maintenance, checkpoint, log)`},
	{name: "backupd: azblob section", bin: "backupd", args: []string{"--config", "{tmp}/d.yaml"},
		files: map[string]string{"d.yaml": "workspace_roots: [{tmp}]\nstorage:\n  url: azblob://backups/p\n  azblob:\n    accountkey: " + fakeSecret + "\n"}, code: 1,
		want: `backupd: --config {tmp}/d.yaml: line 4: unknown key "azblob" in storage (accepted: url, placement, bucket_template, s3, minio, gcs, azure, connections, retry); the Azure section is called azure (azblob is the URL scheme)`},
	{name: "backupd: value of the wrong kind", bin: "backupd", args: []string{"--config", "{tmp}/d.yaml"},
		files: map[string]string{"d.yaml": "workspace_roots: [{tmp}]\nlimits:\n  backups: two\n"}, code: 1,
		want: "backupd: --config {tmp}/d.yaml: line 3: limits.backups: want a whole number"},
	{name: "backupd: several problems", bin: "backupd", args: []string{"--config", "{tmp}/d.yaml"},
		files: map[string]string{"d.yaml": "workspace_roots: [{tmp}]\nlimits:\n  backups: -1\nlog:\n  level: loud\n"}, code: 1,
		want: `backupd: limits: backups (-1), restores (4) and maintenance (2) must be at least 1; log.level "loud": want debug, info, warn or error`},
	{name: "backupd: missing config", bin: "backupd", args: []string{"--config", "{tmp}/none.yaml"}, code: 1,
		want: "backupd: --config {tmp}/none.yaml: no such file or directory"},
	{name: "backupd: s3 without region", bin: "backupd", args: []string{"--workspace-root", "{tmp}", "--listen", "unix://{tmp}/s", "--repo", "s3://my-bucket/p"}, code: 1,
		want: "backupd: s3: open bucket my-bucket: no region: add ?region=REGION to the URL, or set region in the s3 section or $AWS_REGION"},
	{name: "backupd: azure without credentials", bin: "backupd", args: []string{"--workspace-root", "{tmp}", "--listen", "unix://{tmp}/s", "--repo", "azblob://backups/p?endpoint={azurite}"}, code: 1,
		want: "backupd: azure: open container backups: " + azureLookedFor + "; the default Azure credential needs an https endpoint, so with {azurite} (an emulator?) set accountkey or a connection string"},
	{name: "backupd: gcs bucket missing", bin: "backupd", args: []string{"--workspace-root", "{tmp}", "--listen", "unix://{tmp}/s", "--repo", "gs://no-such-bucket/p?endpoint=http://{gcs}"}, code: 1,
		want: "backupd: gcs: bucket no-such-bucket does not exist: create it, or set createbucket: true in the gcs section for the first backup to create it"},
}

// goTypeName matches what looks like a Go type or function in a message
// (location.Config, *url.Error, strconv.ParseInt).
var goTypeName = regexp.MustCompile(`\*?\b(location|s3|minio|gcs|azure|local|repo|storage|daemon|placement|url|os|fs|yaml|time|strconv|reflect|errors|azidentity|azcore)\.[A-Z]\w*`)

// TestErrorTable runs each misconfiguration and checks the exact first
// line of stderr, the exit code (2 for usage errors, 1 otherwise), that
// stderr is that one line (a usage error adds only the pointer to
// --help), that stdout is empty, and that no secret, Go type name or
// repeated prefix shows.
func TestErrorTable(t *testing.T) {
	if len(errorCases) < 30 {
		t.Fatalf("%d cases; the table is to hold at least 30", len(errorCases))
	}
	srv := startServers(t)
	repl := func(s, tmp string) string {
		return strings.NewReplacer("{tmp}", tmp, "{minio}", srv.minio.Endpoint, "{gcs}", srv.gcs.Host,
			"{azurite}", srv.azurite.BlobEndpoint, "{azuriteHost}", srv.azuriteAddr()).Replace(s)
	}
	secrets := []string{fakeSecret, fakeKey, srv.minio.RootPassword, srv.minio.UserSecretKey}
	for _, c := range errorCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			for name, content := range c.files {
				if err := os.WriteFile(filepath.Join(tmp, name), []byte(repl(content, tmp)), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			args := make([]string, len(c.args))
			for i, a := range c.args {
				args[i] = repl(a, tmp)
			}
			env := []string{"AWS_EC2_METADATA_DISABLED=true"} // no instance role to look for: fast and the same everywhere
			if c.root {
				env = append(env, "AWS_ACCESS_KEY_ID="+srv.minio.RootUser, "AWS_SECRET_ACCESS_KEY="+srv.minio.RootPassword,
					"MINIO_ACCESS_KEY="+srv.minio.RootUser, "MINIO_SECRET_KEY="+srv.minio.RootPassword)
			}
			for _, e := range c.env {
				env = append(env, repl(e, tmp))
			}
			bin := c.bin
			if bin == "" {
				bin = "backupctl"
			}
			r := runIn(t, tmp, env, time.Minute, bin, args...)
			want := repl(c.want, tmp)
			first, rest, _ := strings.Cut(r.stderr, "\n")
			if r.code != c.code || first != want {
				t.Fatalf("%s %s\nexit %d, stderr:\n%s\nwant exit %d and\n%s", bin, strings.Join(args, " "), r.code, r.stderr, c.code, want)
			}
			wantRest := ""
			if c.code == 2 {
				sub := ""
				if bin == "backupctl" && !strings.HasPrefix(c.args[0], "-") && c.name != "unknown command" {
					sub = " " + c.args[0]
				}
				wantRest = "Run '" + bin + sub + " --help' for usage.\n"
			}
			if rest != wantRest || r.stdout != "" {
				t.Errorf("stdout %q, stderr after the first line %q; want %q", r.stdout, rest, wantRest)
			}
			for _, s := range secrets {
				if strings.Contains(r.stderr, s) {
					t.Errorf("stderr shows a secret: %s", r.stderr)
				}
			}
			if m := goTypeName.FindString(first); m != "" {
				t.Errorf("stderr names a Go type or function, %s: %s", m, first)
			}
			parts := strings.Split(first, ": ")
			for i := 1; i < len(parts); i++ {
				if parts[i] == parts[i-1] || strings.HasPrefix(parts[i], "open ") && strings.HasPrefix(parts[i-1], "open ") {
					t.Errorf("repeated prefix %q: %s", parts[i], first)
				}
			}
		})
	}
}
