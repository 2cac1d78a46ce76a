// Package argo tests the Argo CD files of this repository: the health check for ImageCopy
// objects (charts/pma2docker/argocd/health.lua), run with gopher-lua, the Lua VM that
// Argo CD embeds, and the sample Application and ApplicationSet in config/argocd/.
//
// Argo CD v3 runs a health script in one of two modes, and every case here runs in both:
//   - open libraries: all standard libraries, as for the scripts built into Argo CD and
//     for ConfigMap scripts with resource.customizations.useOpenLibs set;
//   - ConfigMap default: only the package, base and table libraries.
//
// In both modes Argo CD replaces os with a table that holds only os.time and os.date,
// stops a script after one second, and maps a status outside its list of health
// statuses to Unknown. The VM set up below reproduces those rules.
package argo

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

const (
	scriptPath    = "../../charts/pma2docker/argocd/health.lua"
	configMapPath = "../../charts/pma2docker/argocd/argocd-cm.yaml"
	configMapKey  = "resource.customizations.health.pma2docker.io_ImageCopy"
	casesPath     = "health_test.yaml"
	scriptTimeout = time.Second
)

var update = flag.Bool("update", false, "rewrite argocd-cm.yaml from health.lua")

// healthStatuses are the statuses Argo CD accepts from a script.
var healthStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

// health is a script result: the status and message Argo CD shows.
type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// testCase is one entry of health_test.yaml, in the layout Argo CD uses for its own
// resource_customizations tests.
type testCase struct {
	HealthStatus health `json:"healthStatus"`
	InputPath    string `json:"inputPath"`
}

type mode struct {
	name     string
	openLibs bool
}

var modes = []mode{
	{name: "open-libs", openLibs: true},
	{name: "configmap-default", openLibs: false},
}

func TestHealthCases(t *testing.T) {
	script := readFile(t, scriptPath)
	var cases struct {
		Tests []testCase `json:"tests"`
	}
	if err := yaml.UnmarshalStrict([]byte(readFile(t, casesPath)), &cases); err != nil {
		t.Fatalf("invalid %s: %v", casesPath, err)
	}
	if len(cases.Tests) == 0 {
		t.Fatalf("%s lists no tests", casesPath)
	}

	for _, c := range cases.Tests {
		object := readObject(t, c.InputPath)
		for _, m := range modes {
			t.Run(m.name+"/"+filepath.Base(c.InputPath), func(t *testing.T) {
				got, err := runHealth(script, object, m.openLibs)
				if err != nil {
					t.Fatalf("script failed: %v", err)
				}
				if got != c.HealthStatus {
					t.Errorf("health of %s: got %+v, expected %+v", c.InputPath, got, c.HealthStatus)
				}
			})
		}
	}
}

