package deploy

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/backupd/backupd/deploy/internal/chart"
	"github.com/backupd/backupd/pkg/daemon"
)

// The Helm library's lint (helm lint) passes with the default values and
// each example, with no warning.
func TestChartLint(t *testing.T) {
	for _, c := range valueCases() {
		t.Run(c.name, func(t *testing.T) {
			vals, err := chart.Values(c.files, c.overrides)
			if err != nil {
				t.Fatal(err)
			}
			l := lint.All(chartDir, vals, release.Namespace, false)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Error(m)
				} else {
					t.Log(m)
				}
			}
		})
	}
}

// Every value set renders; every object decodes strictly into its type,
// carries the app.kubernetes.io labels and the release's namespace; the
// DaemonSet keeps the security invariants; the config is one the daemon
// loads.
func TestChartRenders(t *testing.T) {
	for _, c := range valueCases() {
		t.Run(c.name, func(t *testing.T) {
			r := render(t, c)
			if !strings.Contains(r["backupd/templates/NOTES.txt"], "rollout status daemonset/backupd") {
				t.Errorf("NOTES.txt:\n%s", r["backupd/templates/NOTES.txt"])
			}
			o := decode(t, r)
			for _, obj := range o.all {
				m := meta(obj)
				if m.Namespace != release.Namespace {
					t.Errorf("%T %s: namespace %q", obj, m.Name, m.Namespace)
				}
				for _, l := range []string{"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "helm.sh/chart"} {
					if m.Labels[l] == "" {
						t.Errorf("%T %s: no label %s", obj, m.Name, l)
					}
				}
			}
			cfg, text := daemonConfig(t, o)
			checkDaemonSet(t, o, cfg)
			checkServices(t, o, cfg)
			if strings.Contains(text, "accesskey") || strings.Contains(text, "secretkey") {
				t.Errorf("credentials in the config:\n%s", text)
			}
		})
	}
}

