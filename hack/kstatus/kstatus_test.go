// Package kstatus checks the WhatsAppNumber status contract against the
// real kstatus library and the Argo CD health check.
//
// For every fixture of the Argo CD health check it computes kstatus and
// compares it with cases.yaml, on the fixture (the status as the operator
// should write it) and on today's status (the fixture without what
// `planned` names). It also runs health.lua in gopher-lua, the interpreter
// Argo CD embeds, on both, and checks that an object whose newest generation
// is not reconciled is never Current nor Healthy.
//
// Run: cd hack/kstatus && go test ./...
package kstatus

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

type expectation struct {
	Fixture string   `json:"fixture"`
	Status  string   `json:"status"`
	Planned []string `json:"planned"`
	Today   string   `json:"today"`
}

type casesFile struct {
	Fixtures string        `json:"fixtures"`
	Cases    []expectation `json:"cases"`
}

type healthTest struct {
	Tests []struct {
		HealthStatus struct {
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"healthStatus"`
		InputPath string `json:"inputPath"`
	} `json:"tests"`
}

type health struct{ status, message string }

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func load(t *testing.T) (casesFile, map[string]health, string) {
	var cases casesFile
	readYAML(t, "cases.yaml", &cases)
	checkDir := filepath.Dir(cases.Fixtures)
	var tests healthTest
	readYAML(t, filepath.Join(checkDir, "health_test.yaml"), &tests)
	argo := map[string]health{}
	for _, tc := range tests.Tests {
		argo[filepath.Base(tc.InputPath)] = health{tc.HealthStatus.Status, tc.HealthStatus.Message}
	}
	script, err := os.ReadFile(filepath.Join(checkDir, "health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	return cases, argo, string(script)
}

func fixture(t *testing.T, dir, name string) map[string]any {
	t.Helper()
	var obj map[string]any
	readYAML(t, filepath.Join(dir, name), &obj)
	return integers(obj).(map[string]any)
}

// integers turns JSON's whole float64 numbers into int64, as the API
// server's decoder does (kstatus reads generations with NestedInt64).
func integers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = integers(x)
		}
	case []any:
		for i, x := range v {
			v[i] = integers(x)
		}
	case float64:
		if v == float64(int64(v)) {
			return int64(v)
		}
	}
	return v
}

// today removes what the operator does not write yet.
func today(obj map[string]any, planned []string) map[string]any {
	out := deepCopy(obj).(map[string]any)
	for _, p := range planned {
		if p == "status" {
			delete(out, "status")
			continue
		}
		st, _ := out["status"].(map[string]any)
		if st == nil {
			continue
		}
		conds, _ := st["conditions"].([]any)
		kept := []any{}
		for _, c := range conds {
			if c.(map[string]any)["type"] != p {
				kept = append(kept, c)
			}
		}
		st["conditions"] = kept
	}
	return out
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = deepCopy(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = deepCopy(x)
		}
		return out
	default:
		return v
	}
}

func kstatus(t *testing.T, obj map[string]any) *status.Result {
	t.Helper()
	res, err := status.Compute(&unstructured.Unstructured{Object: deepCopy(obj).(map[string]any)})
	if err != nil {
		t.Fatalf("kstatus: %v", err)
	}
	return res
}

// toLua converts decoded JSON to Lua values as Argo CD does (numbers are
// float64, objects and arrays are tables).
func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(float64(v))
	case map[string]any:
		tbl := L.NewTable()
		for k, x := range v {
			tbl.RawSetString(k, toLua(L, x))
		}
		return tbl
	case []any:
		tbl := L.NewTable()
		for _, x := range v {
			tbl.Append(toLua(L, x))
		}
		return tbl
	default:
		panic(fmt.Sprintf("unexpected %T", v))
	}
}

// argoHealth runs health.lua with the libraries Argo CD opens for it.
func argoHealth(t *testing.T, script string, obj map[string]any) health {
	t.Helper()
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		L.Push(L.NewFunction(lib.fn))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		t.Fatalf("health.lua: %v", err)
	}
	ret, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("health.lua returned %s, not a table", L.Get(-1).Type())
	}
	return health{ret.RawGetString("status").String(), ret.RawGetString("message").String()}
}

func TestStatusContract(t *testing.T) {
	cases, argo, script := load(t)
	seen := map[string]bool{}
	var gaps []string
	for _, c := range cases.Cases {
		seen[c.Fixture] = true
		t.Run(strings.TrimSuffix(c.Fixture, ".yaml"), func(t *testing.T) {
			obj := fixture(t, cases.Fixtures, c.Fixture)
			want, ok := argo[c.Fixture]
			if !ok {
				t.Fatalf("%s has no case in health_test.yaml", c.Fixture)
			}

			got := kstatus(t, obj)
			if string(got.Status) != c.Status {
				t.Errorf("kstatus of the fixture: got %s (%s), want %s", got.Status, got.Message, c.Status)
			}
			if h := argoHealth(t, script, obj); h != want {
				t.Errorf("Argo CD health (gopher-lua): got %+v, want %+v", h, want)
			}

			now := today(obj, c.Planned)
			wantToday := c.Today
			if wantToday == "" {
				wantToday = c.Status
			}
			gotToday := kstatus(t, now)
			if string(gotToday.Status) != wantToday {
				t.Errorf("kstatus of today's status (without %v): got %s (%s), want %s",
					c.Planned, gotToday.Status, gotToday.Message, wantToday)
			}
			if wantToday != c.Status {
				gaps = append(gaps, fmt.Sprintf("%s: %s today, %s once the operator writes %v",
					c.Fixture, wantToday, c.Status, c.Planned))
			}
			if h := argoHealth(t, script, now); h != want {
				t.Errorf("Argo CD health of today's status: got %+v, want %+v", h, want)
			}

			// Whatever the conditions say, a generation the operator has not
			// reconciled is never Current, nor Healthy.
			variants := []map[string]any{obj}
			if wantToday == c.Status {
				variants = append(variants, now)
			}
			for _, variant := range variants {
				newer := deepCopy(variant).(map[string]any)
				meta := newer["metadata"].(map[string]any)
				meta["generation"] = meta["generation"].(int64) + 1
				if r := kstatus(t, newer); r.Status == status.CurrentStatus {
					t.Errorf("an unreconciled generation is Current: %s", r.Message)
				}
				if h := argoHealth(t, script, newer); h.status == "Healthy" || h.status == "Degraded" {
					t.Errorf("an unreconciled generation is %s in Argo CD: %s", h.status, h.message)
				}
			}
		})
	}
	entries, err := os.ReadDir(cases.Fixtures)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".yaml") && !seen[e.Name()] {
			t.Errorf("fixture %s has no case in cases.yaml", e.Name())
		}
	}
	for _, g := range gaps {
		t.Logf("GAP %s", g)
	}
}
