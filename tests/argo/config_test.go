package argo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	repoRoot   = "../.."
	mirrorsDir = "config/mirrors"
)

// TestApplicationsPointAtMirrors checks the sample Application and ApplicationSet
// against the folder they sync. No Argo CD runs here, so this reads the files only.
func TestApplicationsPointAtMirrors(t *testing.T) {
	var application struct {
		Kind string `json:"kind"`
		Spec struct {
			Source struct {
				Path      string `json:"path"`
				Directory struct {
					Recurse bool `json:"recurse"`
				} `json:"directory"`
			} `json:"source"`
		} `json:"spec"`
	}
	readYAML(t, "config/argocd/application.yaml", &application)
	if application.Kind != "Application" {
		t.Errorf("application.yaml contains kind %q, expected Application", application.Kind)
	}
	if application.Spec.Source.Path != mirrorsDir {
		t.Errorf("application.yaml syncs path %q, expected %s", application.Spec.Source.Path, mirrorsDir)
	}
	if !application.Spec.Source.Directory.Recurse {
		t.Errorf("application.yaml must set directory.recurse, because %s keeps objects in subfolders", mirrorsDir)
	}

	var applicationSet struct {
		Kind string `json:"kind"`
		Spec struct {
			Generators []struct {
				Git struct {
					Directories []struct {
						Path string `json:"path"`
					} `json:"directories"`
				} `json:"git"`
			} `json:"generators"`
		} `json:"spec"`
	}
	readYAML(t, "config/argocd/applicationset.yaml", &applicationSet)
	if applicationSet.Kind != "ApplicationSet" {
		t.Errorf("applicationset.yaml contains kind %q, expected ApplicationSet", applicationSet.Kind)
	}
	if len(applicationSet.Spec.Generators) != 1 || len(applicationSet.Spec.Generators[0].Git.Directories) != 1 {
		t.Fatalf("applicationset.yaml should have one git generator with one directory pattern")
	}
	pattern := applicationSet.Spec.Generators[0].Git.Directories[0].Path
	matches, err := filepath.Glob(filepath.Join(repoRoot, pattern))
	if err != nil {
		t.Fatalf("invalid directory pattern %q: %v", pattern, err)
	}
	if len(matches) < 2 {
		t.Errorf("pattern %q matches %d folders, expected at least 2", pattern, len(matches))
	}
}

// TestMirrorsAreImageCopies checks that config/mirrors contains only ImageCopy objects
// without a namespace, so the Application's destination namespace applies.
func TestMirrorsAreImageCopies(t *testing.T) {
	count := 0
	err := filepath.WalkDir(filepath.Join(repoRoot, mirrorsDir), func(path string, entry os.DirEntry, err error) error {
		if err != nil || entry.IsDir() {
			return err
		}
		relative, _ := filepath.Rel(repoRoot, path)
		if !strings.HasSuffix(path, ".yaml") {
			t.Errorf("%s is not a .yaml file; Argo CD would skip it", relative)
			return nil
		}
		var object struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		readYAML(t, relative, &object)
		if object.APIVersion != "pma2docker.io/v1alpha1" || object.Kind != "ImageCopy" {
			t.Errorf("%s contains %s %s, expected pma2docker.io/v1alpha1 ImageCopy", relative, object.APIVersion, object.Kind)
		}
		if object.Metadata.Namespace != "" {
			t.Errorf("%s sets namespace %q; leave it to the Application", relative, object.Metadata.Namespace)
		}
		count++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if count == 0 {
		t.Errorf("%s contains no ImageCopy files", mirrorsDir)
	}
}

// readYAML decodes one YAML document from a path relative to the repository root.
func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(repoRoot, path))), into); err != nil {
		t.Fatalf("invalid YAML in %s: %v", path, err)
	}
}