// checkDaemonSet asserts the security invariants, the mounts, the probes
// and the grace period of the rendered DaemonSet.
func checkDaemonSet(t *testing.T, o *objects, cfg daemon.Config) {
	t.Helper()
	ds := o.daemonSet
	pod := ds.Spec.Template.Spec
	c := container(t, o)
	if pod.HostPID || pod.HostNetwork || pod.HostIPC {
		t.Error("hostPID, hostNetwork or hostIPC set")
	}
	if pod.PriorityClassName == "" {
		t.Error("no priorityClassName")
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the service account token is mounted")
	}
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxSurge == nil || u.RollingUpdate.MaxSurge.IntValue() != 0 {
		t.Errorf("update strategy %+v: want a rolling update with maxSurge 0", u)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Fatal("container not explicitly unprivileged")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation not false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root file system not read-only")
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("container seccomp profile not RuntimeDefault")
	}
	if ps := pod.SecurityContext; ps == nil || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccomp profile not RuntimeDefault")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Error("not root in the container: restores could not give files their owners")
	}
	// The exact list: docs/OPERATIONS.md ("Privileges") says why each.
	caps := sc.Capabilities
	if caps == nil || !slices.Equal(caps.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(caps.Add, []corev1.Capability{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"}) {
		t.Errorf("capabilities %+v", caps)
	}
	for _, kind := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := c.Resources.Requests[kind], c.Resources.Limits[kind]
		if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
			t.Errorf("resources %s: request %v, limit %v", kind, &req, &lim)
		}
	}
	if lim := c.Resources.Limits[corev1.ResourceMemory]; cfg.Limits.SoftMemoryBytes > 0 && lim.Value() < 2*cfg.Limits.SoftMemoryBytes {
		t.Errorf("memory limit %v: want at least twice the soft memory limit (%d)", &lim, cfg.Limits.SoftMemoryBytes)
	}
	// With operations running the soft limit rises up to its max: the
	// container's limit must stay above that, or the collector would let
	// the heap grow into an OOM kill.
	if lim := c.Resources.Limits[corev1.ResourceMemory]; cfg.Limits.SoftMemoryBytes > 0 && lim.Value() <= cfg.Limits.SoftMemoryMaxBytes {
		t.Errorf("memory limit %v: want it above soft_memory_max_bytes (%d)", &lim, cfg.Limits.SoftMemoryMaxBytes)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= cfg.ShutdownGrace {
		t.Errorf("terminationGracePeriodSeconds %v not above shutdown_grace %v", g, cfg.ShutdownGrace)
	}
	if ds.Spec.Template.Annotations["checksum/config"] == "" {
		t.Error("no config checksum annotation")
	}
	if !slices.Equal(c.Command, []string{"/usr/local/bin/backupd"}) || !slices.Equal(c.Args, []string{"--config", "/etc/backupd/config/backupd.yaml"}) {
		t.Errorf("command %q args %q", c.Command, c.Args)
	}

	// Mounts: the workspace root with HostToContainer propagation, at the
	// path the config names; the node cache; the config file.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("mount %s of no volume", m.Name)
		}
	}
	hostPath := func(containerPath string) *corev1.HostPathVolumeSource {
		m, ok := mounts[containerPath]
		if !ok {
			t.Errorf("nothing mounted at %s", containerPath)
			return nil
		}
		hp := vols[m.Name].HostPath
		if hp == nil {
			t.Errorf("%s is not a hostPath", containerPath)
		}
		return hp
	}
	if len(cfg.WorkspaceRoots) != 1 {
		t.Fatalf("workspace_roots %v", cfg.WorkspaceRoots)
	}
	root := cfg.WorkspaceRoots[0]
	if hp := hostPath(root); hp != nil && hp.Path != root {
		t.Errorf("workspace root %s mounted from %s: the paths the manager sends would not match", root, hp.Path)
	}
	if m := mounts[root]; m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer {
		t.Error("workspace root without HostToContainer propagation")
	}
	if hp := hostPath(cfg.CacheDir); hp != nil && hp.Path != cfg.CacheDir {
		t.Errorf("cache %s mounted from %s", cfg.CacheDir, hp.Path)
	}
	if m := mounts["/etc/backupd/config"]; m.Name == "" || vols[m.Name].ConfigMap == nil || vols[m.Name].ConfigMap.Name != release.Name || !m.ReadOnly {
		t.Error("config not mounted read-only from the ConfigMap")
	}
	if m := mounts["/tmp"]; m.Name == "" || vols[m.Name].EmptyDir == nil {
		t.Error("no scratch emptyDir at /tmp (the root file system is read-only)")
	}
	for _, v := range pod.Volumes {
		if v.HostPath != nil && !slices.Contains([]string{root, cfg.CacheDir, "/run/backupd"}, v.HostPath.Path) {
			t.Errorf("hostPath %s: not one the daemon needs", v.HostPath.Path)
		}
	}
	network, addr, err := daemon.ParseListen(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	if network == "unix" {
		if hp := hostPath(filepath.Dir(addr)); hp != nil && hp.Path != filepath.Dir(addr) {
			t.Errorf("socket directory %s mounted from %s", filepath.Dir(addr), hp.Path)
		}
	} else {
		if !cfg.TLS.Enabled() || cfg.AllowInsecure {
			t.Errorf("listen %s without TLS", cfg.Listen)
		}
		for _, f := range []string{cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.ClientCA} {
			if f == "" {
				continue
			}
			m := mounts[filepath.Dir(f)]
			if m.Name == "" || vols[m.Name].Secret == nil || !m.ReadOnly {
				t.Errorf("TLS file %s not in a read-only secret volume", f)
			}
		}
	}

	// Probes: /healthz on the port the metrics listener listens on.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if strconv.Itoa(int(ports["metrics"])) != portOf(t, cfg.MetricsListen) {
		t.Errorf("metrics port %d, metrics_listen %s", ports["metrics"], cfg.MetricsListen)
	}
	if network == "tcp" && strconv.Itoa(int(ports["grpc"])) != portOf(t, cfg.Listen) {
		t.Errorf("grpc port %d, listen %s", ports["grpc"], cfg.Listen)
	}
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
			t.Errorf("%s probe %+v: want GET /healthz", name, p)
			continue
		}
		port := p.HTTPGet.Port.IntValue()
		if port == 0 {
			port = int(ports[p.HTTPGet.Port.String()])
		}
		if strconv.Itoa(port) != portOf(t, cfg.MetricsListen) {
			t.Errorf("%s probe on port %s, metrics_listen %s", name, p.HTTPGet.Port.String(), cfg.MetricsListen)
		}
	}
	// Credentials only from a Secret (or workload identity: no env).
	for _, e := range c.Env {
		if e.Value != "" && e.Name != "TMPDIR" {
			t.Errorf("env %s has a value in clear", e.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("env %s not from a Secret", e.Name)
		}
	}
}

