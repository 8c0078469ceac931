package daemon

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"
)

// Files the Helm chart provisions (deploy/grafana, deploy/prometheus).
const (
	dashboardFile = "../../deploy/grafana/backupd.json"
	rulesFile     = "../../deploy/prometheus/backupd-rules.yaml"
)

// exported is what a daemon's registry exports: each series name as a
// query names it (a histogram's _bucket, _sum and _count) with its labels
// and the values seen for each.
type exported map[string]map[string]map[string]bool // name -> label -> values

// gatherExported gathers the registry of a real daemon (a Server as
// newServer makes it).
func gatherExported(t *testing.T) exported {
	t.Helper()
	e := newEnv(t, nil)
	families, err := e.srv.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := exported{}
	add := func(name string, m *dto.Metric, extra string) {
		if out[name] == nil {
			out[name] = map[string]map[string]bool{}
		}
		for _, lp := range m.GetLabel() {
			if out[name][lp.GetName()] == nil {
				out[name][lp.GetName()] = map[string]bool{}
			}
			out[name][lp.GetName()][lp.GetValue()] = true
		}
		if extra != "" && out[name][extra] == nil {
			out[name][extra] = map[string]bool{}
		}
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				add(f.GetName()+"_bucket", m, "le")
				add(f.GetName()+"_sum", m, "")
				add(f.GetName()+"_count", m, "")
			case dto.MetricType_SUMMARY:
				add(f.GetName(), m, "quantile")
				add(f.GetName()+"_sum", m, "")
				add(f.GetName()+"_count", m, "")
			default:
				add(f.GetName(), m, "")
			}
		}
	}
	return out
}

// targetLabels are added by Prometheus (and the Kubernetes service
// discovery of the Prometheus Operator) to every series it scrapes.
var targetLabels = []string{"instance", "job", "namespace", "pod", "node", "container", "service", "endpoint"}

// promqlWords are PromQL's functions, aggregations and keywords.
var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`sum avg min max count stddev stdvar topk bottomk quantile count_values group limitk
		rate irate increase delta idelta deriv histogram_quantile label_replace label_join abs ceil floor round clamp clamp_min
		clamp_max vector scalar time timestamp absent absent_over_time sort sort_desc avg_over_time max_over_time min_over_time
		sum_over_time count_over_time last_over_time predict_linear changes resets exp ln log2 log10 sqrt
		and or unless bool offset by without on ignoring group_left group_right`) {
		promqlWords[w] = true
	}
}

var (
	stringLit   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	rangeSel    = regexp.MustCompile(`\[[^\]]*\]`)
	selector    = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}`)
	matcher     = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")`)
	grouping    = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
	identifier  = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
	plainValues = regexp.MustCompile(`^[a-z0-9_]+(\|[a-z0-9_]+)*$`)
)