// TestEveryInputHasCase keeps testdata/ and health_test.yaml in step, so no sample is
// left unchecked.
func TestEveryInputHasCase(t *testing.T) {
	listed := map[string]bool{}
	var cases struct {
		Tests []testCase `json:"tests"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, casesPath)), &cases); err != nil {
		t.Fatalf("invalid %s: %v", casesPath, err)
	}
	for _, c := range cases.Tests {
		listed[filepath.Clean(c.InputPath)] = true
	}
	files, err := filepath.Glob("testdata/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if !listed[filepath.Clean(file)] {
			t.Errorf("%s has no entry in %s", file, casesPath)
		}
	}
}

// TestScriptCallsNoLibrary is a static check in addition to the ConfigMap-default runs:
// a branch that no case reaches would still fail in Argo CD if it called string, math
// or a string method. Only os.time and os.date exist in both modes.
func TestScriptCallsNoLibrary(t *testing.T) {
	code := stripCommentsAndStrings(readFile(t, scriptPath))
	libraryCall := regexp.MustCompile(`\b(string|math|io|debug|coroutine|channel)\b`)
	if match := libraryCall.FindString(code); match != "" {
		t.Errorf("health.lua uses the %s library, which Argo CD's ConfigMap mode does not load", match)
	}
	osCall := regexp.MustCompile(`\bos\s*\.\s*([A-Za-z_]\w*)`)
	for _, match := range osCall.FindAllStringSubmatch(code, -1) {
		if match[1] != "time" && match[1] != "date" {
			t.Errorf("health.lua calls os.%s; Argo CD's os table has only time and date", match[1])
		}
	}
	methodCall := regexp.MustCompile(`[\w\)\]]\s*:\s*[A-Za-z_]\w*\s*[\(\{"']`)
	if match := methodCall.FindString(code); match != "" {
		t.Errorf("health.lua calls a method (%q); string methods are missing in ConfigMap mode", match)
	}
}

// TestConfigMapSnippet checks that argocd-cm.yaml carries health.lua unchanged.
// "go test -run TestConfigMapSnippet -update" rewrites the snippet from the script.
func TestConfigMapSnippet(t *testing.T) {
	script := readFile(t, scriptPath)
	text := readFile(t, configMapPath)
	if *update {
		text = rewriteSnippet(t, text, script)
		if err := os.WriteFile(configMapPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var configMap struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Data       map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal([]byte(text), &configMap); err != nil {
		t.Fatalf("invalid %s: %v", configMapPath, err)
	}
	if configMap.APIVersion != "v1" || configMap.Kind != "ConfigMap" {
		t.Errorf("%s is %s %s, expected v1 ConfigMap", configMapPath, configMap.APIVersion, configMap.Kind)
	}
	embedded, ok := configMap.Data[configMapKey]
	if !ok {
		t.Fatalf("%s has no data key %s", configMapPath, configMapKey)
	}
	if embedded != script {
		t.Errorf("the script in %s differs from %s; regenerate it with: "+
			"go test -run TestConfigMapSnippet -update (in tests/argo)", configMapPath, scriptPath)
	}
}

// rewriteSnippet replaces the block scalar under configMapKey with the script,
// indented by four spaces, and keeps the lines above it.
func rewriteSnippet(t *testing.T, text, script string) string {
	t.Helper()
	marker := "  " + configMapKey + ": |\n"
	index := strings.Index(text, marker)
	if index < 0 {
		t.Fatalf("%s has no line %q", configMapPath, strings.TrimSpace(marker))
	}
	var out strings.Builder
	out.WriteString(text[:index+len(marker)])
	for _, line := range strings.SplitAfter(script, "\n") {
		if strings.TrimSpace(line) != "" {
			out.WriteString("    ")
		}
		out.WriteString(line)
	}
	return out.String()
}

// runHealth runs the script against object the way Argo CD does and returns its health.
func runHealth(script string, object map[string]any, openLibs bool) (health, error) {
	l := newVM(openLibs)
	defer l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	l.SetContext(ctx)

	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoString(script); err != nil {
		return health{}, err
	}
	// Argo CD rejects anything but a table, nil included.
	result := l.Get(-1)
	table, ok := result.(*lua.LTable)
	if !ok {
		return health{}, fmt.Errorf("expected a table from the script, got %s", result.Type())
	}
	got := health{
		Status:  luaString(table.RawGetString("status")),
		Message: luaString(table.RawGetString("message")),
	}
	if !healthStatuses[got.Status] {
		// Argo CD shows this instead of the script's status.
		return health{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return got, nil
}

// newVM returns a Lua state with the libraries Argo CD gives health scripts.
func newVM(openLibs bool) *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	for _, library := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		l.Push(l.NewFunction(library.open))
		l.Push(lua.LString(library.name))
		l.Call(1, 0)
	}

	safeOS := restrictedOS(l)
	l.SetGlobal(lua.OsLibName, safeOS)
	l.PreloadModule(lua.OsLibName, func(l *lua.LState) int {
		l.Push(safeOS)
		return 1
	})
	return l
}

// restrictedOS builds an os table with only gopher-lua's os.time and os.date. It opens
// the full os library in a scratch state to take those two functions from it.
func restrictedOS(l *lua.LState) *lua.LTable {
	scratch := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer scratch.Close()
	scratch.Push(scratch.NewFunction(lua.OpenOs))
	scratch.Push(lua.LString(lua.OsLibName))
	scratch.Call(1, 0)
	full := scratch.GetGlobal(lua.OsLibName).(*lua.LTable)

	table := l.NewTable()
	for _, name := range []string{"time", "date"} {
		function := full.RawGetString(name).(*lua.LFunction)
		table.RawSetString(name, l.NewFunction(function.GFunction))
	}
	return table
}

// toLua converts a decoded JSON value into Lua values: objects and arrays become tables
// (arrays 1-based), numbers become Lua numbers and null becomes nil.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case json.Number:
		return lua.LString(v)
	case []any:
		table := l.NewTable()
		for i, item := range v {
			table.RawSetInt(i+1, toLua(l, item))
		}
		return table
	case map[string]any:
		table := l.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(l, item))
		}
		return table
	default:
		panic(fmt.Sprintf("no Lua conversion for %T", value))
	}
}

func luaString(value lua.LValue) string {
	if value == lua.LNil {
		return ""
	}
	return value.String()
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("cannot read %s: %v", path, err)
	}
	return string(data)
}

// readObject reads a YAML or JSON object, as Argo CD's test harness does.
func readObject(t *testing.T, path string) map[string]any {
	t.Helper()
	object := map[string]any{}
	if err := yaml.Unmarshal([]byte(readFile(t, path)), &object); err != nil {
		t.Fatalf("invalid object in %s: %v", path, err)
	}
	if object["kind"] != "ImageCopy" {
		t.Fatalf("%s contains kind %v, expected ImageCopy", path, object["kind"])
	}
	return object
}

// stripCommentsAndStrings removes Lua comments and short string literals, so the static
// check reads only code. It does not handle long brackets ([[...]]), which the script
// does not use.
func stripCommentsAndStrings(code string) string {
	var out strings.Builder
	for _, line := range strings.Split(code, "\n") {
		out.WriteString(codeOfLine(line))
		out.WriteString("\n")
	}
	return out.String()
}

func codeOfLine(line string) string {
	var code strings.Builder
	var quote rune
	escaped := false
	for i, r := range line {
		if quote != 0 {
			switch {
			case escaped:
				escaped = false
			case r == '\\':
				escaped = true
			case r == quote:
				quote = 0
			}
			continue
		}
		if r == '"' || r == '\'' {
			quote = r
			continue
		}
		if strings.HasPrefix(line[i:], "--") {
			break
		}
		code.WriteRune(r)
	}
	return code.String()
}