// checkServices: the Service selects the daemon's pods and names the
// listeners' ports; the NetworkPolicy admits gRPC only from the manager's
// namespace and metrics only from the scraper.
func checkServices(t *testing.T, o *objects, cfg daemon.Config) {
	t.Helper()
	if len(o.services) != 1 {
		t.Fatalf("%d Services", len(o.services))
	}
	svc := o.services[0]
	sel := o.daemonSet.Spec.Selector.MatchLabels
	if !maps.Equal(svc.Spec.Selector, sel) || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service selector %v (pods %v), clusterIP %q", svc.Spec.Selector, sel, svc.Spec.ClusterIP)
	}
	tls := cfg.TLS.Enabled()
	var names []string
	for _, p := range svc.Spec.Ports {
		names = append(names, p.Name)
	}
	if want := map[bool][]string{false: {"metrics"}, true: {"grpc", "metrics"}}[tls]; !slices.Equal(names, want) {
		t.Errorf("Service ports %v, want %v", names, want)
	}
	for _, sm := range o.serviceMonitors {
		if !maps.Equal(sm.Spec.Selector.MatchLabels, sel) || len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor %+v", sm.Spec)
		}
	}
	for _, np := range o.networkPolicies {
		if !maps.Equal(np.Spec.PodSelector.MatchLabels, sel) || !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
			t.Errorf("NetworkPolicy selects %v, types %v", np.Spec.PodSelector.MatchLabels, np.Spec.PolicyTypes)
		}
		got := map[string]string{}
		for _, rule := range np.Spec.Ingress {
			if len(rule.From) != 1 || len(rule.Ports) != 1 || rule.From[0].NamespaceSelector == nil || rule.From[0].IPBlock != nil {
				t.Fatalf("ingress rule %+v: want one namespace and one port", rule)
			}
			got[rule.Ports[0].Port.String()] = rule.From[0].NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"]
		}
		want := map[string]string{"metrics": "monitoring"}
		if tls {
			want["grpc"] = "gitpod"
		}
		if !maps.Equal(got, want) {
			t.Errorf("NetworkPolicy admits %v, want %v", got, want)
		}
	}
	if tls {
		var serving *certificate
		for _, c := range o.certificates {
			if !c.Spec.IsCA {
				serving = c
			}
		}
		ds := o.daemonSet.Spec.Template.Spec
		var secret string
		for _, v := range ds.Volumes {
			if v.Name == "tls" && v.Secret != nil {
				secret = v.Secret.SecretName
			}
		}
		if serving == nil {
			if secret != "my-tls" {
				t.Errorf("no Certificate and the TLS volume is %q", secret)
			}
			return
		}
		if serving.Spec.SecretName != secret || !slices.Contains(serving.Spec.DNSNames, "backupd.backupd.svc") || !slices.Contains(serving.Spec.DNSNames, "*.backupd.backupd.svc") {
			t.Errorf("Certificate %+v, TLS volume %q", serving.Spec, secret)
		}
		// The issuer is the user's, or the chart's CA Issuer, whose CA
		// comes from a self-signed Issuer.
		if ref := serving.Spec.IssuerRef; ref.Kind == "Issuer" && ref.Name == "backupd-ca" {
			if len(o.issuers) != 2 || len(o.certificates) != 2 {
				t.Errorf("%d Issuers, %d Certificates: want the self-signed and CA pairs", len(o.issuers), len(o.certificates))
			}
		} else if len(o.issuers) != 0 {
			t.Errorf("Issuers rendered besides the given issuer %+v", ref)
		}
	}
}