// checkQuery checks one PromQL expression (or Grafana label_values
// query) against what the daemon exports: every metric it names is
// exported, every label it matches or groups by is one of those metrics'
// (or a target label, or le), and every plain value it matches a label
// against is one the daemon uses. It returns the metrics named.
func checkQuery(errorf func(format string, args ...any), where, q string, exp exported) []string {
	q = strings.TrimSpace(q)
	if m := labelValues.FindStringSubmatch(q); m != nil {
		if exp[m[1]] == nil {
			errorf("%s: %s names %s, which the daemon does not export", where, q, m[1])
		} else if _, ok := exp[m[1]][m[2]]; !ok && !slices.Contains(targetLabels, m[2]) {
			errorf("%s: %s: %s has no label %s", where, q, m[1], m[2])
		}
		return []string{m[1]}
	}
	var metrics []string
	type labelUse struct{ metric, label, value, op string }
	var uses []labelUse
	// Selectors with their matchers, before strings go.
	rest := selector.ReplaceAllStringFunc(q, func(s string) string {
		m := selector.FindStringSubmatch(s)
		for _, mm := range matcher.FindAllStringSubmatch(m[2], -1) {
			uses = append(uses, labelUse{m[1], mm[1], strings.Trim(mm[3], `"`), mm[2]})
		}
		return " " + m[1] + " "
	})
	rest = stringLit.ReplaceAllString(rest, " ")
	rest = rangeSel.ReplaceAllString(rest, " ")
	var groups []string
	rest = grouping.ReplaceAllStringFunc(rest, func(s string) string {
		m := grouping.FindStringSubmatch(s)
		for _, l := range strings.Split(m[2], ",") {
			if l = strings.TrimSpace(l); l != "" {
				groups = append(groups, l)
			}
		}
		return " "
	})
	for _, loc := range identifier.FindAllStringIndex(rest, -1) {
		w := rest[loc[0]:loc[1]]
		if loc[0] > 0 && (rest[loc[0]-1] >= '0' && rest[loc[0]-1] <= '9' || rest[loc[0]-1] == '.') {
			continue // the exponent of a number, 1e3
		}
		if promqlWords[w] {
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(rest[loc[1]:]), "(") {
			errorf("%s: %s calls %s, not a PromQL function this test knows", where, q, w)
			continue
		}
		metrics = append(metrics, w)
		if exp[w] == nil {
			errorf("%s: %s names %s, which the daemon does not export", where, q, w)
		}
	}
	hasLabel := func(label string) bool {
		if label == "le" || slices.Contains(targetLabels, label) {
			return true
		}
		for _, m := range metrics {
			if _, ok := exp[m][label]; ok {
				return true
			}
		}
		return false
	}
	for _, g := range groups {
		if !hasLabel(g) {
			errorf("%s: %s groups by %s, a label none of its metrics has", where, q, g)
		}
	}
	for _, u := range uses {
		if slices.Contains(targetLabels, u.label) {
			continue
		}
		values, ok := exp[u.metric][u.label]
		if !ok {
			errorf("%s: %s matches %s on %s, which it does not have", where, q, u.metric, u.label)
			continue
		}
		if (u.op == "=" || u.op == "=~") && plainValues.MatchString(u.value) {
			for _, v := range strings.Split(u.value, "|") {
				if !values[v] {
					errorf("%s: %s matches %s{%s=%q}, a value the daemon never uses (it has %v)", where, q, u.metric, u.label, v, keys(values))
				}
			}
		}
	}
	return metrics
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestDashboardAndRulesUseExportedMetrics checks every query of the
// Grafana dashboard (deploy/grafana/backupd.json) and every expression of
// the alert rules (deploy/prometheus/backupd-rules.yaml) against the
// series a daemon's registry exports: metric names, labels, label
// values. It also checks that the dashboard shows what an operator needs
// (operations by kind and result, durations, queue wait, bytes up and
// down, storage errors, prunes) and that the rules page on operation
// failures, queue saturation and storage errors.
func TestDashboardAndRulesUseExportedMetrics(t *testing.T) {
	exp := gatherExported(t)

	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: no uid or title", dashboardFile)
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range checkQuery(t.Errorf, "panel "+p.Title, tg.Expr, exp) {
				used[m] = true
			}
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			checkQuery(t.Errorf, "variable "+v.Name, q["query"].(string), exp)
		}
	}
	for _, m := range []string{"backupd_operations_total", "backupd_operation_duration_seconds_bucket", "backupd_queue_wait_seconds_bucket",
		"backupd_operations_queued", "backupd_storage_bytes_total", "backupd_storage_errors_total", "backupd_prune_freed_bytes_total"} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}

	b, err = os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		APIVersion string         `yaml:"apiVersion"`
		Kind       string         `yaml:"kind"`
		Metadata   map[string]any `yaml:"metadata"`
		Spec       struct {
			Groups []struct {
				Name  string `yaml:"name"`
				Rules []struct {
					Alert       string            `yaml:"alert"`
					Expr        string            `yaml:"expr"`
					For         string            `yaml:"for"`
					Labels      map[string]string `yaml:"labels"`
					Annotations map[string]string `yaml:"annotations"`
				} `yaml:"rules"`
			} `yaml:"groups"`
		} `yaml:"spec"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if rules.APIVersion != "monitoring.coreos.com/v1" || rules.Kind != "PrometheusRule" {
		t.Errorf("%s: %s %s, want a monitoring.coreos.com/v1 PrometheusRule", rulesFile, rules.APIVersion, rules.Kind)
	}
	alerts := map[string][]string{} // alert -> metrics
	for _, g := range rules.Spec.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.For == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("rule %q: want alert, expr, for, a severity label, a summary and a description", r.Alert)
			}
			alerts[r.Alert] = checkQuery(t.Errorf, "alert "+r.Alert, r.Expr, exp)
		}
	}
	for _, want := range []struct{ alert, metric string }{
		{"BackupdOperationsFailing", "backupd_operations_total"},
		{"BackupdQueueSaturated", "backupd_queue_wait_seconds_bucket"},
		{"BackupdStorageErrors", "backupd_storage_errors_total"},
	} {
		if !slices.Contains(alerts[want.alert], want.metric) {
			t.Errorf("no alert %s on %s (alerts: %v)", want.alert, want.metric, alerts)
		}
	}
}

// TestCheckQueryFindsMistakes makes sure the checks above catch what they
// are for.
func TestCheckQueryFindsMistakes(t *testing.T) {
	exp := exported{
		"backupd_operations_total": {"kind": {"backup": true}, "result": {"failed": true}},
		"x_bucket":                 {"le": {}},
	}
	for _, q := range []string{
		`rate(backupd_operation_total[5m])`,                         // a name the daemon does not export
		`sum by (owner) (rate(backupd_operations_total[5m]))`,       // a label it does not have
		`backupd_operations_total{result="failure"}`,                // a value it never uses
		`backupd_operations_total{kind=~"backup|restroe"}`,          // one of several
		`histogram_quantil(0.9, rate(x_bucket[5m]))`,                // a misspelt function
		`label_values(backupd_operations_total, owner)`,             // a template variable's label
		`sum(rate(backupd_operations_total{phase="x"}[5m])) > 0.05`, // a matcher's label
	} {
		found := 0
		checkQuery(func(string, ...any) { found++ }, "test", q, exp)
		if found == 0 {
			t.Errorf("checkQuery found nothing wrong with %s", q)
		}
	}
	checkQuery(t.Errorf, "test", `sum by (kind, instance) (rate(backupd_operations_total{kind="backup",result=~"failed"}[$__rate_interval])) / 2e3`, exp)
	checkQuery(t.Errorf, "test", `histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))`, exp)
}