// The config covers every setting of the reference config
// deploy/backupd.yaml (rendered in its TLS form, with its values): the
// same keys, so the chart speaks the same schema.
func TestConfigCoversReferenceConfig(t *testing.T) {
	ref := keyPaths(t, mustRead(t, "backupd.yaml"))
	r := render(t, valueCase{overrides: map[string]any{"grpc": map[string]any{"mode": "tls"}}})
	text := decode(t, r).configMaps[release.Name].Data["backupd.yaml"]
	got := keyPaths(t, []byte(text))
	if !slices.Equal(ref, got) {
		t.Errorf("deploy/backupd.yaml's keys:\n%v\nthe chart's:\n%v", ref, got)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keyPaths lists the dotted paths of a YAML document's mapping keys.
func keyPaths(t *testing.T, b []byte) []string {
	t.Helper()
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if sub, ok := v.(map[string]any); ok {
			for k, vv := range sub {
				out = append(out, prefix+k)
				walk(prefix+k+".", vv)
			}
		}
	}
	walk("", m)
	slices.Sort(out)
	return out
}

// values.schema.json's config section names exactly the daemon's config
// keys (from daemon.Config's yaml tags), less those the chart sets and
// the secrets, which values may never hold.
func TestSchemaMatchesDaemonConfig(t *testing.T) {
	var schema map[string]any
	if err := json.Unmarshal(mustRead(t, filepath.Join(chartDir, "values.schema.json")), &schema); err != nil {
		t.Fatal(err)
	}
	props := schema["properties"].(map[string]any)["config"]
	var fromSchema []string
	var walkSchema func(prefix string, s any)
	walkSchema = func(prefix string, s any) {
		m := s.(map[string]any)
		if m["type"] == "object" && m["additionalProperties"] != false {
			t.Errorf("schema %s allows unknown keys", prefix)
		}
		p, _ := m["properties"].(map[string]any)
		for k, v := range p {
			fromSchema = append(fromSchema, prefix+k)
			walkSchema(prefix+k+".", v)
		}
	}
	walkSchema("", props)
	slices.Sort(fromSchema)

	chartOwned := []string{"listen", "metrics_listen", "allow_insecure", "tls", "workspace_roots", "cache_dir", "cache_size"}
	secrets := []string{"accesskey", "secretkey", "accountkey", "connectionstring"}
	var fromGo []string
	var walkGo func(prefix string, ty reflect.Type)
	walkGo = func(prefix string, ty reflect.Type) {
		for f := range ty.Fields() {
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if tag == "" || tag == "-" || (prefix == "" && slices.Contains(chartOwned, tag)) || slices.Contains(secrets, tag) {
				continue
			}
			fromGo = append(fromGo, prefix+tag)
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[time.Time]() {
				walkGo(prefix+tag+".", ft)
			}
		}
	}
	walkGo("", reflect.TypeFor[daemon.Config]())
	slices.Sort(fromGo)
	// A retention duration is a struct of its own, written as "7d".
	fromGo = slices.DeleteFunc(fromGo, func(s string) bool { return strings.HasPrefix(s, "retention.keep_within.") })
	if !slices.Equal(fromSchema, fromGo) {
		t.Errorf("values.schema.json config keys:\n%v\ndaemon.Config's:\n%v", fromSchema, fromGo)
	}
}

// Credentials never come from values in clear: the schema and the
// templates refuse them, wherever they are put.
func TestChartRefusesCredentialsInValues(t *testing.T) {
	for name, overrides := range map[string]map[string]any{
		"s3 secret key":       {"config": map[string]any{"storage": map[string]any{"s3": map[string]any{"secretkey": "x"}}}},
		"minio access key":    {"config": map[string]any{"storage": map[string]any{"minio": map[string]any{"accesskey": "x"}}}},
		"azure account key":   {"config": map[string]any{"storage": map[string]any{"azure": map[string]any{"accountkey": "x"}}}},
		"azure conn string":   {"config": map[string]any{"storage": map[string]any{"azure": map[string]any{"connectionstring": "x"}}}},
		"userinfo in the URL": {"config": map[string]any{"storage": map[string]any{"url": "s3://key:secret@bucket/p"}}},
		"env in clear":        {"extraEnv": []any{map[string]any{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}}},
		"chart-owned key":     {"config": map[string]any{"listen": "0.0.0.0:7070"}},
		"misspelt key":        {"config": map[string]any{"limts": map[string]any{}}},
	} {
		if _, err := renderErr(valueCase{overrides: overrides}); err == nil {
			t.Errorf("%s: rendered", name)
		} else {
			t.Logf("%s: %v", name, firstLine(err))
		}
	}
	// Past the schema (helm install --skip-schema-validation), the
	// templates refuse them too.
	c, err := chart.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	c.Schema = nil
	vals, _ := chart.Values(nil, map[string]any{"config": map[string]any{"storage": map[string]any{"s3": map[string]any{"secretkey": "x"}}}})
	if _, err := chart.Render(c, release, vals); err == nil || !strings.Contains(err.Error(), "credentials never go in values") {
		t.Errorf("without the schema: %v", err)
	}
}

func firstLine(err error) string { return strings.SplitN(err.Error(), "\n", 2)[0] }

// Without shutdown_grace the daemon's default applies, and the pod's grace
// period is still above it; a config change changes the checksum that
// rolls the pods.
func TestGracePeriodAndChecksum(t *testing.T) {
	o := decode(t, render(t, valueCase{overrides: map[string]any{"config": map[string]any{"shutdown_grace": nil}}}))
	cfg, _ := daemonConfig(t, o)
	if cfg.ShutdownGrace != daemon.DefaultShutdownGrace {
		t.Fatalf("shutdown grace %v", cfg.ShutdownGrace)
	}
	if g := *o.daemonSet.Spec.Template.Spec.TerminationGracePeriodSeconds; time.Duration(g)*time.Second <= daemon.DefaultShutdownGrace {
		t.Errorf("terminationGracePeriodSeconds %d", g)
	}
	for in, want := range map[string]int64{"90s": 120, "1h30m": 5430, "500ms": 31, "2m30s": 180} {
		o := decode(t, render(t, valueCase{overrides: map[string]any{"config": map[string]any{"shutdown_grace": in}}}))
		if g := *o.daemonSet.Spec.Template.Spec.TerminationGracePeriodSeconds; g != want {
			t.Errorf("shutdown_grace %s: terminationGracePeriodSeconds %d, want %d", in, g, want)
		}
	}
	sum := func(c valueCase) string {
		return decode(t, render(t, c)).daemonSet.Spec.Template.Annotations["checksum/config"]
	}
	a, b := sum(valueCase{}), sum(valueCase{overrides: map[string]any{"config": map[string]any{"log": map[string]any{"level": "debug"}}}})
	if a == "" || a == b || a != sum(valueCase{}) {
		t.Errorf("checksums %s, %s", a, b)
	}
}

// grafanaDashboard.enabled renders the dashboard file into a ConfigMap
// for Grafana's sidecar.
func TestGrafanaDashboard(t *testing.T) {
	o := decode(t, render(t, valueCase{}))
	if _, ok := o.configMaps["backupd-dashboard"]; ok {
		t.Fatal("dashboard rendered by default")
	}
	o = decode(t, render(t, valueCase{overrides: map[string]any{"grafanaDashboard": map[string]any{"enabled": true}}}))
	cm := o.configMaps["backupd-dashboard"]
	if cm == nil || cm.Labels["grafana_dashboard"] != "1" {
		t.Fatalf("dashboard ConfigMap %+v", cm)
	}
	want := mustRead(t, filepath.Join(chartDir, "dashboards", "backupd.json"))
	// The chart's copy is the dashboard of deploy/grafana/ (Helm reads no
	// file outside the chart): the one whose queries pkg/daemon's test
	// checks against the metrics the daemon exports.
	if !bytes.Equal(want, mustRead(t, filepath.Join("grafana", "backupd.json"))) {
		t.Fatal("helm/backupd/dashboards/backupd.json differs from grafana/backupd.json: copy it")
	}
	var a, b any
	if err := json.Unmarshal([]byte(cm.Data["backupd.json"]), &a); err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(want, &b)
	if !reflect.DeepEqual(a, b) {
		t.Error("dashboard ConfigMap differs from dashboards/backupd.json")
	}
}

// deploy/kubernetes/ is what `make manifests` renders now.
func TestManifestsUpToDate(t *testing.T) {
	out, err := chart.PlainManifest(chartDir, release, nil)
	if err != nil {
		t.Fatal(err)
	}
	have := mustRead(t, filepath.Join("kubernetes", "backupd.yaml"))
	if !bytes.Equal(out, have) {
		t.Fatal("deploy/kubernetes/backupd.yaml is stale: run `make manifests` and commit it")
	}
	// What it holds decodes as the chart's objects do.
	decode(t, chart.Rendered{"backupd/templates/all.yaml": string(have)})
}

// The example MinIO manifest decodes strictly too.
func TestExampleMinIOManifest(t *testing.T) {
	docs, err := chart.Rendered{"examples/minio.yaml": string(mustRead(t, filepath.Join("examples", "minio.yaml")))}.Docs()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, d := range docs {
		var obj any
		switch d.Kind {
		case "Service":
			obj = &corev1.Service{}
		case "StatefulSet":
			obj = &appsv1.StatefulSet{}
		default:
			t.Fatalf("kind %s", d.Kind)
		}
		if err := sigsyaml.UnmarshalStrict(d.YAML, obj); err != nil {
			t.Fatalf("%s: %v", d.Kind, err)
		}
		kinds[d.Kind] = true
	}
	if !kinds["Service"] || !kinds["StatefulSet"] {
		t.Fatalf("kinds %v", kinds)
	}
	// values-minio.yaml points at its Service.
	o := decode(t, render(t, valueCase{files: []string{filepath.Join(chartDir, "values-minio.yaml")}}))
	cfg, _ := daemonConfig(t, o)
	if !strings.HasPrefix(cfg.Storage.URL, "minio://minio:9000/") {
		t.Errorf("values-minio.yaml storage %s", cfg.Storage.URL)
	}
}
